# The ESP32 HAL against a stand-in `machine` module: the silicon is the one
# thing we cannot run, so this checks what the HAL asks of it (UART number,
# pins, parity and inversion words, DE levels, reset-cause words).
import sys

from checks import raises


class _Pin:
    OUT = 3
    log = []

    def __init__(self, pin, mode=None, value=None):
        self.pin = pin
        self.levels = [] if value is None else [value]
        _Pin.log.append(self)

    def value(self, v=None):
        if v is not None:
            self.levels.append(v)
        return self.levels[-1] if self.levels else 0


class _UART:
    INV_TX = 8
    INV_RX = 4
    made = []

    def __init__(self, uid, **kw):
        self.id = uid
        self.kw = kw
        self.flushed = 0
        _UART.made.append(self)

    def init(self, **kw):
        self.kw = kw

    def flush(self):
        self.flushed += 1

    def write(self, buf):
        return len(buf)

    def any(self):
        return 0


class _ADC:
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.pin = pin

    def read_uv(self):
        return 1250000


class _Machine:
    Pin = _Pin
    UART = _UART
    ADC = _ADC
    PWRON_RESET = 1
    HARD_RESET = 2
    WDT_RESET = 3
    DEEPSLEEP_RESET = 4
    SOFT_RESET = 5
    cause = 3

    @staticmethod
    def reset_cause():
        return _Machine.cause

    @staticmethod
    def unique_id():
        return b"\x24\x0a\xc4\x12\x34\x56"


BOARD = {
    "name": "test-board",
    "uart": {"id": 2, "tx": 17, "rx": 16, "de": 4, "de_active": 1, "re": None},
    "capabilities": ["uart-invert", "de-pin"],
    "led": {"pin": 2, "active": 1},
    "supply_adc": {"pin": 34, "divider": 4.0},
    "power_enable": [],
}


def _hal(board=BOARD, **cfg):
    saved = sys.modules.get("machine")
    sys.modules["machine"] = _Machine
    sys.modules.pop("gateway.hal.esp32", None)
    try:
        from gateway.hal import esp32

        cfg = dict(cfg)
        if board is not None:
            cfg["board"] = board
        return esp32, esp32.Esp32HAL(cfg)
    finally:
        if saved is None:
            sys.modules.pop("machine", None)
        else:
            sys.modules["machine"] = saved


def test_uart_gets_board_pins_and_even_parity_word():
    _UART.made.clear()
    _, hal = _hal()
    u = hal.uart(baudrate=2400, parity="E")
    made = _UART.made[-1]
    assert made.id == 2
    assert made.kw["tx"] == 17 and made.kw["rx"] == 16
    assert made.kw["parity"] == 0  # machine.UART: 0 is even
    assert made.kw["invert"] == 0
    u.init(baudrate=9600, parity="N")
    assert made.kw["parity"] is None and made.kw["baudrate"] == 9600
    u.init(parity="O")
    assert made.kw["parity"] == 1


def test_invert_only_where_the_board_can():
    _, hal = _hal()
    u = hal.uart(baudrate=2400, invert=True)
    assert _UART.made[-1].kw["invert"] == _UART.INV_TX | _UART.INV_RX
    assert u.invert
    board = dict(BOARD)
    board["capabilities"] = ["de-pin"]
    _, hal2 = _hal(board)
    u2 = hal2.uart(invert=True)
    assert _UART.made[-1].kw["invert"] == 0
    assert not u2.invert


def test_de_pin_idles_receive_and_follows_de_calls():
    _Pin.log.clear()
    _, hal = _hal()
    u = hal.uart()
    de = [p for p in _Pin.log if p.pin == 4][0]
    assert de.levels == [0]  # receiver enabled at boot
    u.de(True)
    u.de(False)
    assert de.levels == [0, 1, 0]


def test_de_active_low_board():
    board = dict(BOARD)
    board["uart"] = dict(BOARD["uart"], de_active=0)
    _Pin.log.clear()
    _, hal = _hal(board)
    u = hal.uart()
    de = [p for p in _Pin.log if p.pin == 4][0]
    u.de(True)
    assert de.levels == [1, 0]


def test_reset_cause_words_and_device_id():
    _Machine.cause = 3
    _, hal = _hal()
    assert hal.reset_cause() == "watchdog"
    _Machine.cause = 1
    _, hal = _hal()
    assert hal.reset_cause() == "power-on"
    _Machine.cause = 99
    _, hal = _hal()
    assert hal.reset_cause() == "unknown"
    assert hal.device_id() == "mg-240ac4123456"
    _, hal = _hal(device_id="gw-7")
    assert hal.device_id() == "gw-7"


def test_supply_adc_scaled_by_divider_and_capability():
    _, hal = _hal()
    assert "supply-adc" in hal.capabilities
    v = hal.supply_voltage()
    assert abs(v - 5.0) < 1e-6  # 1.25 V at the pin through a 1:4 divider
    board = dict(BOARD)
    board["supply_adc"] = None
    _, hal2 = _hal(board)
    assert hal2.supply_voltage() is None
    assert "supply-adc" not in hal2.capabilities


def test_missing_or_bad_board_config_named():
    exc = raises(ValueError, _hal, None)
    assert "board" in str(exc)
    board = dict(BOARD)
    board["uart"] = {"id": 2, "tx": "17", "rx": 16}
    exc = raises(ValueError, lambda: _hal(board)[1].uart())
    assert "uart.tx" in str(exc)


class _WLAN:
    """network.WLAN as the HAL uses it; `joins` says after how many polls it is up."""

    def __init__(self):
        self.on = False
        self.up = False
        self.calls = []

    def active(self, on=None):
        if on is not None:
            self.on = on
            self.calls.append(("active", on))
        return self.on

    def isconnected(self):
        return self.up

    def disconnect(self):
        self.calls.append(("disconnect",))

    def connect(self, ssid, password):
        self.calls.append(("connect", ssid, password))

    def status(self, what=None):
        return -61 if what == "rssi" else 1010


class _Network:
    STA_IF = 0
    wlan = None

    @staticmethod
    def WLAN(which):
        return _Network.wlan


def test_wifi_join_rssi_and_a_board_without_wifi():
    _, hal = _hal()
    _Network.wlan = _WLAN()
    saved = sys.modules.get("network")
    sys.modules["network"] = _Network
    try:
        assert hal.network_up() is False and hal.wifi_rssi() is None
        assert hal.network_connect({"ssid": "site-3", "password": "s3cret"}) is False
        assert _Network.wlan.calls == [("active", True), ("disconnect",), ("connect", "site-3", "s3cret")]
        _Network.wlan.up = True
        assert hal.network_up() is True and hal.wifi_rssi() == -61
        assert hal.network_connect({"ssid": "site-3"}) is True  # already joined: nothing more
    finally:
        if saved is None:
            sys.modules.pop("network", None)
        else:
            sys.modules["network"] = saved
    sys.modules["network"] = None  # no Wi-Fi module on this board
    try:
        assert hal.network_up() is False and hal.wifi_rssi() is None
    finally:
        sys.modules.pop("network", None)
