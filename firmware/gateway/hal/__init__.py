"""Hardware abstraction: everything the gateway needs from the board, in one object.

main.py builds the HAL for the runtime it finds (``gateway.hal.esp32`` on the
board, ``gateway.hal.unix`` under the MicroPython unix port) and passes it
down; nothing else in the firmware imports ``machine`` or ``network``.

Interface every HAL offers (times in ms unless named otherwise):

``hal.uart(**settings)`` -> the RS-485 UART (one per board, created on first
call; keyword settings are passed to ``init``). The UART object has:

- ``init(baudrate=2400, bits=8, parity="E", stop=1, invert=False)``: line
  settings. ``parity`` is "N"/"E"/"O" (None/0/1 as machine.UART are accepted).
  ``invert`` swaps the line polarity (A/B swapped wiring); only boards with
  "uart-invert" in ``hal.capabilities`` honour it.
- ``write(buf)`` -> bytes queued; returns at once, like a UART FIFO.
- ``flush()``: wait until the written bytes have left the wire (what the
  RS-485 direction switch needs before listening).
- ``any()`` -> bytes waiting; ``read(n=-1)`` -> bytes or None when nothing
  arrived; ``readinto(buf)`` -> count or None. Never blocks.
- ``wait(timeout_ms)`` -> ``any()`` after waiting (blocking) for a first byte.
- ``async wait_async(timeout_ms)`` -> ``any()`` after waiting without blocking
  the asyncio loop.
- ``de(on)``: drive the transceiver's DE pin (no-op when the board switches
  direction automatically, and on the unix port).

Flash: ``hal.flash_path(name)`` -> the path of a file in the board's
filesystem (config.json, spool files).

System: ``hal.device_id()`` -> str; ``hal.reset_cause()`` -> one of
"power-on", "hard", "soft", "watchdog", "brownout", "deepsleep", "unknown";
``hal.reset()`` reboots the board; ``hal.time()`` -> Unix epoch seconds;
``hal.ticks_ms()``, ``hal.sleep_ms(ms)``; ``hal.wdt_feed()``;
``hal.supply_voltage()`` -> volts, or None without a supply ADC;
``hal.release()`` lets go of the UART (a console self-check is over);
``hal.network_up()`` -> bool.

``hal.capabilities``: set of strings naming optional hardware features
("uart-invert", "de-pin", "supply-adc"), the same words board_configs/ and the
HIL suite use; code that needs one checks it and reports what is missing.
``hal.name``: short name of the HAL ("unix", "esp32").
"""

RESET_CAUSES = ("power-on", "hard", "soft", "watchdog", "brownout", "deepsleep", "unknown")


def parity_letter(parity):
    """Normalise a parity setting to "N", "E" or "O" (machine.UART's None/0/1 too)."""
    if parity is None or parity == "N":
        return "N"
    if parity == 0 or parity == "E":
        return "E"
    if parity == 1 or parity == "O":
        return "O"
    raise ValueError("parity must be N, E or O")


def char_bits(bits, parity, stop):
    """Bits one character takes on the wire: start + data + parity + stop."""
    return 1 + bits + (0 if parity_letter(parity) == "N" else 1) + stop


def for_this_board(cfg):
    """The HAL of the port we run on: the ESP32's, else the unix port's."""
    import sys

    if sys.platform == "esp32":
        from gateway.hal.esp32 import Esp32HAL

        return Esp32HAL(cfg)
    from gateway.hal.unix import UnixHAL

    return UnixHAL(cfg)
