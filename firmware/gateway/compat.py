# What MicroPython and CPython spell differently, in one place.
# The MicroPython compiler folds X = const(N) wherever the name `const` is used,
# so modules may import it from here and still get compile-time constants.
try:
    from micropython import const  # noqa: F401
except ImportError:  # CPython

    def const(value):
        return value


try:
    from time import ticks_ms, ticks_diff, ticks_add  # noqa: F401
except ImportError:  # CPython
    import time as _time

    _TICKS_PERIOD = 1 << 30

    def ticks_ms():
        return int(_time.monotonic() * 1000) & (_TICKS_PERIOD - 1)

    def ticks_add(ticks, delta):
        return (ticks + delta) & (_TICKS_PERIOD - 1)

    def ticks_diff(end, start):
        diff = (end - start) & (_TICKS_PERIOD - 1)
        if diff >= _TICKS_PERIOD // 2:
            diff -= _TICKS_PERIOD
        return diff


# asyncio: MicroPython sleeps and times out in ms natively; CPython in seconds.
try:
    from asyncio import sleep_ms, wait_for_ms  # noqa: F401
except ImportError:
    import asyncio as _asyncio

    def sleep_ms(ms):
        return _asyncio.sleep(ms / 1000)

    def wait_for_ms(aw, ms):
        return _asyncio.wait_for(aw, ms / 1000)


# The bytes of an ASCII str without a copy: MicroPython's memoryview takes a
# str; CPython's does not (encode, the copy does not matter there).
try:
    memoryview("")
    str_bytes = memoryview
except TypeError:  # CPython

    def str_bytes(s):
        return s.encode()
