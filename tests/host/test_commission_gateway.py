"""`metergate commission` against a running gateway: the self-check is triggered
over MQTT on the virtual board (firmware selfcheck command), compared with the
demo site's work order, and the commissioning record names the miswired meter."""

import json

from click.testing import CliRunner

from metergate.bench.broker import Broker
from metergate.cli import main
from metergate.sim import DEMO_SITE
from metergate.sim.site import load_site
from metergate.vboard.gateway import Bench, site_config


def test_commission_runs_the_gateway_self_check_over_mqtt(tmp_path):
    site = load_site(DEMO_SITE)
    with Broker(workdir=tmp_path / "broker") as broker:
        cfg = site_config(site, device_id="gw-comm", health_interval_s=30,
                          mqtt={"url": broker.url, "keepalive_s": 10},
                          selfcheck={"sample": 5, "energy_window_s": 5, "idle_listen_ms": 200})
        with Bench(DEMO_SITE, cfg, workdir=tmp_path / "bench") as bench:
            out = tmp_path / "records"
            got = CliRunner().invoke(main, ["commission", "--work-order", str(DEMO_SITE), "--config",
                                            str(bench.flash / "config.json"), "--broker", broker.url,
                                            "--timeout", "120", "--out", str(out)])
    assert got.exit_code == 1, got.output  # FAIL: m2 is wired in/out reversed
    records = sorted(out.glob("*.json"))
    assert records, got.output
    record = json.loads(records[-1].read_text())
    text = json.dumps(record)
    assert "ELEC-IN-OUT-REVERSED" in text and "gw-comm" in text
    summaries = sorted(out.glob("*.txt"))
    assert summaries and "m2" in summaries[-1].read_text()
