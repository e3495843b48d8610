"""The self-check's link and identity checks against the simulator's fault
catalogue (docs/faults.md), end to end: a three-meter box on the simulated bus,
one fault (or a pair) injected, the virtual board running its commissioning
check at first boot (config selfcheck.on_first_boot; no broker needed), the
report read from the board's flash. Every injected fault must be found with its
code, on the right meter, and nothing else may be flagged on the link."""

import json
import time

import pytest

from metergate.sim.site import load_site
from metergate.vboard.gateway import Bench, site_config

from sites import site_text

CHECK = {"on_first_boot": True, "sample": 30, "energy_window_s": 0, "idle_listen_ms": 200,
         "probe_timeout_ms": 300}
WORK_ORDER = """
[[work_order]]
position = {pos}
asset = "{asset}"
"""


def _site(tmp_path, faults=(), wrong_meter=False, m02_1997=False, n=3):
    extra = [{"index": 2, "protocol": "dlt645-1997", "model": "generic-1997", "baud": 1200,
              "address": "000000000002"}] if m02_1997 else ()
    text = site_text(n=n, n_three_phase=0, n_1997=0, n_modbus=0, baud=9600, faults=faults, extra_meters=extra)
    for pos in range(1, n + 1):
        asset = ("%012d" if m02_1997 and pos == 2 else "2023%08d") % pos
        if wrong_meter and pos == 2:
            asset = "202399999999"  # the order names another meter than the one installed
        text += WORK_ORDER.format(pos=pos, asset=asset)
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path, load_site(path)


def _run(tmp_path, site_path, site, edit=None, timeout=90):
    cfg = site_config(site, device_id="gw-link", health_interval_s=60, selfcheck=dict(CHECK))
    if edit is not None:
        edit(cfg)
    with Bench(site_path, cfg, workdir=tmp_path / "bench") as bench:
        report = bench.flash / "selfcheck.json"
        end = time.monotonic() + timeout
        while not report.exists() and time.monotonic() < end:
            time.sleep(0.5)
        assert report.exists(), bench.board.tail()
        return json.loads(report.read_text())


def _link(rep):
    return sorted((f["code"], f["meter"]) for f in rep["findings"]
                  if f["code"].startswith(("LINK-", "ID-")))


CASES = {
    "ab_swapped_gateway": (['type = "ab_swapped"\nat = "gateway"'], {}, [("LINK-AB-SWAPPED-GATEWAY", None)]),
    "ab_swapped_meter": (['type = "ab_swapped"\nat = "m02"'], {}, [("LINK-AB-SWAPPED", "m02")]),
    "wrong_line_settings": (['type = "wrong_line_settings"\nmeter = "m02"\nbaud = 2400'], {},
                            [("LINK-LINE-SETTINGS", "m02")]),
    "unpowered": (['type = "unpowered"\nmeter = "m02"'], {}, [("LINK-NO-RESPONSE", "m02")]),
    "loose_contact": (['type = "loose_contact"\nmeter = "m02"\ncorrupt_rate = 0.15\ndrop_rate = 0.1'], {},
                      [("LINK-INTERMITTENT", "m02")]),
    "wrong_meter": ([], {"wrong_meter": True}, [("ID-WRONG-METER", "m02")]),
    "wrong_meter_and_swap_at_gateway": (['type = "wrong_meter"\nposition = 2', 'type = "ab_swapped"\nat = "gateway"'],
                                        {"wrong_meter": True},
                                        [("ID-WRONG-METER", "m02"), ("LINK-AB-SWAPPED-GATEWAY", None)]),
    "unpowered_and_loose_contact": (['type = "unpowered"\nmeter = "m01"',
                                     'type = "loose_contact"\nmeter = "m03"\ncorrupt_rate = 0.15\ndrop_rate = 0.1'],
                                    {}, [("LINK-INTERMITTENT", "m03"), ("LINK-NO-RESPONSE", "m01")]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_link_fault_is_found_on_the_right_meter(tmp_path, case):
    faults, kw, expected = CASES[case]
    if kw.get("wrong_meter") and not any("wrong_meter" in f for f in faults):
        faults = list(faults) + ['type = "wrong_meter"\nposition = 2']
    path, site = _site(tmp_path, faults, **kw)
    rep = _run(tmp_path, path, site)
    assert _link(rep) == sorted(expected), rep["findings"]


def test_clean_box_has_no_link_findings(tmp_path):
    path, site = _site(tmp_path)
    rep = _run(tmp_path, path, site)
    assert _link(rep) == [] and rep["summary"]["fault"] == 0, rep["findings"]
    assert all(m["sample"]["valid"] == 30 for m in rep["meters"].values())


def test_protocol_version_is_named(tmp_path):
    path, site = _site(tmp_path, m02_1997=True)

    def as_2007(cfg):
        for m in cfg["meters"]:
            if m["id"] == "m02":
                m["protocol"] = "dlt645-2007"
                m["baud"] = 9600
                m["items"] = ["voltage", "current", "power", "energy_forward", "energy_reverse"]

    rep = _run(tmp_path, path, site, as_2007)
    assert ("LINK-PROTOCOL-VERSION", "m02") in _link(rep)
    f = [f for f in rep["findings"] if f["code"] == "LINK-PROTOCOL-VERSION"][0]
    assert f["evidence"]["found"] == "dlt645-1997"


def _only_m01(cfg):
    cfg["meters"] = [m for m in cfg["meters"] if m["id"] == "m01"]


def test_meters_the_config_does_not_know_answer_the_broadcast(tmp_path):
    path, site = _site(tmp_path)  # three meters on the bus, the config knows one
    rep = _run(tmp_path, path, site, _only_m01)
    assert _link(rep) == [("ID-UNEXPECTED-METER", None)], rep["findings"]


def test_the_only_meter_at_another_address_is_discovered(tmp_path):
    path, site = _site(tmp_path, n=1)

    def wrong_address(cfg):
        cfg["meters"][0]["address"] = "202399999999"

    rep = _run(tmp_path, path, site, wrong_address)
    assert _link(rep) == [("ID-ADDRESS-DISCOVERED", "m01"), ("LINK-NO-RESPONSE", "m01")], rep["findings"]
    f = [f for f in rep["findings"] if f["code"] == "ID-ADDRESS-DISCOVERED"][0]
    assert f["evidence"] == {"configured": "202399999999", "found": "202300000001"}
