"""Site files: the demo loads, bad files fail with the field path, the reason and the line."""

import json
import re

import pytest

from metergate.sim import DEMO_SITE, SiteError, SiteState, load_site, load_site_text

DEMO = DEMO_SITE.read_text()


def line_of(text, pattern, nth=0):
    """1-based line number of the nth line matching ``pattern``."""
    hits = [n for n, line in enumerate(text.splitlines(), 1) if re.search(pattern, line)]
    return hits[nth]


def error(text, name="t.toml"):
    with pytest.raises(SiteError) as exc:
        load_site_text(text, name)
    return exc.value


MINI = """
[site]
name = "mini"

[[buses]]
name = "b1"
baud = 2400

[[boxes]]
id = "X"
positions = 4

[[meters]]
id = "m1"
position = 1
protocol = "dlt645-2007"
address = "202107072529"

[[meters]]
id = "m2"
position = 2
protocol = "dlt645-2007"
address = "202107072530"

[[customers]]
id = "c1"
kw = 1.0

[[breakers]]
id = "QF1"
position = 1
customer = "c1"
"""


# --- the demo -------------------------------------------------------------------


def test_demo_site_loads_with_the_promised_content():
    site = load_site(DEMO_SITE)
    assert len(site.boxes) == 1 and len(site.buses) == 1
    assert len(site.meters) == 6
    protocols = [m.protocol for m in site.meters]
    assert protocols.count("dlt645-2007") == 4
    assert protocols.count("dlt645-1997") == 1 and protocols.count("modbus") == 1
    assert {m.kind for m in site.meters} == {"single-phase", "three-phase-4w"}
    bus = site.buses[0].line
    assert (bus.baud, bus.parity, bus.data_bits, bus.stop_bits) == (2400, "E", 8, 1)
    assert bus.bits_per_char == 11
    old = [m for m in site.meters if m.protocol == "dlt645-1997"][0]
    assert old.line.baud == 1200 and old.line.parity == "E"
    sdm = [m for m in site.meters if m.protocol == "modbus"][0]
    assert sdm.model == "sdm120" and sdm.unit_id == 3 and sdm.address is None
    for m in site.meters:
        if m.protocol != "dlt645-1997":
            assert (m.line.baud, m.line.parity) == (2400, "E")  # everyone else readable at the bus setting
        assert 20 <= m.response_delay_ms <= 500
    enabled = [f for f in site.faults if f.enabled]
    assert [(f.type, f.params["meter"]) for f in enabled] == [("reversed", "m2")]
    # every position has a work order entry matching the installed meter, breaker and customer
    for m in site.meters:
        w = site.work_order_for(m.box, m.position)
        assert w.asset == m.asset
        assert [b.id for b in site.breakers_at(m.box, m.position)] == [w.breaker]
        assert site.breaker(w.breaker).customer == w.customer
    assert any(c.exporting for c in site.customers)


def test_demo_site_round_trips_to_json():
    site = load_site(DEMO_SITE)
    data = json.loads(json.dumps(site.to_dict()))
    assert data["meters"][0]["address"] == "202107072529"
    assert data["faults"][3]["params"]["currents"] == ["-Ib", "Ia", "Ic"]


def test_site_defaults():
    site = load_site_text(MINI, "mini.toml")
    assert site.nominal_voltage == 220.0 and site.nominal_line_voltage == 380.0 and site.frequency == 50.0
    m = site.meter("m1")
    assert m.bus == "b1" and m.box == "X" and m.kind == "single-phase" and m.model == "generic-2007"
    assert m.line == site.bus("b1").line
    assert m.asset == m.address
    assert m.combination_word == 0x05
    assert (m.ib, m.imax) == (5.0, 60.0)


# --- errors name the field, the reason and the line ------------------------------


def test_short_address_names_field_reason_and_line():
    bad = DEMO.replace('address = "202106150001"', 'address = "20210615000"')
    e = error(bad, "demo.toml")
    assert str(e) == 'demo.toml: meters[4].address: "20210615000" must be 12 digits (line %d)' % line_of(
        bad, r'address = "20210615000"')
    assert e.path == "meters[4].address"


def test_unquoted_address_is_refused_because_leading_zeros_would_be_lost():
    bad = DEMO.replace('address = "000012345678"', "address = 12345678")
    e = error(bad)
    assert e.path == "meters[3].address" and "quoted" in e.reason
    assert e.line == line_of(bad, r"^address = 12345678")


@pytest.mark.parametrize("old,new,path,reason", [
    ('parity = "E"\ndata_bits', 'parity = "X"\ndata_bits', "buses[0].parity", "E, N or O"),
    ("response_delay_ms = 120", "response_delay_ms = 900", "meters[3].response_delay_ms", "between 20 and 500"),
    ('protocol = "modbus"', 'protocol = "modbus-tcp"', "meters[5].protocol", "not one of"),
    ('model = "sdm120"', 'model = "sdm630"', "meters[5].kind", "cannot be single-phase"),
    ("unit_id = 3", "unit_id = 300", "meters[5].unit_id", "between 1 and 247"),
    ('pf_kind = "leading"', 'pf_kind = "capacitive"', "customers[3].pf_kind", "not one of"),
    ("kw = 0.15", "kw = -0.15", "customers[3].kw", "exporting = true"),
    ("position = 6\nprotocol", "position = 7\nprotocol", "meters[5].position", "outside box MB-3-1"),
    ('currents = ["-Ib", "Ia", "Ic"]', 'currents = ["-Ib", "Ia", "Ia"]', "faults[3].currents", "once"),
    ('type = "unpowered"\nmeter = "m4"', 'type = "unpowered"\nmeter = "m9"', "faults[5].meter", "no meter 'm9'"),
    ("corrupt_rate = 0.05", "corrupt_rate = 1.5", "faults[1].corrupt_rate", "between 0.0 and 1.0"),
    ('type = "ab_swapped"', 'type = "ab_swaped"', "faults[2].type", "not one of"),
    ('name = "Eastron SDM120', 'nmae = "Eastron SDM120', "meters[5].nmae", "unknown key"),
    ("forward_kwh = 640.0", "forwad_kwh = 640.0", "meters[5].energy.forwad_kwh", "unknown key"),
])
def test_demo_mutations_fail_on_the_named_field(old, new, path, reason):
    assert DEMO.count(old) == 1, old
    bad = DEMO.replace(old, new)
    e = error(bad, "demo.toml")
    assert e.path == path
    assert reason in e.reason
    key = path.rsplit(".", 1)[-1]
    assert e.line is not None
    assert bad.splitlines()[e.line - 1].strip().startswith(key + " ="), (e.line, str(e))
    assert str(e).endswith("(line %d)" % e.line)


def test_line_of_a_nested_key_is_found_in_the_right_table():
    bad = DEMO.replace("forward_kwh = 640.0", "forward_kwh = -1.0")
    e = error(bad)
    assert e.path == "meters[5].energy.forward_kwh"
    assert e.line == line_of(bad, r"forward_kwh = -1.0")


def test_invalid_toml_is_a_site_error_with_the_parser_position():
    e = error("[site\nname = 1\n", "x.toml")
    assert str(e).startswith("x.toml: invalid TOML:") and "line 1" in str(e)


def test_missing_file_is_a_site_error(tmp_path):
    with pytest.raises(SiteError, match="cannot read"):
        load_site(tmp_path / "nope.toml")


def test_missing_box_key_when_several_boxes():
    text = MINI.replace("[[meters]]", '[[boxes]]\nid = "Y"\npositions = 2\n\n[[meters]]', 1)
    e = error(text)
    assert e.path == "meters[0]" and "'box'" in e.reason


def test_two_meters_in_one_position():
    e = error(MINI.replace("position = 2\nprotocol", "position = 1\nprotocol"))
    assert e.path == "meters[1].position" and "already holds meter m1" in e.reason


def test_undeclared_duplicate_address_is_refused_declared_is_accepted():
    dup = MINI.replace('"202107072530"', '"202107072529"')
    e = error(dup)
    assert e.path == "meters[1].address" and "duplicate_address" in e.reason
    site = load_site_text(dup + '\n[[faults]]\ntype = "duplicate_address"\nmeters = ["m1", "m2"]\n')
    assert site.faults[0].params["meters"] == ("m1", "m2")
    e = error(MINI + '\n[[faults]]\ntype = "duplicate_address"\nmeters = ["m1", "m2"]\n')
    assert e.path == "faults[0].meters" and "do not share" in e.reason


def test_work_order_disagreeing_with_the_meter_needs_a_wrong_meter_fault():
    wo = MINI + '\n[[work_order]]\nposition = 1\nasset = "202107079999"\ncustomer = "c1"\nbreaker = "QF1"\n'
    e = error(wo)
    assert e.path == "work_order[0].asset" and "wrong_meter" in e.reason
    assert e.line == line_of(wo, r'asset = "202107079999"')
    site = load_site_text(wo + '\n[[faults]]\ntype = "wrong_meter"\nposition = 1\n')
    assert site.work_order_for("X", 1).asset != site.meter_at("X", 1).asset
    e = error(MINI.replace('[[customers]]', '[[work_order]]\nposition = 1\nasset = "202107072529"\n\n[[customers]]')
              + '\n[[faults]]\ntype = "wrong_meter"\nposition = 1\n')
    assert e.path == "faults[0]"


def test_work_order_breaker_must_match_the_design():
    e = error(MINI + '\n[[work_order]]\nposition = 2\nasset = "202107072530"\nbreaker = "QF1"\n')
    assert e.path == "work_order[0].breaker" and "breaker_mixup" in e.reason


def test_three_wire_wiring_only_uses_ia_and_ic():
    text = MINI.replace('address = "202107072530"', 'address = "202107072530"\nkind = "three-phase-3w"')
    ok = load_site_text(text + '\n[[faults]]\ntype = "wiring"\nmeter = "m2"\nvoltages = ["c", "b", "a"]\n'
                               'currents = ["-Ic", "Ia"]\n')
    f = ok.faults[0]
    assert f.params["voltages"] == ("c", "b", "a")
    assert [str(c) for c in f.params["currents"]] == ["-Ic", "Ia"]
    e = error(text + '\n[[faults]]\ntype = "wiring"\nmeter = "m2"\ncurrents = ["Ib", "Ia"]\n')
    assert e.path == "faults[0].currents" and "Ia and Ic" in e.reason
    e = error(text + '\n[[faults]]\ntype = "wiring"\nmeter = "m2"\n')
    assert "correct wiring" in e.reason
    e = error(MINI + '\n[[faults]]\ntype = "wiring"\nmeter = "m1"\ncurrents = ["Ib", "Ia", "Ic"]\n')
    assert e.path == "faults[0].meter" and "single-phase" in e.reason


def test_fault_parameter_rules():
    e = error(MINI + '\n[[faults]]\ntype = "loose_contact"\nmeter = "m1"\nbus = "b1"\n')
    assert "exactly one" in e.reason
    e = error(MINI + '\n[[faults]]\ntype = "wrong_line_settings"\nmeter = "m1"\nbaud = 2400\n')
    assert "nothing would be wrong" in e.reason
    e = error(MINI + '\n[[faults]]\ntype = "lost_phase"\nphase = "a"\nmode = "terminal"\n')
    assert "'meter'" in e.reason
    e = error(MINI + '\n[[faults]]\ntype = "breaker_mixup"\nbreaker = "QF1"\nmeter = "m1"\n')
    assert e.path == "faults[0].meter" and "no mix-up" in e.reason
    e = error(MINI + '\n[[faults]]\ntype = "ab_swapped"\nat = "collector"\n')
    assert e.path == "faults[0].at"
    e = error(MINI + '\n[[faults]]\nid = "x"\ntype = "reversed"\nmeter = "m1"\n'
                     '\n[[faults]]\nid = "x"\ntype = "unpowered"\nmeter = "m1"\n')
    assert e.path == "faults[1].id" and "duplicate" in e.reason
    e = error(MINI + '\n[[faults]]\ntype = "shared_neutral"\nmeters = ["m1"]\n')
    assert e.path == "faults[0].meters"


def test_customer_patterns():
    site = load_site(DEMO_SITE)
    c = site.customer("c102")
    assert c.pattern == "profile" and c.power_kw(18 * 3600 + 59) == 2.2 and c.power_kw(86400 + 18 * 3600) == 2.2
    pv = site.customer("c201")
    assert [pv.power_kw(t) for t in (0, 299, 300, 600, 899, 900)] == [0.8, 0.8, -1.5, -0.4, -0.4, 0.8]
    ev = site.customer("ev")
    assert ev.pattern == "steps" and ev.power_kw(119) == 0.0 and ev.power_kw(10**6) == 3.3
    e = error(MINI.replace("kw = 1.0", "steps = [[10, 1.0], [5, 2.0]]"))
    assert e.path == "customers[0].steps" and "increasing" in e.reason
    e = error(MINI.replace("kw = 1.0", "profile = [1.0, 2.0]"))
    assert e.path == "customers[0].profile" and "24" in e.reason


# --- run-time state ---------------------------------------------------------------


def test_state_switches_breakers_and_faults():
    site = load_site(DEMO_SITE)
    state = SiteState(site)
    assert all(state.breakers.values())
    assert [f.id for f in state.active_faults()] == ["m2-reversed"]
    v = state.version
    state.set_fault("m5-wiring", True)
    state.set_breaker("QF6", False)
    assert state.version == v + 2
    assert [f.id for f in state.meter_faults("m5")] == ["m5-wiring"]
    assert state.breakers["QF6"] is False
    with pytest.raises(KeyError):
        state.set_fault("nope", True)
    with pytest.raises(KeyError):
        state.set_breaker("QF99", True)


def test_link_view_for_the_bus_layer():
    text = MINI + """
[[faults]]
id = "gw"
type = "ab_swapped"
at = "gateway"

[[faults]]
id = "m1ab"
type = "ab_swapped"
at = "m1"

[[faults]]
id = "baud"
type = "wrong_line_settings"
meter = "m2"
baud = 9600
parity = "N"

[[faults]]
id = "loose-bus"
type = "loose_contact"
bus = "b1"
corrupt_rate = 0.1
drop_rate = 0.5

[[faults]]
id = "loose-m2"
type = "loose_contact"
meter = "m2"
corrupt_rate = 0.1
drop_rate = 0.5
"""
    site = load_site_text(text)
    state = SiteState(site)
    l1, l2 = state.link("m1"), state.link("m2")
    assert not l1.inverted  # swapped at the gateway and again at m1: the two cancel
    assert l2.inverted
    assert (l2.line.baud, l2.line.parity, l2.line.bits_per_char) == (9600, "N", 10)
    assert (l1.line.baud, l1.line.parity) == (2400, "E")
    assert l1.corrupt_rate == pytest.approx(0.1) and l1.drop_rate == pytest.approx(0.5)
    assert l2.corrupt_rate == pytest.approx(0.19) and l2.drop_rate == pytest.approx(0.75)
    state.set_fault("gw", False)
    assert state.link("m1").inverted and not state.link("m2").inverted
    assert l1.line.char_time_s == pytest.approx(11 / 2400)


def test_breaker_mixup_is_where_the_breaker_really_is():
    text = MINI.replace("[[breakers]]", '[[customers]]\nid = "c2"\nkw = 2.0\n\n[[breakers]]') + \
        '\n[[breakers]]\nid = "QF2"\nposition = 2\ncustomer = "c2"\n' + \
        '\n[[faults]]\ntype = "breaker_mixup"\nbreaker = "QF1"\nmeter = "m2"\n'
    state = SiteState(load_site_text(text))
    assert state.breaker_meter("QF1") == "m2"
    assert state.breaker_meter("QF2") == "m2"


def test_the_example_in_the_format_doc_loads():
    doc = (DEMO_SITE.parents[4] / "docs" / "site-format.md").read_text()
    block = doc.split("## Example", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    site = load_site_text(block, "site-format.md")
    assert site.meter("m2").kind == "three-phase-3w"
    assert [str(c) for c in site.faults[0].params["currents"]] == ["-Ic", "Ia"]
    assert site.fault("flaky").enabled is False


def test_the_error_quoted_in_the_format_doc_is_what_the_demo_gives():
    doc = (DEMO_SITE.parents[4] / "docs" / "site-format.md").read_text()
    quoted = re.search(r"^demo\.toml: meters.*$", doc, re.M).group(0)
    bad = DEMO.replace('address = "202106150001"', 'address = "20210615000"')
    assert str(error(bad, "demo.toml")) == quoted
