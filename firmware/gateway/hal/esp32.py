# HAL for an ESP32 running MicroPython. Interface: gateway/hal/__init__.py.
# The board wiring (UART id and pins, DE pin, supply ADC, LED) comes from the
# board config (board_configs/*.json), inline in config.json under "board" or
# as board.json on flash, so one firmware serves every supported board.
#
# The only file in the firmware that imports machine/network: tests run it
# under the unix port with a stand-in `machine` module (the silicon edge).
import time

import machine

from gateway.compat import ticks_ms, ticks_diff
from gateway.hal import parity_letter

BOARD_FILE = "board.json"
WDT_TIMEOUT_MS = 30000  # long enough for a TLS handshake on a slow link
RXBUF = 1024  # a full DL/T 645 block reply is < 256 bytes; room for junk bursts

# machine.reset_cause() values -> our words. MicroPython's ESP32 port folds a
# brown-out into PWRON_RESET (esp_reset_reason() BROWNOUT -> PWRON), so
# "brownout" never comes from here; the self-check infers an unstable supply
# from the reset history and the supply ADC instead.
_CAUSES = (
    ("PWRON_RESET", "power-on"),
    ("HARD_RESET", "hard"),
    ("WDT_RESET", "watchdog"),
    ("DEEPSLEEP_RESET", "deepsleep"),
    ("SOFT_RESET", "soft"),
)


def load_board(cfg, flash_path):
    """The board config: cfg["board"] when it is a dict, else board.json on flash."""
    board = cfg.get("board") if cfg else None
    if isinstance(board, dict):
        return board
    import json

    try:
        with open(flash_path(BOARD_FILE)) as f:
            board = json.load(f)
    except OSError:
        raise ValueError("no board config: config.json has no 'board' object and " + BOARD_FILE + " is missing")
    if not isinstance(board, dict):
        raise ValueError(BOARD_FILE + " is not a JSON object")
    return board


class Esp32Uart:
    """machine.UART plus the transceiver's DE pin, with the HAL's UART interface."""

    def __init__(self, board):
        u = board.get("uart") or {}
        for key in ("id", "tx", "rx"):
            if not isinstance(u.get(key), int):
                raise ValueError("board config: uart." + key + " must be an integer")
        self._id = u["id"]
        self._tx = u["tx"]
        self._rx = u["rx"]
        self._de_active = 1 if u.get("de_active", 1) else 0
        self._de = None
        if isinstance(u.get("de"), int):
            self._de = machine.Pin(u["de"], machine.Pin.OUT, value=1 - self._de_active)
        # A separate /RE pin is kept low (receiver always on): then we hear our
        # own echo, which the link layer drops by length.
        if isinstance(u.get("re"), int):
            machine.Pin(u["re"], machine.Pin.OUT, value=0)
        self._can_invert = "uart-invert" in (board.get("capabilities") or ())
        self._uart = None
        self.baudrate = 2400
        self.bits = 8
        self.parity = "E"
        self.stop = 1
        self.invert = False

    def init(self, baudrate=2400, bits=8, parity="E", stop=1, invert=False):
        self.baudrate = int(baudrate)
        self.bits = int(bits)
        self.parity = parity_letter(parity)
        self.stop = int(stop)
        self.invert = bool(invert) and self._can_invert
        mp_parity = None if self.parity == "N" else (0 if self.parity == "E" else 1)
        inv = (machine.UART.INV_TX | machine.UART.INV_RX) if self.invert else 0
        kw = dict(baudrate=self.baudrate, bits=self.bits, parity=mp_parity, stop=self.stop,
                  tx=self._tx, rx=self._rx, rxbuf=RXBUF, timeout=0, timeout_char=0, invert=inv)
        if self._uart is None:
            self._uart = machine.UART(self._id, **kw)
        else:
            self._uart.init(**kw)

    def deinit(self):
        if self._uart is not None:
            self._uart.deinit()
            self._uart = None

    def write(self, buf):
        return self._uart.write(buf)

    def flush(self):
        # Waits until the last stop bit has left the shift register: only then
        # may DE drop without cutting the frame's last byte.
        self._uart.flush()

    def any(self):
        return self._uart.any()

    def read(self, n=-1):
        if n is None or n < 0:
            return self._uart.read()
        return self._uart.read(n)

    def readinto(self, buf, nbytes=-1):
        if nbytes is None or nbytes < 0:
            return self._uart.readinto(buf)
        return self._uart.readinto(buf, nbytes)

    def wait(self, timeout_ms):
        start = ticks_ms()
        while not self._uart.any() and ticks_diff(ticks_ms(), start) < timeout_ms:
            time.sleep_ms(1)
        return self._uart.any()

    async def wait_async(self, timeout_ms):
        import asyncio

        start = ticks_ms()
        while not self._uart.any() and ticks_diff(ticks_ms(), start) < timeout_ms:
            # 2 ms is under one character at 9600 baud: no reply byte waits long.
            await asyncio.sleep_ms(2)
        return self._uart.any()

    def de(self, on):
        if self._de is not None:
            self._de.value(self._de_active if on else 1 - self._de_active)


class Esp32HAL:
    name = "esp32"

    def __init__(self, config=None):
        self.config = config or {}
        self.board = load_board(self.config, self.flash_path)
        caps = set(self.board.get("capabilities") or ())
        adc = self.board.get("supply_adc")
        self._adc = None
        self._adc_scale = 1.0
        if isinstance(adc, dict) and isinstance(adc.get("pin"), int):
            self._adc = machine.ADC(machine.Pin(adc["pin"]), atten=machine.ADC.ATTN_11DB)
            self._adc_scale = float(adc.get("divider", 1.0))
            caps.add("supply-adc")
        self.capabilities = caps
        self._uart = None
        self._wdt = None
        self._reset_cause = self._cause()
        led = self.board.get("led")
        self._led = None
        if isinstance(led, dict) and isinstance(led.get("pin"), int):
            self._led = machine.Pin(led["pin"], machine.Pin.OUT, value=0)
        for p in self.board.get("power_enable") or ():
            if isinstance(p, dict) and isinstance(p.get("pin"), int):
                machine.Pin(p["pin"], machine.Pin.OUT, value=1 if p.get("active", 1) else 0)

    def _cause(self):
        rc = machine.reset_cause()
        for const_name, word in _CAUSES:
            if getattr(machine, const_name, None) == rc:
                return word
        return "unknown"

    def flash_path(self, name):
        return "/" + name.lstrip("/")

    def uart(self, **settings):
        if self._uart is None:
            self._uart = Esp32Uart(self.board)
            if not settings:
                self._uart.init()
        if settings:
            self._uart.init(**settings)
        return self._uart

    def device_id(self):
        given = self.config.get("device_id")
        if given:
            return given
        import binascii

        return "mg-" + binascii.hexlify(machine.unique_id()).decode()

    def reset_cause(self):
        return self._reset_cause

    def reset(self):
        machine.reset()

    def time(self):
        # MicroPython's ESP32 epoch is 1970 since v1.22 (and 2000 before); the
        # RTC is set by NTP or the broker's clock, never trusted before that.
        return int(time.time())

    def ticks_ms(self):
        return ticks_ms()

    def sleep_ms(self, ms):
        time.sleep_ms(ms)

    def wdt_start(self, timeout_ms=WDT_TIMEOUT_MS):
        """Arm the hardware watchdog: from now on only a healthy loop keeps the board up."""
        if self._wdt is None:
            self._wdt = machine.WDT(timeout=timeout_ms)

    def wdt_feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    def release(self):
        """Let go of the UART (a check run from the console is over)."""
        if self._uart is not None:
            try:
                self._uart.deinit()
            except Exception:  # noqa: BLE001
                pass
            self._uart = None

    def supply_voltage(self):
        if self._adc is None:
            return None
        total = 0
        for _ in range(8):  # average out ADC noise
            total += self._adc.read_uv()
        return total / 8 / 1e6 * self._adc_scale

    def _wlan(self):
        import network

        return network.WLAN(network.STA_IF)

    def network_up(self):
        try:
            return self._wlan().isconnected()
        except Exception:  # noqa: BLE001 - no Wi-Fi module: wired or none
            return False

    def network_connect(self, wifi):
        """Start joining the configured access point (returns at once; the
        runtime polls network_up() and calls again after its backoff)."""
        w = self._wlan()
        w.active(True)
        if w.isconnected():
            return True
        try:
            w.disconnect()  # a half-finished attempt blocks a new connect on some IDF versions
        except Exception:  # noqa: BLE001
            pass
        w.connect(wifi["ssid"], wifi.get("password") or "")
        return False

    def wifi_rssi(self):
        """dBm of the access point, None when not connected."""
        try:
            w = self._wlan()
            return w.status("rssi") if w.isconnected() else None
        except Exception:  # noqa: BLE001
            return None

    def sync_time(self):
        """Set the RTC from NTP (readings carry the gateway's time); False when it failed."""
        try:
            import ntptime

            ntptime.settime()
            return True
        except Exception:  # noqa: BLE001 - no network yet, NTP blocked: try again later
            return False

    def led(self, on):
        if self._led is not None:
            active = (self.board.get("led") or {}).get("active", 1)
            self._led.value(active if on else 1 - active)
