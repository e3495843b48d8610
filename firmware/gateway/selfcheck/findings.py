# THE catalogue of self-check findings (issue 5): every code a self-check can
# report, its severity, and the bilingual message and fix a crew reads.
# docs/selfcheck-codes.md is the same catalogue written for technicians.
#
#   finding(code, meter=None, position=None, evidence=None, **params) -> dict
#
# returns a plain dict {code, severity, meter, position, evidence,
# message: {zh, en}, fix: {zh, en}} ready for JSON. Templates name their
# parameters in braces; {meter} and {position} are always available. A code
# that is not in the catalogue, a missing parameter or one no template uses
# raises ValueError naming the code and the parameter, so a typo in a check
# cannot publish a half-filled message.
#
# Codes are stable: the back office and the docs key on them. Add new codes,
# never rename one.

FAULT = "fault"  # the crew must fix something before the job is closed
WARNING = "warning"  # worth a look; may be the supply or the paperwork
INFO = "info"  # no fault found, but something could not be judged

SEVERITIES = (FAULT, WARNING, INFO)

# (code, severity, message zh, message en, fix zh, fix en)
CATALOGUE = (
    # -- RS-485 link (per meter / per bus)
    ("LINK-NO-RESPONSE", FAULT,
     "表 {meter}（地址 {address}）对 {polls} 次请求均无应答。",
     "Meter {meter} (address {address}) answered none of {polls} requests.",
     "检查表计是否上电、485 线是否接上且未断、表地址与装接单是否一致。",
     "Check that the meter is powered, its RS-485 pair is connected and unbroken, and its address matches the "
     "work order."),
    ("LINK-AB-SWAPPED", FAULT,
     "表 {meter} 的 485 A、B 线接反：只有把线路反相后报文才校验正确。",
     "Meter {meter}: RS-485 A and B are swapped at the meter: its frames pass their checksum only with the "
     "line inverted.",
     "在该表的 485 端子上对调 A、B 两根线并拧紧。",
     "Swap the A and B wires at this meter's RS-485 terminals and tighten the screws."),
    ("LINK-AB-SWAPPED-GATEWAY", FAULT,
     "总线 {bus} 在采集器端 485 A、B 线接反：所有表都只在线路反相后才能通信，采集器暂以反相方式工作。",
     "Bus {bus}: RS-485 A and B are swapped at the gateway: every meter answers only with the line inverted. "
     "The gateway keeps working inverted for now.",
     "在采集器的 485 端子上对调 A、B 两根线并拧紧，然后重新自检。",
     "Swap the A and B wires at the gateway's RS-485 terminals, tighten them, and run the check again."),
    ("LINK-LINE-SETTINGS", FAULT,
     "表 {meter} 的通信参数是 {found}，配置要求 {expected}。",
     "Meter {meter} is set to {found}; the configuration expects {expected}.",
     "把表计通信参数改为 {expected}，或把采集器配置改为 {found}。",
     "Set the meter to {expected}, or change the gateway configuration to {found}."),
    ("LINK-INTERMITTENT", FAULT,
     "表 {meter}：{polls} 次轮询中 {errors} 次失败（{rate_pct}%），通信时断时续。",
     "Meter {meter}: {errors} of {polls} polls failed ({rate_pct}%): the link is intermittent.",
     "拧紧该表及沿线的 485 端子螺丝，检查接头、屏蔽层和终端电阻。",
     "Tighten the RS-485 terminal screws at this meter and along the bus; check joints, the shield and the "
     "termination resistor."),
    ("LINK-IDLE-JUNK", WARNING,
     "总线 {bus} 在无人发送时 {seconds} 秒内收到 {bytes} 个杂乱字节。",
     "Bus {bus}: {bytes} stray bytes arrived in {seconds} s while nobody was asked to send.",
     "检查总线偏置电阻和终端电阻、屏蔽层接地，以及总线上是否还有别的主站。",
     "Check the bus bias and termination resistors, the shield's earthing, and whether another master is on "
     "the bus."),
    ("LINK-DUPLICATE-ADDRESS", FAULT,
     "总线 {bus} 上不止一块表应答地址 {address}，应答互相冲突。",
     "Bus {bus}: more than one meter answers address {address}; their replies collide.",
     "给每块表设置不同的通信地址，并与装接单核对。",
     "Give every meter its own address and check them against the work order."),
    ("LINK-PROTOCOL-VERSION", FAULT,
     "表 {meter} 使用 {found} 规约，配置为 {expected}。",
     "Meter {meter} speaks {found}; it is configured as {expected}.",
     "把采集器配置中该表的规约改为 {found}。",
     "Change this meter's protocol in the gateway configuration to {found}."),
    # -- identity against the work order
    ("ID-WRONG-METER", FAULT,
     "表位 {position} 按装接单应为表 {expected}，实际为表 {found}。",
     "Position {position} should hold meter {expected} (work order); meter {found} is there.",
     "核对装接单与现场表计，装对表或更正装接单（局号）。",
     "Check the work order against the meter on site: install the right meter or correct the work order "
     "(asset number)."),
    ("ID-MISSING-METER", FAULT,
     "装接单上表位 {position} 的表 {expected} 在总线上找不到。",
     "Meter {expected} of the work order (position {position}) was not found on the bus.",
     "检查该表是否安装、上电、接入 485 总线，地址是否正确。",
     "Check that this meter is installed, powered, on the RS-485 bus, and at the right address."),
    ("ID-UNEXPECTED-METER", WARNING,
     "总线上的表 {found} 不在装接单上。",
     "Meter {found} answers on the bus but is not on the work order.",
     "核对装接单，补录该表或拆除不应接入的表。",
     "Check the work order: add this meter to it, or disconnect a meter that does not belong here."),
    ("ID-ADDRESS-DISCOVERED", INFO,
     "总线 {bus} 上唯一的表地址为 {address}。",
     "The only meter on bus {bus} has address {address}.",
     "核对该地址与装接单一致，无需其他操作。",
     "Check that this address matches the work order; nothing else to do."),
    # -- electrical (what the meter's readings say about its wiring)
    ("ELEC-VOLTAGE-LOW", WARNING,
     "{phase} 相电压 {voltage} V，低于允许范围 {low}–{high} V。",
     "Phase {phase} voltage is {voltage} V, below the window {low}–{high} V.",
     "用万用表测进线电压；若进线正常，检查表计电压端子是否松动。",
     "Measure the incoming voltage; if it is normal, check the meter's voltage terminal for a loose screw."),
    ("ELEC-VOLTAGE-HIGH", WARNING,
     "{phase} 相电压 {voltage} V，高于允许范围 {low}–{high} V。",
     "Phase {phase} voltage is {voltage} V, above the window {low}–{high} V.",
     "测量进线电压并报告供电部门；检查是否误接到线电压或中性线断开。",
     "Measure the incoming voltage and report it to the supply side; check for a broken neutral or a meter "
     "connected across two phases."),
    ("ELEC-PHASE-LOSS", FAULT,
     "{phase} 相只有 {voltage} V 且无电流：缺相（上级熔断或电压接线断开）。",
     "Phase {phase}: only {voltage} V and no current: the phase is missing (blown fuse upstream or open "
     "voltage connection).",
     "检查该相上级熔断器/开关和表计该相电压端子。",
     "Check the fuse or breaker upstream on this phase and the meter's voltage terminal for this phase."),
    ("ELEC-VOLTAGE-LOSS", FAULT,
     "{phase} 相只有 {voltage} V，但有 {current} A 电流：表计该相电压回路断开或松动（失压）。",
     "Phase {phase}: only {voltage} V while {current} A flows: the meter's voltage connection on this phase "
     "is open or loose (loss of voltage).",
     "拧紧或接回表计该相的电压连接片/电压端子。",
     "Close or tighten the meter's voltage link / voltage terminal on this phase."),
    ("ELEC-IN-OUT-REVERSED", FAULT,
     "表计反向计量：进线与出线接反。",
     "The meter measures energy backwards: its incoming and outgoing lines are swapped.",
     "断电后对调表计的进线和出线（电源接进线端子，负荷接出线端子）。若用户确有发电上网，在配置中标记为上网用户。",
     "With the supply off, swap the meter's incoming and outgoing lines (supply on the line-in terminals, "
     "load on the line-out terminals). If the customer really exports (PV), mark the site as exporting in the "
     "configuration."),
    ("ELEC-NEUTRAL-MISMATCH", FAULT,
     "相线电流 {i_l} A 与零线电流 {i_n} A 相差 {diff_pct}%：可能是相线零线接反，也可能是与其他户共用零线或漏电。",
     "Phase current {i_l} A and neutral current {i_n} A differ by {diff_pct}%: phase and neutral may be "
     "swapped at the meter, or the neutral is shared with another household, or current leaks to earth.",
     "先核对表计相线、零线进出线是否接反；若接线正确，检查本户零线是否与其他户相连，再查漏电。",
     "First check that phase and neutral are not swapped at the meter's terminals; if they are right, check "
     "whether this household's neutral is joined to another household's, then look for earth leakage."),
    ("ELEC-PHASE-SEQUENCE", WARNING,
     "表计电压端子相序为逆相序（a-c-b）。计量正确，但表计会记录逆相序事件。",
     "The voltage phase sequence at the meter's terminals is reversed (a-c-b). The energy is measured "
     "correctly, but the meter records a reverse-sequence event.",
     "断电后对调两相的电压线和对应电流线，使端子相序为正相序。",
     "With the supply off, swap two phases (voltage and matching current leads together) so the terminals "
     "see a positive sequence."),
    ("ELEC-CURRENT-REVERSED", FAULT,
     "{phase} 相电流反向流过表计（该相电流进出线接反）。",
     "Phase {phase}: the current runs backwards through the meter (this phase's current leads are swapped).",
     "断电后对调表计 {phase} 相电流进、出线。",
     "With the supply off, swap the meter's phase {phase} current in and out leads."),
    ("ELEC-WIRING", FAULT,
     "接线错误：电压端子 1-2-3 接 {voltages}，电流元件接 {currents}（可信度 {confidence}%，按负载 {load_pf} 判断）。",
     "Miswired: voltage terminals 1-2-3 carry {voltages}; the current elements carry {currents} "
     "(confidence {confidence}%, judged for a load at {load_pf}).",
     "断电后按接线图改正：每个元件的电流须与其电压同相且方向正确（正确接线：电压 {correct_voltages}，电流 "
     "{correct_currents}）。",
     "With the supply off, rewire to the diagram: each element's current must be its own voltage's phase, in "
     "the right direction (correct: voltages {correct_voltages}, currents {correct_currents})."),
    ("ELEC-WIRING-AMBIGUOUS", FAULT,
     "接线错误，但读数同样符合 {count} 种接线：{candidates}。",
     "Miswired, but the readings fit {count} wirings about equally: {candidates}.",
     "用相位伏安表在现场确认接线，或在已知功率因数的负载下重新自检。",
     "Confirm the wiring on site with a phase-angle meter, or run the check again under a load of known power "
     "factor."),
    ("ELEC-WIRING-UNCERTAIN", WARNING,
     "无法确认接线：读数既符合正确接线（负载功率因数不常见），也符合 {candidates}。",
     "The wiring cannot be confirmed: the readings fit the correct wiring (with an unusual load power factor) "
     "and also {candidates}.",
     "在已知功率因数的负载（例如电阻性负载）下重新自检，或用相位伏安表确认。",
     "Run the check again under a load of known power factor (for example a resistive load), or confirm with "
     "a phase-angle meter."),
    ("ELEC-NO-LOAD", INFO,
     "电流低于 {gate} A：暂时无法判断计量方向和接线。",
     "Current below {gate} A: the direction and the wiring cannot be judged yet.",
     "接通负载（至少 {gate} A）后重新自检。",
     "Switch on a load (at least {gate} A) and run the check again."),
    # -- correspondence: work order / meter / position / breaker / customer
    ("CORR-BREAKER-MISMATCH", FAULT,
     "表位 {position} 的空开实际接在表 {found}（表位 {found_position}）的出线上。",
     "The breaker of position {position} feeds meter {found} (position {found_position}).",
     "核对表箱接线图，把空开改接到对应表位的出线，或更正装接单和表箱标识。",
     "Check the box diagram: move the breaker to the outgoing line of its own position, or correct the work "
     "order and the box labels."),
    ("CORR-NO-CURRENT-DROP", WARNING,
     "断开表位 {position} 的空开后，没有任何表的电流下降。",
     "Switching off the breaker of position {position} dropped no meter's current.",
     "确认空开后面有负载在用电后重试；若仍无变化，查该空开实际接在哪块表上。",
     "Make sure a load is on behind that breaker and try again; if nothing changes, trace which meter the "
     "breaker is really on."),
    ("CORR-CURRENT-UNREAD", WARNING,
     "断开表位 {position} 的空开后，表 {meters} 的电流读不到，无法判断对应关系。",
     "After the breaker of position {position} was switched off, the current of meter(s) {meters} could not be "
     "read: no verdict on that breaker.",
     "先排除这些表的通信故障（见本次自检的链路结果），再重做这一步。",
     "Clear those meters' communication fault first (see this check's link results), then repeat the step."),
    # -- the gateway's own power
    ("GW-SUPPLY-LOW", FAULT,
     "采集器供电电压 {voltage} V，低于 {minimum} V。",
     "Gateway supply is {voltage} V, below {minimum} V.",
     "检查采集器电源线是否接牢、极性是否正确，电源是否合格。",
     "Check that the gateway's power lead is secure and not reversed, and that the power supply is sound."),
    ("GW-BROWNOUT-RESETS", WARNING,
     "最近 {resets} 次复位中有 {count} 次是欠压复位。",
     "{count} of the last {resets} resets were brown-out resets.",
     "检查采集器电源线接头是否松动、电源容量是否足够。",
     "Check the gateway's power lead for a loose joint and that the supply can deliver enough current."),
    # -- a check that could not run
    ("CHECK-SKIPPED", INFO,
     "检查项 {check} 未执行：{reason}。",
     "Check {check} was skipped: {reason}.",
     "按原因处理后重新自检（原因代码见文档）。",
     "Remove the reason and run the check again (reason codes: docs/selfcheck-codes.md)."),
)


def _entry(code):
    for e in CATALOGUE:
        if e[0] == code:
            return e
    raise ValueError("unknown finding code %r" % (code,))


def template_params(text):
    """Names in braces in a template, in order, each once."""
    out = []
    i = 0
    n = len(text)
    while i < n:
        j = text.find("{", i)
        if j < 0:
            break
        k = text.find("}", j)
        if k < 0:
            raise ValueError("unclosed { in template %r" % text)
        name = text[j + 1:k]
        if name not in out:
            out.append(name)
        i = k + 1
    return out


def params_of(code):
    """The parameters `finding` needs for `code` (meter and position excepted)."""
    e = _entry(code)
    out = []
    for text in e[2:]:
        for name in template_params(text):
            if name not in out and name not in ("meter", "position"):
                out.append(name)
    return out


def severity(code):
    return _entry(code)[1]


def codes():
    return tuple(e[0] for e in CATALOGUE)


def _text(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        r = round(v, 3)
        if r == int(r):
            return str(int(r))
        return str(r)
    if isinstance(v, (list, tuple)):
        return ", ".join(_text(x) for x in v)
    return str(v)


def finding(code, meter=None, position=None, evidence=None, **params):
    """One finding as a plain dict. Raises ValueError for an unknown code, a
    missing parameter, or a parameter no template of that code uses."""
    e = _entry(code)
    wanted = params_of(code)
    for name in wanted:
        if name not in params:
            raise ValueError("finding %s: missing parameter %r (needs: %s)" % (code, name, ", ".join(wanted)))
    for name in params:
        if name not in wanted:
            raise ValueError("finding %s: unknown parameter %r (takes: %s)" % (code, name, ", ".join(wanted) or
                                                                               "none"))
    values = {"meter": _text(meter), "position": _text(position)}
    for name in params:
        values[name] = _text(params[name])
    if evidence is not None and not isinstance(evidence, dict):
        raise ValueError("finding %s: evidence must be a dict, got %r" % (code, evidence))
    return {
        "code": code,
        "severity": e[1],
        "meter": meter,
        "position": position,
        "evidence": evidence if evidence is not None else {},
        "message": {"zh": e[2].format(**values), "en": e[3].format(**values)},
        "fix": {"zh": e[4].format(**values), "en": e[5].format(**values)},
    }
