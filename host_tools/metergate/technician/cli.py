"""`metergate selfcheck` and `metergate selfcheck correspondence`: thin over technician.selfcheck.

Exit status: 0 no fault (warnings alone pass), 1 a fault found, 2 the check
could not be run (bad options, broker / port / gateway / file failed).
"""

from __future__ import annotations

import json
import pathlib
import sys

import click

from metergate.technician import selfcheck as sc


class Failed(click.ClickException):
    """Could not run or read the check: exit status 2, like a usage error."""

    exit_code = 2


def _console(err: bool = False):
    from rich.console import Console

    probe = Console(file=sys.stderr if err else sys.stdout)
    # a pipe or a file gets wide lines rather than 80-column wrapping
    return probe if probe.is_terminal else Console(file=probe.file, width=200)


class ProgressView:
    """Progress of a running check on stderr: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, lang: str):
        self.lang = lang
        self.console = _console(err=True)
        self.bar = self.task = None
        self.last = None

    def __enter__(self):
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("自检 / self-check", total=None)
        return self

    def __call__(self, msg: dict):
        text = sc.progress_text(msg, self.lang)
        if self.bar is not None:
            total = msg.get("total") if isinstance(msg.get("total"), int) else None
            done = msg.get("done") if isinstance(msg.get("done"), int) else None
            self.bar.update(self.task, description=text.split("] ", 1)[-1], total=total, completed=done)
        elif text != self.last:
            click.echo(text, err=True)
        self.last = text

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()


def show_report(report: dict, lang: str, as_json: bool):
    """The report as JSON, or as the findings table and the summary line."""
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        return
    from rich.table import Table

    names = sc.COLUMNS[lang]
    table = Table(header_style="bold", show_lines=True)
    for name in names:
        table.add_column(name, overflow="fold")
    style = {"fault": "bold red", "warning": "yellow", "info": "cyan", "ok": "green"}
    for row in sc.rows(report, lang):
        table.add_row(row["meter"], row["position"], "[%s]%s[/]" % (style[row["severity"]], row["status"]),
                      row["code"], row["message"], row["fix"], row["evidence"])
    console = _console()
    console.print(table)
    console.print(sc.summary_line(report, lang), markup=False, highlight=False)


CONNECTION = [
    click.option("--mqtt", "mqtt_url", metavar="BROKER_URL", help="Broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT."),
    click.option("--gateway", "device", metavar="ID", help="The gateway's device id (with --mqtt)."),
    click.option("--user", help="Broker account allowed to command gateways (a broker-acl --service user)."),
    click.option("--password", envvar="METERGATE_BROKER_PASSWORD", help="Or METERGATE_BROKER_PASSWORD."),
    click.option("--topic-prefix", default="metergate", show_default=True),
    click.option("--token", envvar="METERGATE_COMMAND_TOKEN",
                 help="The gateway's command_token, when its config has one (or METERGATE_COMMAND_TOKEN)."),
    click.option("--lang", type=click.Choice(sc.LANGS), default="zh", show_default=True,
                 help="Language of the table and messages."),
    click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (progress on stderr)."),
]


def _with(options):
    def wrap(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return wrap


@click.group("selfcheck", invoke_without_command=True)
@_with(CONNECTION)
@click.option("--serial", "port", metavar="PORT", help="The gateway's serial port: run the check through its REPL.")
@click.option("--report", "report_file", type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="Show a stored report (selfcheck.json) instead of running a check.")
@click.option("--mode", type=click.Choice(["full", "commissioning"]), default="full", show_default=True)
@click.option("--meter", help="Check only this meter (its id in the gateway's config).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for the report.")
@click.pass_context
def selfcheck_cmd(ctx, mqtt_url, device, user, password, topic_prefix, token, lang, as_json, port, report_file,
                  mode, meter, timeout):
    """Run a gateway's installation self-check and show its findings.

    运行网关安装自检并显示结果。Over MQTT (--mqtt, --gateway), over the serial
    console (--serial), or from a stored report (--report). Exit status: 0 no
    fault (warnings alone pass), 1 a fault found, 2 the check could not be run.
    退出码: 0 无故障 (仅有警告也为 0), 1 有故障, 2 无法运行自检。
    """
    if ctx.invoked_subcommand is not None:
        return
    given = [name for name, v in (("--mqtt", mqtt_url), ("--serial", port), ("--report", report_file)) if v]
    if len(given) != 1:
        raise click.UsageError("give one of --mqtt BROKER_URL --gateway ID, --serial PORT or --report FILE"
                               + (" (not %s together)" % " and ".join(given) if given else ""))
    if mqtt_url and not device:
        raise click.UsageError("--mqtt needs --gateway ID (the gateway's device id)")
    if meter and report_file:
        raise click.UsageError("--meter runs a check on one meter: not with --report")
    try:
        if report_file:
            report = sc.load_report(report_file)
        else:
            with ProgressView(lang) as progress:
                if mqtt_url:
                    report = sc.run_over_mqtt(mqtt_url, device, mode, meter, user, password, topic_prefix, token,
                                              timeout, on_progress=progress)
                else:
                    restarted = []
                    report = sc.run_over_serial(port, mode, timeout, on_progress=progress,
                                                on_restart=restarted.append, meter=meter)
            if port and not (restarted and restarted[0] is not None and restarted[0].running):
                click.echo("%s: the gateway app did not come back after the check: reset the board by hand / "
                           "自检后网关程序未重新运行，请手动复位" % port, err=True)
    except sc.SelfcheckError as exc:
        raise Failed(str(exc))
    show_report(report, lang, as_json)
    ctx.exit(sc.exit_status(report))


@selfcheck_cmd.command("correspondence")
@_with(CONNECTION)
@click.option("--positions", help="Positions to test, in order: 1,2,3.")
@click.option("--work-order", "work_order", type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="Test every position of this work order (TOML/JSON, [[work_order]] entries; its breaker ids "
                   "are shown in the prompts).")
@click.option("--yes", is_flag=True, help="Ask nothing: someone or something else switches the breakers.")
@click.option("--sim-control", metavar="URL",
              help="Practice / test on the simulator: switch its breakers through its control interface "
                   "(tcp://HOST:PORT of `metergate sim serve --control`); needs --work-order with breaker ids.")
@click.option("--settle", type=click.FloatRange(0, 60), default=2.0, show_default=True,
              help="Seconds to wait after a breaker is off before the meters are read (their current registers "
                   "follow within about a second).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for each step.")
def correspondence_cmd(mqtt_url, device, user, password, topic_prefix, token, lang, as_json, positions, work_order,
                       yes, sim_control, settle, timeout):
    """Guided breaker test: switch off one breaker at a time; the gateway names the meter that dropped.

    空开对应关系测试: 逐个断开空开, 网关判断哪块表的电流下降, 与表位是否一致。
    Exit status 1 when a mismatch (or another fault) is found, 2 when the test could not be run.
    """
    from metergate.provision.commission import CommissionError, load_work_order

    if not (mqtt_url and device):
        raise click.UsageError("the breaker test runs over MQTT: give --mqtt BROKER_URL and --gateway ID")
    if bool(positions) == bool(work_order):
        raise click.UsageError("give --positions 1,2,3 or --work-order FILE (one of them)")
    try:
        order = load_work_order(work_order) if work_order else None
        plan = sc.positions_from(positions, order)
    except (CommissionError, sc.SelfcheckError) as exc:
        raise Failed(str(exc))
    if sim_control and any(b is None for _, b in plan):
        raise click.UsageError("--sim-control needs a breaker id for every position: give --work-order whose "
                               "[[work_order]] entries name their breaker")
    err = as_json  # with --json, stdout carries the report only

    def say(text):
        click.echo(text, err=err)

    sim = None
    if sim_control:
        from metergate.sim.control import SimControl, SimControlError

        sim = SimControl(sim_control)

    def switch(position, breaker, closed):
        label = " (%s)" % breaker if breaker else ""
        if closed:
            zh, en = "请合上表位 %s 的空开%s" % (position, label), "Switch the breaker of position %s%s back ON" % (
                position, label)
        else:
            zh, en = "请断开表位 %s 的空开%s" % (position, label), "Switch OFF the breaker of position %s%s" % (
                position, label)
        if yes:  # someone else does it: say what is expected, ask nothing
            say("%s / %s" % (zh, en))
        else:
            click.prompt("%s，然后按回车 / %s, then press Enter" % (zh, en), default="", show_default=False,
                         prompt_suffix=" ", err=err)
        if sim is not None:
            try:
                sim.breaker(breaker, closed)
            except (SimControlError, OSError) as exc:
                raise sc.SelfcheckError("simulator %s: breaker %s: %s" % (sim_control, breaker, exc))

    def show(event, data):
        if event == "baseline":
            currents = data.get("currents") or {}
            say(("基线电流" if lang == "zh" else "baseline currents") + ": "
                + ", ".join("%s %s A" % (m, i) for m, i in currents.items()))
        elif event == "off":
            say(sc.off_text(data, lang))

    try:
        with sc.Gateway(mqtt_url, device, user, password, topic_prefix, token) as gw:
            report = sc.correspondence(sc.BreakerTest(gw, timeout), plan, switch, show, settle)
    except sc.SelfcheckError as exc:
        raise Failed(str(exc))
    except click.Abort:
        raise Failed("breaker test stopped before the end (no answer to a prompt) / 测试未完成")
    finally:
        if sim is not None:
            sim.close()
    show_report(report, lang, as_json)
    sys.exit(sc.exit_status(report))
