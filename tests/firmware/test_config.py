# The device config (gateway/config.py, gateway/config_schema.py): every kind of
# error with its path and reason, defaults, the poll budget and safe-mode
# loading against a temp directory. Runs under CPython and MicroPython.
import json
import os

from gateway import config as cf
from gateway.config_schema import SCHEMA

_n = [0]


def _tmpdir():
    _n[0] += 1
    rnd = os.urandom(3)
    path = "/tmp/mg-config-%d-%d" % (_n[0], rnd[0] | (rnd[1] << 8) | (rnd[2] << 16))
    try:
        for name in os.listdir(path):
            os.remove(path + "/" + name)
    except OSError:
        os.mkdir(path)
    return path


def _copy(v):
    return json.loads(json.dumps(v))


FULL = {
    "device_id": "gw-block3_1",
    "site": "Demo estate, building 3",
    "poll_interval_s": 30,
    "health_interval_s": 60,
    "health_interval_s": 60,
    "link": {"retries": 1, "response_timeout_ms": 500, "byte_timeout_ms": 100, "echo": False},
    "bus": "tcp://127.0.0.1:7645",
    "wifi": {"ssid": "site-net", "password": "secret12"},
    "mqtt": {"url": "mqtts://broker.example:8883", "user": "gw", "password": "pw", "client_id": "gw-1",
             "keepalive_s": 60, "topic_prefix": "metergate", "ca": "ca.pem", "cert": "gw.crt", "key": "gw.key",
             "qos": 1},
    "board": "esp32-devkitc-max485",
    "spool": {"max_bytes": 131072, "segments": 8, "max_record": 2048},
    "clock": {"check_interval_s": 3600, "max_drift_s": 60, "sync": True},
    "collectors": [{"id": "k1", "protocol": "dlt645-2007", "address": "000000000123", "response_timeout_ms": 2500}],
    "meters": [
        {"id": "m1", "protocol": "dlt645-2007", "address": "202107072529", "kind": "single-phase",
         "items": ["voltage", "current", "power", "energy_forward", "energy_reverse"],
         "position": {"box": "MB-3-1", "position": 1}, "asset": "202107072529", "exporting": False},
        {"id": "m4", "protocol": "dlt645-1997", "address": "000012345678", "baud": 1200, "block_read": False},
        {"id": "m5", "protocol": "dlt645-2007", "address": "202106150001", "kind": "three-phase-4w",
         "groups": [{"items": ["voltage_a", "voltage_b", "voltage_c"], "interval_s": 60},
                    {"name": "energy", "items": ["energy_forward"], "interval_s": 900}], "block_read": "auto"},
        {"id": "m6", "protocol": "modbus", "model": "sdm120", "unit_id": 3, "baud": 2400, "parity": "E",
         "stop_bits": 1, "items": ["voltage", "power", "pf_a"], "response_timeout_ms": 300, "byte_timeout_ms": 50,
         "retries": 2},
        {"id": "k1m1", "protocol": "dlt645-2007", "address": "202107070001", "collector": "k1"},
        {"id": "k0m1", "protocol": "dlt645-2007", "address": "202107070002", "collector": True},
    ],
}


def test_full_example_and_defaults_are_valid():
    assert cf.validate(FULL) == []
    assert cf.validate({}) == []
    assert cf.validate(cf.defaults()) == []
    assert cf.validate(cf.with_defaults(FULL)) == []


def test_defaults_come_from_the_schema():
    d = cf.defaults()
    assert d["poll_interval_s"] == 10 and d["health_interval_s"] == 60
    assert d["link"] == {"retries": 1, "response_timeout_ms": 500, "byte_timeout_ms": 100, "echo": False}
    assert d["clock"]["check_interval_s"] == 3600 and d["clock"]["max_drift_s"] == 60 and d["clock"]["sync"] is True
    assert d["meters"] == [] and d["collectors"] == []
    assert "mqtt" not in d and "wifi" not in d and "device_id" not in d
    cfg = {"mqtt": {"url": "mqtt://b:1883"}, "link": {"retries": 3},
           "collectors": [{"id": "k1", "protocol": "dlt645-2007"}],
           "meters": [{"id": "m1", "protocol": "dlt645-2007", "address": "202107072529", "block_read": False}]}
    before = json.dumps(cfg)
    got = cf.with_defaults(cfg)
    assert json.dumps(cfg) == before  # the input is not touched
    assert got["mqtt"]["topic_prefix"] == "metergate" and got["mqtt"]["qos"] == 1 and got["mqtt"]["keepalive_s"] == 60
    assert got["link"]["retries"] == 3 and got["link"]["response_timeout_ms"] == 500
    assert got["collectors"][0]["response_timeout_ms"] == 2000
    assert got["meters"][0]["block_read"] is False and got["meters"][0]["exporting"] is False
    # defaults are fresh objects, never the schema's own
    got["link"]["retries"] = 5
    assert cf.defaults()["link"]["retries"] == 1
    assert SCHEMA["properties"]["link"]["default"] == {}


def _errors_after(change):
    cfg = _copy(FULL)
    change(cfg)
    return cf.validate(cfg)


def _set(path, value):
    def change(cfg):
        node = cfg
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value
    return change


def _delete(path):
    def change(cfg):
        node = cfg
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]
    return change


# (change, expected (path, reason)) - each applied to FULL alone
CASES = [
    (_set(["poll_interval_s"], "soon"), ("poll_interval_s", "must be a number")),
    (_set(["poll_interval_s"], 0), ("poll_interval_s", "must be 0.1..86400")),
    (_set(["spool", "segments"], 2.5), ("spool.segments", "must be an integer")),
    (_set(["spool", "segments"], True), ("spool.segments", "must be an integer")),
    (_set(["link", "retries"], 9), ("link.retries", "must be 0..5")),
    (_set(["link", "echo"], "no"), ("link.echo", "must be true or false")),
    (_set(["link", "retires"], 1), ("link", "unknown key 'retires'")),
    (_set(["colour"], "red"), ("(root)", "unknown key 'colour'")),
    (_set(["device_id"], "gw 1"), ("device_id", "needs 1..32 characters of A-Z a-z 0-9 _ -")),
    (_set(["device_id"], "x" * 33), ("device_id", "needs 1..32 characters of A-Z a-z 0-9 _ -")),
    (_set(["site"], "s" * 129), ("site", "must be at most 128 characters")),
    (_set(["wifi"], {}), ("wifi.ssid", "required")),
    (_set(["wifi", "ssid"], ""), ("wifi.ssid", "must not be empty")),
    (_set(["mqtt", "url"], "http://broker"), ("mqtt.url", "needs mqtt://host:port or mqtts://host:port")),
    (_set(["mqtt", "url"], "mqtts://broker:99999"), ("mqtt.url", "port must be 1..65535")),
    (_set(["mqtt", "url"], "mqtts://:8883"), ("mqtt.url", "needs a host name")),
    (_set(["mqtt", "url"], "mqtt://broker:1883"), ("mqtt.ca", "only used with mqtts://")),
    (_delete(["mqtt", "key"]), ("mqtt.key", "cert and key go together")),
    (_set(["mqtt", "keepalive_s"], 5), ("mqtt.keepalive_s", "must be 10..3600")),
    (_set(["mqtt", "qos"], 2), ("mqtt.qos", "must be one of 0, 1")),
    (_set(["mqtt", "qos"], True), ("mqtt.qos", "must be an integer")),
    (_set(["mqtt", "topic_prefix"], "a/#"),
     ("mqtt.topic_prefix", "needs 1..64 characters of A-Z a-z 0-9 _ / - (no MQTT wildcards)")),
    (_set(["mqtt", "ca"], "ca cert.pem"),
     ("mqtt.ca", "needs a file name on flash: 1..64 characters of A-Z a-z 0-9 . _ / -")),
    (_delete(["mqtt", "url"]), ("mqtt.url", "required")),
    (_set(["board"], "ESP32!"), ("board", "needs a board name: lowercase letters, digits and -")),
    (_set(["board"], 5), ("board", "must be an object or a string")),
    (_set(["board"], {"name": "x"}), ("board.uart", "required")),
    (_set(["bus"], "tcp://localhost:0"), ("bus", "port must be 1..65535")),
    (_set(["bus"], "serial:/dev/ttyUSB0"), ("bus", "needs tcp://host:port")),
    (_set(["mqtt"], {"url": "mqtt://h:1", "password": "x"}), ("mqtt.user", "a password needs a user name (MQTT 3.1.1)")),
    (_set(["spool", "segments"], 1), ("spool.segments", "must be 2..64")),
    (_set(["spool", "max_bytes"], 8192), ("spool.max_record", "larger than a segment holds (max_bytes / segments - 28 = 996)")),
    (_set(["clock", "sync"], 1), ("clock.sync", "must be true or false")),
    (_set(["clock", "max_drift_s"], 0), ("clock.max_drift_s", "must be 1..3600")),
    (_set(["meters"], {}), ("meters", "must be a list")),
    (_set(["meters"], [{"id": "m%d" % k, "protocol": "dlt645-2007", "address": "%012d" % k} for k in range(65)]),
     ("meters", "at most 64 entries")),
    (_set(["meters", 0], "m1"), ("meters[0]", "must be an object")),
    (_delete(["meters", 0, "id"]), ("meters[0].id", "required")),
    (_delete(["meters", 0, "protocol"]), ("meters[0].protocol", "required")),
    (_set(["meters", 0, "protocol"], "dlt645"), ("meters[0].protocol", "must be one of dlt645-2007, dlt645-1997, modbus")),
    (_set(["meters", 0, "adress"], "202107072529"), ("meters[0]", "unknown key 'adress'")),
    (_set(["meters", 0, "address"], "2021070725"), ("meters[0].address", "needs 12 digits")),
    (_set(["meters", 0, "address"], "20210707252A"), ("meters[0].address", "needs 12 digits")),
    (_set(["meters", 0, "address"], 202107072529), ("meters[0].address", "must be a string")),
    (_delete(["meters", 0, "address"]), ("meters[0].address", "required for dlt645-2007")),
    (_set(["meters", 0, "unit_id"], 1), ("meters[0].unit_id", "only for modbus meters")),
    (_set(["meters", 0, "model"], "sdm120"), ("meters[0].model", "only for modbus meters")),
    (_set(["meters", 1, "id"], "m1"), ("meters[1].id", "duplicate id 'm1' (also meters[0])")),
    (_set(["meters", 1, "baud"], 1000), ("meters[1].baud", "must be one of 300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200")),
    (_set(["meters", 1, "block_read"], "yes"), ("meters[1].block_read", "must be one of true, false, auto")),
    (_set(["meters", 1, "block_read"], 1), ("meters[1].block_read", "must be one of true, false, auto")),
    (_set(["meters", 0, "kind"], "3p"), ("meters[0].kind", "must be one of single-phase, three-phase-4w, three-phase-3w")),
    (_set(["meters", 0, "items"], []), ("meters[0].items", "needs at least 1 entries")),
    (_set(["meters", 0, "items"], ["votage"]), ("meters[0].items[0]", "unknown item 'votage' for dlt645-2007")),
    (_set(["meters", 0, "items"], ["02010100", "0201FF00"]), None),  # raw DIs: a single one and a block
    (_set(["meters", 0, "items"], ["0299FF00"]), ("meters[0].items[0]", "unknown item '0299FF00' for dlt645-2007")),
    (_set(["meters", 1, "items"], ["frequency"]), ("meters[1].items[0]", "not available in DL/T 645-1997")),
    (_set(["meters", 1, "items"], ["B611", "9010"]), None),
    (_set(["meters", 0, "groups"], [{"items": ["power"], "interval_s": 60}]), ("meters[0]", "give items or groups, not both")),
    (_set(["meters", 2, "groups"], []), ("meters[2].groups", "needs at least 1 entries")),
    (_set(["meters", 2, "groups", 0, "interval_s"], 0.01), ("meters[2].groups[0].interval_s", "must be 0.1..86400")),
    (_set(["meters", 2, "groups", 0, "every"], 5), ("meters[2].groups[0]", "unknown key 'every'")),
    (_set(["meters", 2, "groups", 1, "items"], ["energy_total"]),
     ("meters[2].groups[1].items[0]", "unknown item 'energy_total' for dlt645-2007")),
    (_set(["meters", 0, "position"], {"box": "MB-3-1"}), ("meters[0].position.position", "required")),
    (_set(["meters", 0, "position", "position"], 0), ("meters[0].position.position", "must be 1..999")),
    (_set(["meters", 0, "asset"], ""), ("meters[0].asset", "must not be empty")),
    (_set(["meters", 0, "exporting"], "yes"), ("meters[0].exporting", "must be true or false")),
    (_delete(["meters", 3, "model"]), ("meters[3].model", "required for modbus")),
    (_delete(["meters", 3, "unit_id"]), ("meters[3].unit_id", "required for modbus")),
    (_set(["meters", 3, "model"], "sdm121"), ("meters[3].model", "must be one of ddsu666, sdm120, sdm630")),
    (_set(["meters", 3, "unit_id"], 248), ("meters[3].unit_id", "must be 1..247")),
    (_set(["meters", 3, "address"], "000000000001"), ("meters[3].address", "only for DL/T 645 meters (modbus uses unit_id)")),
    (_set(["meters", 3, "parity"], "X"), ("meters[3].parity", "must be one of N, E, O")),
    (_set(["meters", 3, "stop_bits"], 3), ("meters[3].stop_bits", "must be one of 1, 2")),
    (_set(["meters", 3, "items"], ["voltage_b"]), ("meters[3].items[0]", "not available on sdm120")),
    (_set(["meters", 3, "items"], ["pf_z"]), ("meters[3].items[0]", "unknown item 'pf_z' for sdm120")),
    (_set(["meters", 3, "response_timeout_ms"], 10), ("meters[3].response_timeout_ms", "must be 20..10000")),
    (_set(["meters", 3, "byte_timeout_ms"], 2000), ("meters[3].byte_timeout_ms", "must be 5..1000")),
    (_set(["meters", 4, "collector"], "k9"), ("meters[4].collector", "no collector 'k9' in collectors")),
    (_set(["meters", 4, "collector"], 1), ("meters[4].collector", "must be true or false or a string")),
    (_set(["meters", 4, "address"], "202107072529"), None),  # behind a collector: another bus segment
    (_set(["meters", 5, "address"], "202107072529"), None),  # an unnamed collector is its own route too
    (_set(["meters", 1, "address"], "202107072529"), None),  # dlt645-1997 vs -2007: another protocol
    (_set(["meters", 2, "address"], "202107072529"), ("meters[2].address", "address 202107072529 is also meters[0]'s")),
    (lambda c: c["meters"].append({"id": "m7", "protocol": "modbus", "model": "ddsu666", "unit_id": 3}),
     ("meters[6].unit_id", "unit_id 3 is also meters[3]'s")),
    (lambda c: c["collectors"].append({"id": "k1", "protocol": "modbus"}), ("collectors[1].id", "duplicate id 'k1' (also collectors[0])")),
    (_set(["collectors", 0, "protocol"], "iec"), ("collectors[0].protocol", "must be one of dlt645-2007, dlt645-1997, modbus")),
]


def test_every_error_has_its_path_and_reason():
    for k in range(len(CASES)):
        change, expected = CASES[k]
        errors = _errors_after(change)
        if expected is None:
            assert errors == [], (k, errors)
        else:
            assert expected in errors, (k, expected, errors)


def test_board_object_follows_the_board_schema():
    board = {
        "name": "esp32-devkitc-max485", "description": "x", "sources": ["a source of ten+ chars"], "chip": "esp32",
        "uart": {"id": 2, "tx": 17, "rx": 16, "de": 4, "de_active": 1, "re": None},
        "transceiver": {"direction": "de-pin"}, "power_enable": [], "led": {"pin": 2, "active": 1},
        "supply_adc": None, "capabilities": ["uart-invert", "de-pin"],
    }
    assert cf.validate({"board": board}) == []
    for change, expected in (
        (_set(["uart", "de"], None), None),
        (_set(["uart", "de"], 49), ("board.uart.de", "must be 0..48")),
        (_set(["uart", "de"], "4"), ("board.uart.de", "must be an integer or null")),
        (_set(["supply_adc"], {"pin": 34, "divider": 0}), ("board.supply_adc.divider", "must be more than 0")),
        (_set(["supply_adc"], {"pin": 34}), ("board.supply_adc.divider", "required")),
        (_set(["capabilities"], ["de-pin", "de-pin"]), ("board.capabilities", "entries must be unique (de-pin twice)")),
        (_set(["capabilities"], ["wifi"]), ("board.capabilities[0]", "must be one of uart-invert, de-pin, supply-adc")),
        (_set(["sources"], ["short"]), ("board.sources[0]", "needs at least 10 characters")),
        (_set(["chip"], "esp8266"), ("board.chip", "must be one of esp32, esp32s2, esp32s3, esp32c3, esp32c6")),
    ):
        b = _copy(board)
        change(b)
        errors = cf.validate({"board": b})
        if expected is None:
            assert errors == [], errors
        else:
            assert expected in errors, (expected, errors)


def test_not_an_object_and_error_cap():
    assert cf.validate([1]) == [("(root)", "must be an object")]
    many = {"k%d" % k: 1 for k in range(100)}
    errors = cf.validate(many)
    assert len(errors) == cf.MAX_ERRORS


def test_pattern_subset():
    m = cf.match
    assert m("^[0-9]{12}$", "202107072529") and not m("^[0-9]{12}$", "20210707252") and not m("^[0-9]{12}$", "2021070725290")
    assert m("^[A-Za-z0-9_-]{1,32}$", "gw_1-A") and not m("^[A-Za-z0-9_-]{1,32}$", "")
    assert not m("^[A-Za-z0-9_-]{1,32}$", "a/b")
    assert m("^mqtts?://[^/]+$", "mqtt://h:1") and m("^mqtts?://[^/]+$", "mqtts://h") and not m("^mqtts?://[^/]+$", "mqtt://h/x")
    assert m("^a.*b+c?$", "axxbb") and not m("^a.*b+c?$", "axx")
    assert m("^x{2,}$", "xxx") and not m("^x{2,}$", "x")
    assert m("^\\.[\\]]$", ".]")
    for pat in cf.PATTERN_REASONS:
        cf._compile(pat)
    for bad in ("[0-9]", "^(a|b)$"):
        try:
            cf._compile(bad)
        except ValueError:
            continue
        raise AssertionError("accepted " + bad)


# -- poll budget ----------------------------------------------------------------

def _one(meter, interval=10, **top):
    cfg = {"poll_interval_s": interval, "meters": [meter]}
    cfg.update(top)
    return cf.poll_budget(cfg)


def _close(a, b):
    return abs(a - b) < 1e-9


def test_budget_of_single_and_block_reads():
    m = {"id": "m1", "protocol": "dlt645-2007", "address": "202107072529", "items": ["power"]}
    # request 4 FE + 12 + DI 4 = 20, reply 12 + 4 + 3 = 19, 3.5 chars of silence, 11 bits a char,
    # Td = 500 ms / 4
    one = (20 + 19 + 3.5) * 11 / 2400 + 0.125
    b = _one(m)
    assert b["requests"] == {"m1": 1} and _close(b["utilisation"], one / 10) and b["error"] is None
    m["items"] = ["voltage_a", "voltage_b", "voltage_c"]
    b = _one(m)
    assert b["requests"]["m1"] == 1  # one block read 0201FF00
    assert _close(b["utilisation"], ((20 + 12 + 4 + 6 + 3.5) * 11 / 2400 + 0.125) / 10)
    m["block_read"] = False
    assert _one(m)["requests"]["m1"] == 3
    m["block_read"] = True
    m["items"] = ["voltage_a", "power", "energy_forward", "energy_reverse"]  # no two of one family
    assert _one(m)["requests"]["m1"] == 4
    # 1997: 2-byte DI; the expected delay may be given
    m97 = {"id": "m4", "protocol": "dlt645-1997", "address": "000012345678", "items": ["voltage"]}
    b = _one(m97, budget={"expected_delay_ms": 40})
    assert _close(b["utilisation"], ((18 + 16 + 3.5) * 11 / 1200 + 0.040) / 10)
    assert b["bauds"] == [1200]


def test_budget_of_modbus_groups_and_collectors():
    m = {"id": "m6", "protocol": "modbus", "model": "sdm120", "unit_id": 3, "items": ["voltage", "energy_forward"]}
    b = _one(m)
    assert b["requests"]["m6"] == 1  # 0x0000..0x004A in one read (modbus_maps.plan)
    m["model"] = "ddsu666"
    assert _one(m)["requests"]["m6"] == 2  # 0x2000 and 0x4000 are too far apart
    g = {"id": "m5", "protocol": "dlt645-2007", "address": "202106150001",
         "groups": [{"items": ["power"], "interval_s": 1}, {"items": ["energy_forward"], "interval_s": 100}]}
    one = (20 + 19 + 3.5) * 11 / 2400 + 0.125
    energy = (20 + 20 + 3.5) * 11 / 2400 + 0.125
    assert _close(_one(g)["utilisation"], one / 1 + energy / 100)
    k = {"id": "k1m1", "protocol": "dlt645-2007", "address": "202107070001", "items": ["power"], "collector": "k1"}
    b = cf.poll_budget({"collectors": [{"id": "k1", "protocol": "dlt645-2007", "response_timeout_ms": 4000}],
                        "meters": [k]})
    assert _close(b["utilisation"], ((20 + 19 + 3.5) * 11 / 2400 + 1.0) / 10)


def test_budget_over_the_limit_is_an_error_naming_the_busiest():
    meters = [{"id": "m%d" % k, "protocol": "dlt645-2007", "address": "%012d" % k,
               "items": ["voltage", "current", "power", "energy_forward", "energy_reverse"]} for k in range(12)]
    meters[3]["items"] = meters[3]["items"] + ["frequency", "neutral_current", "power_factor"]
    cfg = {"poll_interval_s": 10, "meters": meters}
    b = cf.poll_budget(cfg)
    assert b["utilisation"] > 1
    assert b["error"].startswith("the schedule needs %.1f s of bus time every 10 s at 2400 baud; busiest: m3 "
                                 % b["busy_s"]), b["error"]
    errors = cf.validate(cfg)
    assert errors == [("meters", b["error"])]
    cfg["poll_interval_s"] = 30
    assert cf.validate(cfg) == []
    cfg["budget"] = {"limit": 0.5}
    errors = cf.validate(cfg)
    assert len(errors) == 1 and "(limit 50%)" in errors[0][1], errors
    # other errors first: the budget is judged on a config that is otherwise good
    cfg["poll_interval_s"] = 10
    cfg["meters"][0]["id"] = "m1"
    assert [p for p, _ in cf.validate(cfg)] == ["meters[1].id"]


# -- safe mode --------------------------------------------------------------------

class CountingFiles(cf.FlashFiles):
    def __init__(self, root, rename_replaces=True):
        cf.FlashFiles.__init__(self, lambda name: root + "/" + name)
        self.root = root
        self.writes = []
        self.rename_replaces = rename_replaces

    def open(self, name, mode="r"):
        if "w" in mode:
            self.writes.append(name)
        return cf.FlashFiles.open(self, name, mode)

    def rename(self, old, new):
        if not self.rename_replaces and new in os.listdir(self.root):
            raise OSError(17)  # EEXIST, like FAT
        cf.FlashFiles.rename(self, old, new)

    def load(self):
        return cf.load(self, ("config.json",), "config.good.json")

    def put(self, name, text):
        with open(self.root + "/" + name, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)

    def get(self, name):
        with open(self.root + "/" + name) as f:
            return f.read()


GOOD_TEXT = json.dumps({"poll_interval_s": 30, "meters": [{"id": "m1", "protocol": "dlt645-2007",
                                                          "address": "202107072529"}]})


def test_over_full_schedule_is_run_with_a_warning_on_the_board():
    # the host tools refuse it (validate above); a board given one anyway keeps
    # collecting, as fast as the bus allows, and says why its schedule slips
    meters = [{"id": "m%d" % k, "protocol": "dlt645-2007", "address": "%012d" % k} for k in range(12)]
    fs = CountingFiles(_tmpdir())
    fs.put("config.json", json.dumps({"poll_interval_s": 5, "meters": meters}))
    cfg, errors, source = fs.load()
    assert source == "config.json" and len(cfg["meters"]) == 12
    assert len(errors) == 1 and errors[0][0] == "meters"
    assert errors[0][1].startswith("warning: the schedule needs") and "polling anyway" in errors[0][1]
    assert fs.get("config.good.json")  # it is a usable config


def test_good_config_is_used_and_copied_once():
    fs = CountingFiles(_tmpdir())
    fs.put("config.json", GOOD_TEXT)
    cfg, errors, source = fs.load()
    assert errors == [] and source == "config.json"
    assert cfg["meters"][0]["id"] == "m1" and cfg["link"]["retries"] == 1  # defaults filled in
    assert fs.get("config.good.json") == GOOD_TEXT
    assert fs.writes == ["config.good.json.tmp"]
    assert "config.good.json.tmp" not in os.listdir(fs.root)
    # unchanged: not rewritten
    cfg, errors, source = fs.load()
    assert source == "config.json" and fs.writes == ["config.good.json.tmp"]
    # changed: rewritten
    text2 = GOOD_TEXT.replace("30", "60")
    fs.put("config.json", text2)
    cfg, errors, source = fs.load()
    assert cfg["poll_interval_s"] == 60 and fs.get("config.good.json") == text2 and len(fs.writes) == 2


def test_copy_where_rename_does_not_replace():
    fs = CountingFiles(_tmpdir(), rename_replaces=False)
    fs.put("config.good.json", "{}")
    fs.put("config.json", GOOD_TEXT)
    cfg, errors, source = fs.load()
    assert errors == [] and fs.get("config.good.json") == GOOD_TEXT


def test_bad_json_uses_the_last_good_config():
    fs = CountingFiles(_tmpdir())
    fs.put("config.json", GOOD_TEXT)
    fs.load()
    fs.put("config.json", GOOD_TEXT[:-5])
    cfg, errors, source = fs.load()
    assert source == "config.good.json"
    assert cfg["poll_interval_s"] == 30 and cfg["meters"][0]["id"] == "m1"
    assert len(errors) == 1 and errors[0][0] == "config.json"
    assert errors[0][1].startswith("not valid JSON: "), errors
    assert fs.get("config.good.json") == GOOD_TEXT  # the bad one never becomes "good"


def test_bad_field_names_field_and_reason():
    fs = CountingFiles(_tmpdir())
    fs.put("config.good.json", GOOD_TEXT)
    fs.put("config.json", json.dumps({"meters": [{"id": "m1", "protocol": "dlt645-2007", "adress": "1"}]}))
    cfg, errors, source = fs.load()
    assert source == "config.good.json" and cfg["poll_interval_s"] == 30
    assert ("meters[0]", "unknown key 'adress'") in errors
    assert ("meters[0].address", "required for dlt645-2007") in errors
    assert fs.writes == []


def test_not_an_object():
    fs = CountingFiles(_tmpdir())
    fs.put("config.json", "[1, 2]")
    cfg, errors, source = fs.load()
    assert errors == [("config.json", "must be a JSON object")] and source == "defaults"
    assert cfg == cf.defaults()


def test_missing_file():
    fs = CountingFiles(_tmpdir())
    cfg, errors, source = fs.load()
    assert errors == [("config.json", "missing")] and source == "defaults" and cfg == cf.defaults()
    fs.put("config.good.json", GOOD_TEXT)
    cfg, errors, source = fs.load()
    assert errors == [("config.json", "missing")] and source == "config.good.json"


def test_corrupt_or_outdated_good_copy_gives_defaults():
    fs = CountingFiles(_tmpdir())
    fs.put("config.json", "{")
    fs.put("config.good.json", "{\"meters\": [")
    cfg, errors, source = fs.load()
    assert source == "defaults" and cfg == cf.defaults()
    assert [p for p, _ in errors] == ["config.json", "config.good.json"]
    fs.put("config.good.json", json.dumps({"poll_interval_s": -1}))
    cfg, errors, source = fs.load()
    assert source == "defaults"
    assert errors[1] == ("config.good.json", "unusable: poll_interval_s: must be 0.1..86400")


def test_load_never_raises():
    class Burning(cf.FlashFiles):
        def open(self, name, mode="r"):
            raise RuntimeError("flash on fire")

    cfg, errors, source = cf.load(Burning())
    assert source == "defaults" and cfg == cf.defaults()
    assert errors[0][0] == "config.json" and "flash on fire" in errors[0][1]

    class Full(CountingFiles):  # reads work, every write fails: no space left
        def open(self, name, mode="r"):
            if "w" in mode:
                raise OSError(28)
            return CountingFiles.open(self, name, mode)

    fs = Full(_tmpdir())
    fs.put("config.json", GOOD_TEXT)
    cfg, errors, source = fs.load()
    assert source == "config.json" and cfg["poll_interval_s"] == 30
    assert errors[0][0] == "config.good.json" and errors[0][1].startswith("could not save")
    assert "config.good.json" not in os.listdir(fs.root)


def test_not_utf8_uses_the_last_good_config():
    fs = CountingFiles(_tmpdir())
    fs.put("config.good.json", GOOD_TEXT)
    fs.put("config.json", b'{"site": "caf\xe9"}')
    cfg, errors, source = fs.load()
    assert source == "config.good.json" and errors == [("config.json", "not UTF-8 text")]


def _big_text(site):
    # several chunks of the file comparison, so the chunk loop is what is tested
    # (laid out by hand: MicroPython's json.dumps has no indent)
    meters = ",\n    ".join([json.dumps({"id": "m%d" % k, "protocol": "dlt645-2007", "address": "%012d" % (k + 1)})
                             for k in range(20)])
    return '{\n  "site": %s,\n  "poll_interval_s": 60,\n  "meters": [\n    %s\n  ]\n}' % (json.dumps(site), meters)


def test_good_copy_compared_chunk_by_chunk():
    fs = CountingFiles(_tmpdir())
    text = _big_text("Block A")
    assert len(text) > 2 * cf.CHUNK and len(text) % cf.CHUNK
    fs.put("config.json", text)
    fs.load()
    assert fs.get("config.good.json") == text and len(fs.writes) == 1
    assert cf.same_file(fs, "config.json", "config.good.json")
    fs.load()
    assert len(fs.writes) == 1  # identical: not rewritten
    # the same length, one byte different in the last (partial) chunk: rewritten
    assert text.endswith("\n}")
    text2 = text[:-2] + " }"
    fs.put("config.json", text2)
    assert not cf.same_file(fs, "config.json", "config.good.json")
    cfg, errors, source = fs.load()
    assert source == "config.json" and fs.get("config.good.json") == text2 and len(fs.writes) == 2
    # the same length, different in a full chunk in the middle: rewritten
    text3 = _big_text("Block B")
    assert len(text3) == len(text) and text3[:cf.CHUNK] != text2[:cf.CHUNK]
    fs.put("config.json", text3)
    cfg, errors, source = fs.load()
    assert cfg["site"] == "Block B" and fs.get("config.good.json") == text3 and len(fs.writes) == 3
    # longer or shorter: different
    fs.put("config.json", text3 + " ")
    assert not cf.same_file(fs, "config.json", "config.good.json")
    assert not cf.same_file(fs, "config.good.json", "config.json")
    assert not cf.same_file(fs, "config.json", "no-such-file.json")
    assert "config.good.json.tmp" not in os.listdir(fs.root)


def test_defaults_filled_in_place_without_aliasing_the_schema():
    cfg = {"link": {"retries": 3}, "meters": [{"id": "m1", "protocol": "dlt645-2007", "address": "202107072529"}]}
    meters = cfg["meters"]
    got = cf.fill_defaults(cfg)
    assert got is cfg and cfg["meters"] is meters  # no copy: one config on the board
    assert cfg["link"] == {"retries": 3, "response_timeout_ms": 500, "byte_timeout_ms": 100, "echo": False}
    assert meters[0]["exporting"] is False and cfg["collectors"] == [] and cfg["clock"]["sync"] is True
    assert cf.validate(cfg) == []
    # the defaults filled in are fresh objects: changing them leaves the schema alone
    cfg["collectors"].append({"id": "k1"})
    cfg["clock"]["sync"] = False
    assert SCHEMA["properties"]["collectors"]["default"] == []
    d = cf.fill_defaults({})
    assert d["collectors"] == [] and d["clock"]["sync"] is True
    assert d["collectors"] is not cf.fill_defaults({})["collectors"]
    assert cf.fill_defaults([1]) == cf.defaults()  # not an object: the defaults
