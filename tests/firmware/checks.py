# Assertion helpers for test modules that run under both CPython (pytest) and
# the MicroPython unix port (tests/firmware/mpy_runner.py). Common subset only.


def raises(exc_type, fn, *args, **kwargs):
    """Call fn and return the exception it raised; fail if it raised nothing
    or something other than exc_type."""
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    raise AssertionError("%s not raised by %r" % (exc_type.__name__, fn))


def approx(a, b, tol=1e-9):
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def h(text):
    """b'..' from a hex string with spaces: h('68 AA 16')."""
    return bytes(int(part, 16) for part in text.split())
