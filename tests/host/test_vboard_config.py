"""Safe mode on the virtual board: a gateway whose config.json goes bad keeps
polling on its last good config (config.good.json) and says why on its
console (`[main] config error: <path>: <reason>`)."""

import json
import re
import time

import pytest

from metergate.bench.procs import ManagedProcess
from metergate.sim import DEMO_SITE, load_site
from metergate.vboard.gateway import Bench, metergate_argv, site_config

pytestmark = pytest.mark.timeout(180)


def _wait_for(bench, pattern, timeout=60.0):
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        text = bench.board.log_text() if hasattr(bench.board, "log_text") else bench.board_log.read_text()
        if rx.search(text):
            return text
        assert bench.board.running, "the virtual board stopped:\n" + bench.board.tail()
        time.sleep(0.1)
    raise AssertionError("no %r in the board log:\n%s" % (pattern, bench.board.tail(40)))


def _readings(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("READING "):
            msg = json.loads(line[len("READING "):])
            out.setdefault(msg["meter"], []).append(msg)
    return out


def test_broken_config_keeps_the_last_good_one(tmp_path):
    site = load_site(DEMO_SITE)
    good = site_config(site, health_interval_s=2)
    work = tmp_path / "bench"
    # 1. a good config: used, and saved as the last good one
    with Bench(DEMO_SITE, good, workdir=work) as bench:
        text = _wait_for(bench, r"\[main\] config source: config\.json\n")
        assert "config error" not in text
    flash = work / "flash"
    assert json.loads((flash / "config.good.json").read_text()) == good

    # 2. a bad field: the errors are printed and the board polls every meter of the good config
    bad = json.loads(json.dumps(good))
    bad["meters"][0]["adress"] = bad["meters"][0].pop("address")
    bad["poll_interval_s"] = "fast"
    bad["meters"] = bad["meters"][:2]
    with Bench(DEMO_SITE, bad, workdir=work) as bench:
        text = _wait_for(bench, r"READING \{.*\"meter\": ?\"m6\"")
        assert "[main] config error: meters[0]: unknown key 'adress'" in text
        assert "[main] config error: meters[0].address: required for dlt645-2007" in text
        assert "[main] config error: poll_interval_s: must be a number" in text
        assert "[main] config source: config.good.json (safe mode)" in text
        readings = _readings(text)
        assert set(readings) == {m["id"] for m in good["meters"]}
        assert any(r["values"] for r in readings["m1"])  # m1 is still read, at the good address
    assert json.loads((flash / "config.good.json").read_text()) == good  # a bad config never becomes "good"

    # 3. a config.json that is not JSON at all: the same, no simulator needed to see it
    (flash / "config.json").write_text('{"meters": [\n')
    board = ManagedProcess(metergate_argv() + ["vboard", "run", "--flash", str(flash)], tmp_path / "board3.log",
                           name="vboard", ready_line=r"\[app\] polling", ready_timeout=30, grace=3.0)
    with board:
        text = board.log_text()
    assert re.search(r"\[main\] config error: config\.json: not valid JSON: .+", text), text
    assert "[main] config source: config.good.json (safe mode)" in text
    assert re.search(r"\[app\] polling 6 meters", text), text

    # 4. the good copy damaged too: defaults, and the board still boots
    (flash / "config.good.json").write_text("{")
    board = ManagedProcess(metergate_argv() + ["vboard", "run", "--flash", str(flash)], tmp_path / "board4.log",
                           name="vboard", ready_line=r"\[app\] polling", ready_timeout=30, grace=3.0)
    with board:
        text = board.log_text()
    assert "[main] config error: config.good.json: not valid JSON" in text
    assert "[main] config source: defaults (safe mode)" in text
    assert re.search(r"\[app\] polling 0 meters", text), text
