"""`metergate provision`, `metergate broker-acl`, `metergate commission`: thin over the library."""

from __future__ import annotations

import os
import pathlib
import sys
import threading

import click

from metergate.provision import credentials as creds_mod
from metergate.provision import device as devfiles
from metergate.provision import runner

STATUS_MARK = {"running": "…", "done": "✓", "skipped": "-", "failed": "✗"}


class _Progress:
    """One line per board: a live rich table on a terminal, plain lines otherwise."""

    def __init__(self, ports):
        from rich.console import Console

        self.console = Console(file=sys.stdout)
        self.live = None
        self.state = {p: ("waiting", "", "") for p in ports}
        self.lock = threading.Lock()
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=8)

    def _table(self):
        from rich.table import Table

        t = Table(show_header=True, header_style="bold", box=None)
        for col in ("port 串口", "device 设备", "step 步骤", ""):
            t.add_column(col)
        for port, (step, status, detail) in self.state.items():
            t.add_row(port, self.devices.get(port, "") if hasattr(self, "devices") else "",
                      "%s %s" % (STATUS_MARK.get(status, " "), step), detail)
        return t

    def __call__(self, res, step, status, detail):
        with self.lock:
            if not hasattr(self, "devices"):
                self.devices = {}
            if res.device_id:
                self.devices[res.port] = res.device_id
            self.state[res.port] = (step, status, detail)
            if self.live is not None:
                self.live.update(self._table())
            elif status in ("done", "skipped", "failed"):
                click.echo("%s %s %s %s: %s" % (STATUS_MARK[status], res.port, res.device_id or "", step, detail))

    def __enter__(self):
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()


def _summary(results):
    from rich.console import Console
    from rich.table import Table

    t = Table(title="provisioning summary / 配置汇总", header_style="bold")
    for col in ("port 串口", "device 设备", "MAC", "result 结果", "changed 变更", "s"):
        t.add_column(col)
    for r in results:
        changed = ("%d: %s" % (len(r.changed), ", ".join(r.changed[:3]) + (" …" if len(r.changed) > 3 else ""))
                   if r.changed else "nothing / 无")
        t.add_row(r.port, r.device_id or "?", r.mac or "?", "ok 成功" if r.ok else "FAILED 失败: " + (r.error or ""),
                  changed, "%.1f" % r.seconds)
    Console(file=sys.stdout, width=max(100, Console(file=sys.stdout).width)).print(t)
    ok = sum(r.ok for r in results)
    click.echo("%d of %d boards provisioned / %d 台中 %d 台完成" % (ok, len(results), len(results), ok))


@click.command("provision")
@click.option("--port", "ports", multiple=True, required=True,
              help="Serial port of a board (repeat for a batch; a glob such as '/dev/ttyUSB*' works).")
@click.option("--board", "board_name", default="esp32-devkitc-max485", show_default=True,
              help="Board config: a name in board_configs/ or a JSON file.")
@click.option("--site", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
              help="Site file (TOML) with its work order: the meters to poll.")
@click.option("--bus", help="Which bus of the site this gateway polls (default: the first).")
@click.option("--meters", "meters_config", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
              help="A config.json whose meters, collectors, link... are used instead of --site.")
@click.option("--broker", help="Broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT.")
@click.option("--topic-prefix", default=None, help="MQTT topic prefix (default metergate).")
@click.option("--wifi-ssid")
@click.option("--wifi-password", envvar="METERGATE_WIFI_PASSWORD", help="Or METERGATE_WIFI_PASSWORD.")
@click.option("--device-id", "device_ids", multiple=True,
              help="Device id, one per --port in the same order (default: from the MAC).")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
              help="MicroPython firmware .bin to flash with esptool (skipped when the flash already holds it).")
@click.option("--erase", is_flag=True, help="Erase the whole flash before writing --image (wipes the board's files).")
@click.option("--mpy-cross", "mpy_cross", help="mpy-cross program matching the board's MicroPython.")
@click.option("--records", type=click.Path(file_okay=False, path_type=pathlib.Path),
              default=pathlib.Path("provisioning"), show_default=True,
              help="Folder of credentials.json (secret, 0600) and provision.jsonl (the log).")
@click.option("--wait", type=click.Choice(["console", "health", "none"]), default="console", show_default=True,
              help="After the reboot: watch the console for the gateway running, or wait for its first "
                   "health message on the broker (needs --watch-user).")
@click.option("--wait-timeout", type=float, default=30.0, show_default=True)
@click.option("--watch-user", help="Broker account that may read every gateway's health (wait=health).")
@click.option("--watch-password", envvar="METERGATE_WATCH_PASSWORD", help="Or METERGATE_WATCH_PASSWORD.")
def provision_cmd(ports, board_name, site, bus, meters_config, broker, topic_prefix, wifi_ssid, wifi_password,
                  device_ids, image, erase, mpy_cross, records, wait, wait_timeout, watch_user, watch_password):
    """Provision gateways: flash, copy the app, write config and credentials, reboot, check.

    配置网关: 烧录固件, 复制程序, 写入配置和凭据, 重启并确认运行。
    """
    from metergate.provision.credentials import CredentialStore
    from metergate.provision.identity import ProvisioningLog

    try:
        port_list = runner.expand_ports(ports)
        if site and meters_config:
            raise runner.ProvisionError("give --site or --meters, not both")
        board = devfiles.load_board(board_name)
        base = devfiles.site_meters(site, bus) if site else (
            devfiles.meters_from_config(meters_config) if meters_config else {})
        for key in ("device_id", "board", "wifi"):
            base.pop(key, None)
        wifi = {"ssid": wifi_ssid, "password": wifi_password or ""} if wifi_ssid else None
        plan = runner.Plan(board=board, base=base, broker=broker, topic_prefix=topic_prefix, wifi=wifi, image=image,
                           erase=erase, mpy_cross=mpy_cross, credentials=CredentialStore(records / "credentials.json"),
                           log=ProvisioningLog(records / "provision.jsonl"), wait=wait, wait_timeout=wait_timeout)
        watcher = None
        if wait == "health":
            if not (broker and watch_user):
                raise runner.ProvisionError("--wait health needs --broker and --watch-user")
            from metergate.bench.broker import MqttProbe

            watcher = MqttProbe(broker, username=watch_user, password=watch_password).connect()
            watcher.subscribe("%s/v1/+/health" % (topic_prefix or "metergate"))
            plan.watcher = watcher
    except (runner.ProvisionError, devfiles.DeviceConfigError, OSError, ConnectionError, TimeoutError) as exc:
        raise click.ClickException(str(exc))
    try:
        with _Progress(port_list) as progress:
            results = runner.provision(port_list, plan, device_ids, progress)
    except runner.ProvisionError as exc:
        raise click.ClickException(str(exc))
    finally:
        if watcher is not None:
            watcher.disconnect()
    _summary(results)
    if broker and any("credentials" in r.changed for r in results):
        click.echo("new broker credentials: run `metergate broker-acl --records %s --out DIR` and reload the broker"
                   " / 有新凭据: 运行 metergate broker-acl 并让 broker 重新加载" % records)
    if not all(r.ok for r in results):
        sys.exit(1)


@click.command("broker-acl")
@click.option("--records", type=click.Path(file_okay=False, path_type=pathlib.Path),
              default=pathlib.Path("provisioning"), show_default=True,
              help="Folder holding credentials.json (from `metergate provision`).")
@click.option("--out", type=click.Path(file_okay=False, path_type=pathlib.Path), required=True,
              help="Folder to write `passwd` and `acl` into (mosquitto's password_file and acl_file).")
@click.option("--service", "services", multiple=True, metavar="USER",
              help="Service account (back office, technician tool) that reads every gateway and sends commands; "
                   "its password comes from the environment variable METERGATE_SERVICE_PASSWORD_<USER> "
                   "(upper case, '-' as '_').")
@click.option("--topic-prefix", default="metergate", show_default=True)
def broker_acl_cmd(records, out, services, topic_prefix):
    """Write the mosquitto password file and ACL for every provisioned gateway.

    为每台已配置的网关生成 mosquitto 密码文件和访问控制表 (ACL)。
    """
    service_pw = {}
    for user in services:
        var = "METERGATE_SERVICE_PASSWORD_" + user.upper().replace("-", "_")
        if not os.environ.get(var):
            raise click.ClickException("service user %s: set its password in %s" % (user, var))
        service_pw[user] = os.environ[var]
    store = creds_mod.CredentialStore(records / "credentials.json")
    try:
        got = creds_mod.write_broker_files(store, out, service_pw, topic_prefix)
    except (creds_mod.CredentialError, ValueError) as exc:
        raise click.ClickException(str(exc))
    click.echo("wrote %s and %s: %d gateways, %d service accounts. In mosquitto.conf: password_file %s / "
               "acl_file %s; then reload the broker (SIGHUP)."
               % (got["passwd"], got["acl"], got["devices"], got["services"], got["passwd"].resolve(),
                  got["acl"].resolve()))


@click.command("commission")
@click.option("--work-order", "work_order", required=True, type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
              help="The work order: TOML/JSON with [[work_order]] entries (a site file works too).")
@click.option("--port", help="The gateway's serial port: its config.json (device id, broker, meters) is read from it.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
              help="The gateway's config.json, instead of reading it over --port.")
@click.option("--report", "report_file", type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path),
              help="A self-check report already taken (selfcheck.json), instead of running one over MQTT.")
@click.option("--broker", help="Broker URL as this computer reaches it (default: the gateway's own).")
@click.option("--user", help="Broker account allowed to command gateways (a broker-acl --service user).")
@click.option("--password", envvar="METERGATE_BROKER_PASSWORD", help="Or METERGATE_BROKER_PASSWORD.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the report.")
@click.option("--out", type=click.Path(file_okay=False, path_type=pathlib.Path), default=pathlib.Path("commissioning"),
              show_default=True, help="Folder for the record (JSON + bilingual text).")
def commission_cmd(work_order, port, config_file, report_file, broker, user, password, timeout, out):
    """Commission an installed gateway: self-check, compare with the work order, write the record.

    调试验收: 触发网关自检, 与装接单比对, 生成调试记录 (JSON 与中英文摘要)。
    Exit status 1 when the verdict is FAIL.
    """
    import json as _json

    from metergate.provision import commission as cm
    from metergate.provision.repl import Repl, ReplError, reboot_and_watch

    try:
        order = cm.load_work_order(work_order)
        if config_file:
            cfg = _json.loads(config_file.read_text(encoding="utf-8"))
        elif port:
            repl = Repl(port)
            info = repl.probe(timeout=15)
            cfg = _json.loads(repl.run("fs", "cat", ":config.json"))
            reboot_and_watch(port, info.platform, want_mqtt=True)  # reading it stopped the app: start it again
        else:
            raise cm.CommissionError("give --port (or --config) so the gateway's config is known")
        device = cfg.get("device_id")
        if report_file:
            try:
                report = _json.loads(report_file.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise cm.CommissionError("%s: not JSON: %s" % (report_file, exc)) from None
            source = "file:%s" % report_file.name
        else:
            mqtt = cfg.get("mqtt") or {}
            url = broker or mqtt.get("url")
            if not url or not device:
                raise cm.CommissionError("the gateway's config has no broker or device id: give --broker, or --report")
            report = cm.run_selfcheck(url, device, user, password, mqtt.get("topic_prefix", "metergate"),
                                      cfg.get("command_token"), timeout)
            source = "mqtt"
        rec = cm.record(report, order, cfg, device, source)
        jpath, tpath = cm.write(rec, out)
    except (cm.CommissionError, ReplError, ValueError, OSError, ConnectionError, TimeoutError) as exc:
        raise click.ClickException(str(exc))
    click.echo(cm.summary(rec))
    click.echo("record / 记录: %s, %s" % (jpath, tpath))
    if rec["verdict"] == "fail":
        sys.exit(1)
