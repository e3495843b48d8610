"""The device config schema checked two ways: the firmware's hand validator
(gateway/config.py, what the board runs) and the jsonschema package (an
implementation we did not write) must agree on many configs made by mutating
a valid one; the board configs validate embedded as `board`; the CLI."""

import copy
import json
import pathlib

import jsonschema
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import config as fw
from gateway import config_schema
from metergate import config as host
from metergate.cli import main
from metergate.sim import DEMO_SITE, load_site
from metergate.vboard.gateway import site_config
from test_config import FULL  # the firmware test's config that uses every key

ROOT = pathlib.Path(__file__).resolve().parents[2]
BOARDS = sorted((ROOT / "board_configs").glob("*.json"))
BOARDS = [p for p in BOARDS if p.name != "schema.json"]


def test_schema_is_a_valid_draft_2020_12_schema():
    host.Validator.check_schema(config_schema.SCHEMA)
    jsonschema.Draft202012Validator.check_schema(config_schema.SCHEMA)
    assert json.loads(json.dumps(config_schema.SCHEMA)) == config_schema.SCHEMA  # plain JSON data


def test_model_enum_is_the_firmware_model_table():
    from metergate.codecs import modbus_maps

    assert config_schema.METER["properties"]["model"]["enum"] == sorted(modbus_maps.MODELS)


def test_every_default_satisfies_its_own_schema():
    def walk(s, where):
        if "default" in s:
            assert fw.schema_errors(s["default"]) is not None
            assert not list(host.Validator(s).iter_errors(s["default"])), where
        for k, sub in (s.get("properties") or {}).items():
            walk(sub, where + "." + k)
        if isinstance(s.get("items"), dict):
            walk(s["items"], where + "[]")
    walk(config_schema.SCHEMA, "")


def test_full_example_valid_both_ways():
    assert host.schema_errors(FULL) == []
    assert fw.schema_errors(FULL) == []
    assert host.check(FULL) == []


@pytest.mark.parametrize("path", BOARDS, ids=[p.stem for p in BOARDS])
def test_board_configs_validate_embedded_as_board(path):
    board = json.loads(path.read_text())
    cfg = {"board": board}
    assert fw.validate(cfg) == []
    assert host.check(cfg) == []
    # and as a name
    assert fw.validate({"board": board["name"]}) == []


# -- agreement on generated configs -------------------------------------------

def _paths(v, here=()):
    """Every (container path, key) in a config."""
    out = [here]
    if isinstance(v, dict):
        for k in v:
            out.extend(_paths(v[k], here + (k,)))
    elif isinstance(v, list):
        for k in range(len(v)):
            out.extend(_paths(v[k], here + (k,)))
    return out


_text = st.text(alphabet="09azAZ_-./:@ #é", max_size=14)
_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-3, max_value=70000),
    st.sampled_from([0, 1, 2, 5, 9, 10, 20, 247, 248, 1200, 2400, 9600, 86400, 86401, 10000, 10001]),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    st.sampled_from([0.05, 0.1, 1.0, 2.0, 0.5]),
    _text,
    st.sampled_from(["202107072529", "20210707252", "dlt645-2007", "dlt645-1997", "modbus", "sdm120", "auto",
                     "N", "E", "mqtt://h:1883", "mqtts://h", "tcp://h:1", "voltage", "esp32", "x" * 33, "",
                     "single-phase", "de-pin"]),
)
_json = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)), max_leaves=6)


def _mutate(cfg, data):
    paths = _paths(cfg)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        node = cfg
        for p in path[:-1]:
            node = node[p]
        op = data.draw(st.sampled_from(["set", "set", "delete", "add", "append"]))
        if not path:
            if op == "set":
                return data.draw(_json)
            op = "add"
            target = cfg
        else:
            target = node[path[-1]]
        if op == "set" and path:
            node[path[-1]] = data.draw(_json)
        elif op == "delete" and path:
            del node[path[-1]]
        elif op == "add" and isinstance(target, dict):
            key = data.draw(st.one_of(_text, st.sampled_from(["id", "items", "address", "unit_id", "pattern"])))
            target[key] = data.draw(_json)
        elif op == "append" and isinstance(target, list):
            target.append(data.draw(_json) if not target else copy.deepcopy(data.draw(st.sampled_from(target))))
        paths = _paths(cfg)
    return cfg


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_firmware_and_jsonschema_agree_on_mutated_configs(data):
    base = copy.deepcopy(data.draw(st.sampled_from([FULL, {"board": json.loads(BOARDS[0].read_text())}])))
    cfg = _mutate(base, data)
    mine = fw.schema_errors(cfg)
    theirs = host.schema_errors(cfg)
    assert bool(mine) == bool(theirs), (cfg, mine, theirs)
    if len(mine) < fw.MAX_ERRORS:
        assert {p for p, _ in mine} == {p for p, _ in theirs}, (cfg, mine, theirs)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_embedded_board_schema_agrees_with_board_configs_schema(data):
    original = host.Validator(json.loads((ROOT / "board_configs" / "schema.json").read_text()))
    board = copy.deepcopy(json.loads(data.draw(st.sampled_from(BOARDS)).read_text()))
    board = _mutate(board, data)
    if isinstance(board, str):
        return  # a board name: only the device config allows that
    ours = not fw.schema_errors({"board": board})
    theirs = original.is_valid(board)
    assert ours == theirs, (board, fw.schema_errors({"board": board}))


def test_integral_floats_are_not_integers_on_either_side():
    cfg = {"spool": {"segments": 10.0}}
    assert fw.schema_errors(cfg) == [("spool.segments", "must be an integer")]
    assert host.schema_errors(cfg) == [("spool.segments", "10.0 is not of type 'integer'")]


def test_host_check_adds_the_firmware_cross_checks():
    cfg = copy.deepcopy(FULL)
    cfg["meters"][1]["id"] = "m1"
    assert host.check(cfg) == [("meters[1].id", "duplicate id 'm1' (also meters[0])")]
    cfg["meters"][1]["idd"] = "x"
    assert host.check(cfg) == [("meters[1]", "unknown key 'idd'"), ("meters[1].id", "duplicate id 'm1' (also meters[0])")]


# -- site_config ------------------------------------------------------------------

def test_site_config_passes_the_shared_validator():
    site = load_site(DEMO_SITE)
    for interval in (None, 1, 60):
        cfg = site_config(site, poll_interval_s=interval)
        assert host.check(cfg) == [], cfg
        assert fw.validate(cfg) == []
    cfg = site_config(site, poll_interval_s=60)
    assert cfg["poll_interval_s"] == 60
    assert fw.poll_budget(cfg)["utilisation"] < 0.5
    by_id = {m["id"]: m for m in cfg["meters"]}
    assert by_id["m3"]["exporting"] is True and by_id["m1"]["exporting"] is False  # c201 has PV
    assert by_id["m6"]["asset"] == "SDM120-21050077" and by_id["m6"]["position"] == {"box": "MB-3-1", "position": 6}
    assert by_id["m5"]["kind"] == "three-phase-4w"
    fast = site_config(site, poll_interval_s=1)
    assert fast["poll_interval_s"] > 1  # raised to what the bus can do
    assert fw.poll_budget(fast)["utilisation"] <= 1


# -- CLI ------------------------------------------------------------------------------

def test_cli_check_valid_and_invalid(tmp_path):
    runner = CliRunner()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(FULL))
    r = runner.invoke(main, ["config", "check", str(good)])
    assert r.exit_code == 0, r.output
    assert "valid: 6 meters" in r.output
    bad = copy.deepcopy(FULL)
    bad["meters"][0]["address"] = "123"
    bad["meters"][3]["model"] = "sdm999"
    bad["mqtt"]["qos"] = 2
    badf = tmp_path / "bad.json"
    badf.write_text(json.dumps(bad))
    r = runner.invoke(main, ["config", "check", str(badf)])
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert "%s: meters[0].address: needs 12 digits" % badf in lines
    assert "%s: meters[3].model: must be one of ddsu666, sdm120, sdm630" % badf in lines
    assert "%s: mqtt.qos: must be one of 0, 1" % badf in lines
    r = runner.invoke(main, ["config", "check", "--json", str(badf)])
    assert r.exit_code == 1
    out = json.loads(r.output)
    assert out["valid"] is False and {"path": "mqtt.qos", "reason": "must be one of 0, 1"} in out["errors"]
    r = runner.invoke(main, ["config", "check", "--json", str(good)])
    assert r.exit_code == 0 and json.loads(r.output)["valid"] is True


def test_cli_check_names_where_the_json_breaks(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('{\n  "poll_interval_s": 10\n  "meters": []\n}\n')
    r = CliRunner().invoke(main, ["config", "check", str(f)])
    assert r.exit_code == 1
    assert "not valid JSON: Expecting ',' delimiter at line 3, column 3" in r.output


def test_cli_schema_and_from_site(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["config", "schema"])
    assert r.exit_code == 0 and json.loads(r.output) == config_schema.SCHEMA
    out = tmp_path / "site.json"
    r = runner.invoke(main, ["config", "from-site", str(DEMO_SITE), "--device-id", "gw-demo", "--out", str(out)])
    assert r.exit_code == 0, r.output
    cfg = json.loads(out.read_text())
    assert cfg["device_id"] == "gw-demo" and len(cfg["meters"]) == 6
    assert host.check(cfg) == []
    r = runner.invoke(main, ["config", "check", str(out)])
    assert r.exit_code == 0, r.output
