"""The installation self-check seen from the technician's side (docs/selfcheck.md).

Getting a report:

- ``Gateway`` (MQTT): ``cmd/selfcheck`` -> ``reply/selfcheck`` ``{"run": N}``,
  progress on ``progress``, the report on ``selfcheck`` with the same run.
  ``run_over_mqtt`` wraps it; ``commission`` uses it for commissioning mode.
- ``run_over_serial``: the board's REPL with mpremote's serial transport: the
  app is interrupted, ``gateway.selfcheck.run.standalone(mode, meter)`` runs, its
  ``PROGRESS`` / ``SELFCHECK`` lines are read as they come, then the board is
  reset back into its app.
- ``load_report``: a stored ``selfcheck.json``.

Reading it: ``rows(report, lang)``, ``summary_line(report, lang)``,
``exit_status(report)`` (0 no fault, 1 a fault; warnings alone are 0).

The guided breaker test: ``BreakerTest`` (``cmd/breaker`` steps) and
``correspondence(...)``, which walks the positions with callbacks for the
prompts, so the CLI asks a person and a test switches the simulator.
"""

from __future__ import annotations

import ast
import json
import pathlib
import time
import uuid

SEVERITIES = ("fault", "warning", "info")
LANGS = ("zh", "en")
# A meter's status and a finding's severity, as the crew reads them.
STATUS_TEXT = {"ok": ("合格", "ok"), "fault": ("故障", "FAULT"), "warning": ("警告", "warning"),
               "info": ("提示", "info")}
# the steps of progress.schema.json
STEP_TEXT = {"bus": ("总线空闲检查", "bus idle"), "link": ("通信", "link"),
             "search": ("搜索通信参数", "searching line settings"), "identity": ("表计身份", "identity"),
             "electrical": ("读电气量", "electrical readings"), "energy_window": ("等待电量变化", "energy window"),
             "judge": ("判断接线", "judging the wiring")}
GATEWAY_TEXT = ("网关/总线", "gateway/bus")
COLUMNS = {"zh": ("表计", "表位", "状态", "代码", "问题", "处理方法", "依据"),
           "en": ("meter", "position", "status", "code", "finding", "fix", "evidence")}


class SelfcheckError(Exception):
    """The check could not be run or read: names what failed (broker, port, file, gateway)."""


def _lang(lang):
    if lang not in LANGS:
        raise ValueError("language %r: zh or en" % (lang,))
    return LANGS.index(lang)


# -- the report -----------------------------------------------------------------

def check_report(report, where="self-check report") -> dict:
    """`report` when it has what the table needs, else SelfcheckError naming the field.
    With the contract's selfcheck schema present, the report is checked against it."""
    from metergate import contract

    if not isinstance(report, dict):
        raise SelfcheckError("%s: expected a JSON object" % where)
    if "selfcheck" in getattr(contract, "KINDS", ()):
        try:
            contract.validate("selfcheck", report)
        except contract.ContractError as exc:
            raise SelfcheckError("%s: %s" % (where, exc.reason)) from None
    findings = report.get("findings")
    if not isinstance(findings, list):
        raise SelfcheckError("%s: findings: missing or not a list" % where)
    for i, f in enumerate(findings):
        if not isinstance(f, dict) or not isinstance(f.get("code"), str):
            raise SelfcheckError("%s: findings[%d]: needs a code" % (where, i))
        if f.get("severity") not in SEVERITIES:
            raise SelfcheckError("%s: findings[%d].severity: %r is not fault, warning or info"
                                 % (where, i, f.get("severity")))
    meters = report.get("meters", {})
    if not isinstance(meters, dict):
        raise SelfcheckError("%s: meters: expected an object {meter id: {...}}" % where)
    return report


def load_report(path) -> dict:
    """A stored report (selfcheck.json from the flash, or a saved `--json` output)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise SelfcheckError("%s: cannot read: %s" % (path, exc)) from None
    try:
        report = json.loads(text)
    except ValueError as exc:
        raise SelfcheckError("%s: not JSON: %s" % (path, exc)) from None
    return check_report(report, str(path))


def position_text(pos) -> str:
    """1 -> '1'; {"box": "MB-1", "position": 2} -> 'MB-1/2'; None -> '-'."""
    if isinstance(pos, dict):
        box, p = pos.get("box"), pos.get("position")
        return "%s/%s" % (box, p) if box else str(p)
    return "-" if pos is None else str(pos)


def evidence_text(evidence, limit: int = 80) -> str:
    """The evidence dict as 'key=value, ...', short enough for a table cell."""
    if not evidence:
        return ""
    if not isinstance(evidence, dict):
        return json.dumps(evidence, ensure_ascii=False)[:limit]
    parts = []
    for k, v in evidence.items():
        value = v if isinstance(v, (str, int, float)) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
        parts.append("%s=%s" % (k, value))
    text = ", ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _text(pair, lang):
    """A {zh, en} message in `lang`, the other language when that one is missing."""
    if not isinstance(pair, dict):
        return ""
    return pair.get(lang) or pair.get("en" if lang == "zh" else "zh") or ""


def rows(report: dict, lang: str = "zh") -> list[dict]:
    """One row per finding, one 'ok' row per meter without findings, meters in
    report order, then what belongs to no listed meter (the bus, the gateway).
    Keys: meter, position, status, code, message, fix, evidence, severity."""
    i = _lang(lang)
    meters = report.get("meters") or {}
    by_meter: dict = {}
    other = []
    for f in report["findings"]:
        (by_meter.setdefault(f["meter"], []) if f.get("meter") in meters else other).append(f)

    def row(meter, pos, f):
        sev = f["severity"] if f else "ok"
        return {"meter": meter, "position": position_text(pos), "severity": sev, "status": STATUS_TEXT[sev][i],
                "code": f["code"] if f else "", "message": _text(f.get("message"), lang) if f else "",
                "fix": _text(f.get("fix"), lang) if f else "",
                "evidence": evidence_text(f.get("evidence")) if f else ""}

    out = []
    for mid, m in meters.items():
        pos = m.get("position") if isinstance(m, dict) else None
        found = by_meter.get(mid, [])
        for f in found:
            out.append(row(mid, f.get("position", pos) if f.get("position") is not None else pos, f))
        if not found:
            out.append(row(mid, pos, None))
    for f in other:
        out.append(row(f.get("meter") or GATEWAY_TEXT[i], f.get("position"), f))
    return out


def counts(report: dict) -> dict:
    return {s: sum(1 for f in report["findings"] if f["severity"] == s) for s in SEVERITIES}


def exit_status(report: dict) -> int:
    """0 when no finding is a fault (warnings and info alone pass), 1 otherwise."""
    return 1 if counts(report)["fault"] else 0


def summary_line(report: dict, lang: str = "zh") -> str:
    c = counts(report)
    meters = report.get("meters") or {}
    bad = {f.get("meter") for f in report["findings"] if f["severity"] == "fault" and f.get("meter") in meters}
    dur = report.get("duration_s")
    if lang == "zh":
        verdict = "不合格：有故障须处理" if c["fault"] else ("合格（有警告，请查看）" if c["warning"] else "合格")
        return ("网关 %s 第 %s 次自检（%s）：%d 块表，%d 块有故障；故障 %d，警告 %d，提示 %d%s。结论：%s"
                % (report.get("device", "?"), report.get("run", "?"), report.get("mode", "?"), len(meters), len(bad),
                   c["fault"], c["warning"], c["info"], "，用时 %s 秒" % dur if dur is not None else "", verdict))
    verdict = ("FAIL: faults to fix" if c["fault"] else
               ("PASS with warnings (have a look)" if c["warning"] else "PASS"))
    return ("gateway %s self-check run %s (%s): %d meters, %d with a fault; %d faults, %d warnings, %d info%s. "
            "Verdict: %s" % (report.get("device", "?"), report.get("run", "?"), report.get("mode", "?"), len(meters),
                             len(bad), c["fault"], c["warning"], c["info"],
                             ", took %s s" % dur if dur is not None else "", verdict))


def progress_text(msg: dict, lang: str = "zh") -> str:
    """A progress message as one plain line: '[4/12] 通信 m4'."""
    step = msg.get("step", "?")
    name = STEP_TEXT.get(step, (step, step))[_lang(lang)]
    return "[%s/%s] %s%s" % (msg.get("done", "?"), msg.get("total", "?"), name,
                             " " + msg["meter"] if msg.get("meter") else "")


# -- over MQTT --------------------------------------------------------------------

class Gateway:
    """One gateway over MQTT, as the technician's tool talks to it (context manager).

    ``command(name, payload)`` publishes ``cmd/NAME`` with a fresh id (and the
    command token when given) and returns the reply's result; ``report(...)``
    waits for a self-check report. Progress messages go to ``on_progress``
    whenever they arrive. Retained messages (an earlier run's report) are
    skipped: the broker flags them as retained only when they are old news."""

    def __init__(self, url: str, device: str, username=None, password=None, prefix: str = "metergate",
                 token: str | None = None, connect_timeout: float = 10.0):
        self.url, self.device, self.prefix, self.token = url, device, prefix, token
        self.username, self.password = username, password
        self.connect_timeout = connect_timeout
        self.base = "%s/v1/%s" % (prefix, device)
        self.probe = None
        self.reports: list = []      # reports that arrived while waiting for something else
        self.on_progress = None
        self.status = None           # the gateway's last status message (retained)

    def connect(self):
        from metergate.bench.broker import MqttProbe

        try:
            self.probe = MqttProbe(self.url, username=self.username, password=self.password,
                                   timeout=self.connect_timeout).connect()
        except ValueError as exc:
            raise SelfcheckError("--mqtt: %s" % exc) from None
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise SelfcheckError("broker %s: cannot connect: %s / 无法连接 MQTT 服务器" % (self.url, exc)) from None
        try:
            for sub in ("/reply/+", "/selfcheck", "/progress", "/status"):
                self.probe.subscribe(self.base + sub)
        except (ConnectionError, TimeoutError) as exc:
            self.close()
            raise SelfcheckError("broker %s: %s (does this account may read %s/#?)" % (self.url, exc, self.base))
        return self

    def close(self):
        if self.probe is not None:
            self.probe.disconnect()
            self.probe = None

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    def _next(self, deadline: float):
        """(topic tail, body) of the next fresh message, or None at the deadline."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msg = self.probe.get(timeout=left)
            except TimeoutError:
                return None
            try:
                body = json.loads(msg.payload)
            except ValueError:
                continue
            if not isinstance(body, dict):
                continue
            tail = msg.topic[len(self.base) + 1:]
            if tail == "status":
                self.status = body  # retained: what the gateway said last (its will says offline)
                continue
            if msg.retain:
                continue
            if tail == "progress":
                if self.on_progress is not None:
                    self.on_progress(body)
                continue
            if tail == "selfcheck":
                self.reports.append(body)
            return tail, body

    def command(self, name: str, payload: dict | None = None, timeout: float = 30.0) -> dict:
        """Send cmd/NAME and return the reply's result ({} when it has none)."""
        cmd_id = uuid.uuid4().hex[:12]
        body = dict(payload or {}, id=cmd_id)
        if self.token:
            body["token"] = self.token
        self.probe.publish("%s/cmd/%s" % (self.base, name), json.dumps(body).encode())
        deadline = time.monotonic() + timeout
        while True:
            got = self._next(deadline)
            if got is None:
                state = (self.status or {}).get("state")
                hint = ("its last status on the broker says %s" % state if state else
                        "the broker holds no status from it: wrong --gateway id or --topic-prefix?")
                raise SelfcheckError("%s did not answer cmd/%s within %.0f s (%s) / 网关未应答 %s 命令"
                                     % (self.device, name, timeout, hint, name))
            tail, reply = got
            if tail == "reply/" + name and reply.get("id") == cmd_id:
                if not reply.get("ok"):
                    raise SelfcheckError("%s refused cmd/%s: %s / 网关拒绝了命令"
                                         % (self.device, name, reply.get("error") or "no reason given"))
                return reply.get("result") or {}

    def report(self, run=None, mode=None, timeout: float = 300.0, asked: float | None = None) -> dict:
        """The report of `run` (or, when the gateway named no run, the first with
        `mode` stamped after `asked`, a time.time())."""
        def fits(r):
            if run is not None:
                return r.get("run") == run
            if mode is not None and r.get("mode") != mode:
                return False
            return asked is None or r.get("ts") is None or r["ts"] >= int(asked) - 5

        deadline = time.monotonic() + timeout
        while True:
            for r in self.reports:
                if fits(r):
                    self.reports.remove(r)
                    return check_report(r, "report from %s" % self.device)
            if self._next(deadline) is None and time.monotonic() >= deadline:
                raise SelfcheckError("%s accepted the self-check but published no report within %.0f s / "
                                     "网关未在限时内发布自检报告" % (self.device, timeout))

    def selfcheck(self, mode: str = "full", meter: str | None = None, timeout: float = 300.0) -> dict:
        payload = {"mode": mode}
        if meter:
            payload["meter"] = meter
        asked = time.time()
        start = time.monotonic()
        result = self.command("selfcheck", payload, timeout=min(timeout, 30.0))
        left = max(1.0, timeout - (time.monotonic() - start))
        return self.report(run=result.get("run"), mode=mode, timeout=left, asked=asked)


def run_over_mqtt(url: str, device: str, mode: str = "full", meter: str | None = None, username=None,
                  password=None, prefix: str = "metergate", token: str | None = None, timeout: float = 300.0,
                  on_progress=None) -> dict:
    """Ask `device` for a self-check and return its report."""
    with Gateway(url, device, username, password, prefix, token) as gw:
        gw.on_progress = on_progress
        return gw.selfcheck(mode, meter, timeout)


# -- over the serial console ------------------------------------------------------

PROGRESS, REPORT = "PROGRESS ", "SELFCHECK "


class _Lines:
    """Console bytes -> whole lines; PROGRESS to the callback, SELFCHECK kept."""

    def __init__(self, on_progress=None):
        self.buf = b""
        self.on_progress = on_progress
        self.report = None
        self.text: list = []

    def feed(self, data: bytes):
        self.buf += data
        while b"\n" in self.buf:
            raw, self.buf = self.buf.split(b"\n", 1)
            self.line(raw.decode("utf-8", "replace").rstrip("\r"))

    def line(self, line: str):
        self.text.append(line)
        if line.startswith(PROGRESS) and self.on_progress is not None:
            try:
                self.on_progress(json.loads(line[len(PROGRESS):]))
            except ValueError:
                pass
        elif line.startswith(REPORT):
            try:
                self.report = json.loads(line[len(REPORT):])
            except ValueError as exc:
                raise SelfcheckError("the board printed a SELFCHECK line that is not JSON: %s" % exc) from None


REPL_TIMEOUT_S = 30  # the raw REPL after a soft reset: a busy host can keep the virtual board slow
_RUN = "import gateway.selfcheck.run as r\nr.standalone(%r, %r)\n"


def run_over_serial(port: str, mode: str = "full", timeout: float = 300.0, on_progress=None,
                    restart: bool = True, restart_timeout: float = 30.0, on_restart=None,
                    meter: str | None = None) -> dict:
    """Run the self-check on the board at `port` through its REPL and return the
    report. The app is stopped while it runs (Ctrl-C, then a soft reset in the
    raw REPL, which skips main.py); with `restart` the board is reset back into
    its app afterwards, and on_restart(ConsoleReport or None) hears how that went
    (``.running``: polling again with its config)."""
    from mpremote.transport import TransportError
    from mpremote.transport_serial import SerialTransport

    from metergate.provision.repl import ReplError, reboot_and_watch

    try:
        transport = SerialTransport(str(port), baudrate=115200)
    except (TransportError, OSError) as exc:
        raise SelfcheckError("%s: cannot open the serial port: %s / 无法打开串口" % (port, exc)) from None
    lines = _Lines(on_progress)
    platform = None
    try:
        for attempt in (1, 2):
            # a board still booting (or printing) when Ctrl-C lands may miss the first try
            try:
                transport.enter_raw_repl(soft_reset=True, timeout_overall=REPL_TIMEOUT_S)
                # mpremote's eval() waits 10 s; a board still coming up from the soft reset may take longer
                out, err = transport.exec_raw("print(repr(__import__('sys').platform))", timeout=REPL_TIMEOUT_S)
                if err:
                    raise TransportError(err.decode("utf-8", "replace").strip())
                platform = ast.literal_eval(out.decode().strip())
                transport.exec_raw_no_follow(_RUN % (mode, meter))
                break
            except TransportError as exc:
                if attempt == 2:
                    raise SelfcheckError("%s: the board's REPL did not answer (%s) / 板子 REPL 无应答"
                                         % (port, exc)) from None
                time.sleep(0.5)
        out = transport.read_until(1, b"\x04", timeout=None, timeout_overall=timeout, data_consumer=lines.feed)
        if not out.endswith(b"\x04"):
            raise SelfcheckError("%s: no self-check report within %.0f s / 自检未在限时内完成" % (port, timeout))
        lines.line(lines.buf.decode("utf-8", "replace").rstrip("\r"))  # a last line without its newline
        err = transport.read_until(1, b"\x04", timeout=10)
        err = err[:-1].decode("utf-8", "replace").strip() if err.endswith(b"\x04") else ""
        if err:
            raise SelfcheckError("%s: the self-check stopped with an error on the board: %s"
                                 % (port, err.splitlines()[-1]))
        transport.exit_raw_repl()
    finally:
        transport.close()
        if restart and platform is not None:
            try:
                console = reboot_and_watch(str(port), platform, timeout=restart_timeout)
            except ReplError:
                console = None
            if on_restart is not None:
                on_restart(console)
    if lines.report is None:
        tail = " | ".join(t for t in lines.text[-3:] if t)
        raise SelfcheckError("%s: the board printed no SELFCHECK line; last output: %s" % (port, tail or "(none)"))
    return check_report(lines.report, "%s: SELFCHECK line" % port)


# -- the guided breaker test ---------------------------------------------------------

class BreakerTest:
    """The `cmd/breaker` steps of docs/selfcheck.md on a connected Gateway."""

    def __init__(self, gateway: Gateway, timeout: float = 60.0):
        self.gw = gateway
        self.timeout = timeout
        self.asked = None

    def baseline(self) -> dict:
        self.asked = time.time()
        return self.gw.command("breaker", {"step": "baseline"}, self.timeout)

    def off(self, position: int) -> dict:
        return self.gw.command("breaker", {"step": "off", "position": position}, self.timeout)

    def done(self) -> dict:
        result = self.gw.command("breaker", {"step": "done"}, self.timeout)
        return self.gw.report(run=result.get("run"), mode="correspondence", timeout=self.timeout, asked=self.asked)


def positions_from(text: str | None = None, work_order=None) -> list[tuple[int, str | None]]:
    """[(position, breaker id or None)] from '1,2,3' or a loaded work order
    (metergate.provision.commission.load_work_order)."""
    if work_order is not None:
        return [(e["position"], e.get("breaker")) for e in work_order["entries"]]
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise SelfcheckError("--positions: %r is not a position number (1, 2, ...)" % part)
        if any(p == int(part) for p, _ in out):
            raise SelfcheckError("--positions: position %s listed twice" % part)
        out.append((int(part), None))
    if not out:
        raise SelfcheckError("--positions: give at least one position, e.g. 1,2,3")
    return out


def correspondence(test: BreakerTest, positions, switch, show=lambda event, data: None,
                   settle_s: float = 0.0) -> dict:
    """Walk the breaker test: baseline, then per (position, breaker): switch(position,
    breaker, False) (the technician switches it off, or a test does), `settle_s`
    for the meters' current registers to follow, the `off` step, show("off",
    result), switch(..., True); then `done` and its report. show() also gets
    ("baseline", result) first and ("report", report) last."""
    show("baseline", test.baseline())
    for position, breaker in positions:
        switch(position, breaker, False)
        if settle_s > 0:
            time.sleep(settle_s)
        result = test.off(position)
        show("off", dict(result, position=result.get("position", position), breaker=breaker))
        switch(position, breaker, True)
    report = test.done()
    show("report", report)
    return report


def off_text(result: dict, lang: str = "zh") -> str:
    """What one `off` step found, for the technician."""
    pos = position_text(result.get("position"))
    dropped = result.get("dropped") or []
    finding = result.get("finding")
    names = ", ".join(dropped) if dropped else ("无" if lang == "zh" else "none")
    unread = finding is not None and finding.get("code") == "CORR-CURRENT-UNREAD"
    if lang == "zh":
        line = "表位 %s：电流下降的表 %s" % (pos, names)
        if unread:
            return line + "，无法判断 ? %s" % _text(finding.get("message"), lang)
        return line + ("，对应正确 ✓" if not finding else "，不符 ✗ %s" % _text(finding.get("message"), lang))
    line = "position %s: current dropped at %s" % (pos, names)
    if unread:
        return line + ": NOT JUDGED ? %s" % _text(finding.get("message"), lang)
    return line + (": matches ✓" if not finding else ": MISMATCH ✗ %s" % _text(finding.get("message"), lang))
