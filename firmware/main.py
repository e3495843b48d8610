# Gateway entry point: load the config from flash, build the HAL for this
# runtime, hand both to the app. Nothing here may stop the board for good: a
# bad config boots on the last good one, else the defaults (gateway/config.py,
# safe mode), a crashing app is logged and restarted after a pause. Ctrl-C
# (KeyboardInterrupt) and SystemExit (hal.reset) still pass.
import sys
import time

CONFIG = "config.json"
RESTART_PAUSE_MS = 5000


def log(msg):
    print("[main] " + msg)


def log_exc(what, exc):
    log(what + ": " + repr(exc))
    try:
        sys.print_exception(exc)
    except AttributeError:  # CPython
        import traceback

        traceback.print_exception(exc)


def load_config_checked(path=CONFIG):
    """(config, errors, source) through gateway.config's safe mode: a bad
    config.json boots on the last good one (config.good.json), else on the
    defaults. Never raises: if the loader itself fails, the defaults."""
    try:
        got = _load(path)
    except Exception as exc:  # noqa: BLE001 - a broken loader must not brick the board
        log_exc("config loader failed, booting with defaults", exc)
        got = {}, [("config", "loader failed: %r" % (exc,))], "defaults"
    # here, not in _load: no local of this frame holds the module while it is dropped
    forget("gateway.config", "gateway.config_schema")
    return got


def _load(path):
    from gateway import config as cf

    return cf.load(cf.FlashFiles(), (path,), cf.GOOD)


def forget(*names):
    """Drop modules only needed at boot (the validator and schema are ~20 KB
    of heap on the ESP32); whoever needs them later imports them again."""
    import gc

    pkg = sys.modules.get("gateway")
    for name in names:
        sys.modules.pop(name, None)
        short = name.rsplit(".", 1)[-1]
        if pkg is not None and short in getattr(pkg, "__dict__", {}):
            try:
                delattr(pkg, short)
            except (AttributeError, TypeError):
                pass
    gc.collect()


def load_config(path=CONFIG):
    """The config the board runs on (a dict; see load_config_checked)."""
    return load_config_checked(path)[0]


def report_config(errors, source, path=CONFIG):
    for where, reason in errors:
        log("config error: %s: %s" % (where, reason))
    if source != path:
        missing = len(errors) == 1 and errors[0] == (path, "missing")
        log("%s %s, booting with %s" % ("no" if missing else "bad", path, source))
    log("config source: %s%s" % (source, " (safe mode)" if source != path else ""))


def build_hal(cfg):
    from gateway.hal import for_this_board

    return for_this_board(cfg)


def find_app():
    try:
        import gateway.app as app
    except ImportError as exc:
        msg = str(exc)
        if "gateway.app" in msg or "'app'" in msg:
            return None
        raise
    return app


def preload():
    """Load the app's code before the config: code objects live as long as the board,
    the config's parse leaves many short-lived ones; loaded after those, the code
    would be scattered over the heap and leave no free block big enough for the
    MQTT and spool buffers (an ESP32 with frozen code has no such problem).
    A failure here is reported again, with its traceback, by find_app()."""
    try:
        __import__("gateway.runtime")
        __import__("gateway.mqtt")
    except Exception:  # noqa: BLE001
        pass


def main():
    preload()
    cfg, errors, source = load_config_checked()
    try:
        hal = build_hal(cfg)
    except Exception as exc:  # noqa: BLE001
        log_exc("HAL with this config failed, using defaults", exc)
        errors = list(errors) + [("board", "HAL failed: %r" % (exc,))]
        source = "defaults"
        try:
            from gateway import config as cf

            cfg = cf.defaults()
        except Exception:  # noqa: BLE001
            cfg = {}
        hal = build_hal(cfg)
    # What the app (and its MQTT status report) reads: hal.config is the
    # config in use, defaults filled in; hal.config_errors a list of
    # (path, reason); hal.config_source "config.json", "config.good.json"
    # (safe mode) or "defaults".
    hal.config = cfg
    hal.config_errors = errors
    hal.config_source = source
    cfg = None  # the app may let go of parts of it (its meter list): hold no copy here
    report_config(errors, source)
    log("boot device=%s reset=%s hal=%s" % (hal.device_id(), hal.reset_cause(), hal.name))
    runs = 0
    while True:
        if runs:  # a restart after a crash: the app gets the whole config again
            hal.config, hal.config_errors, hal.config_source = load_config_checked()
        runs += 1
        try:
            app = find_app()
        except Exception as exc:  # noqa: BLE001
            log_exc("gateway.app failed to import", exc)
            app = None
        if app is None:
            log("no gateway.app: idle")
            while True:
                hal.wdt_feed()
                hal.sleep_ms(1000)
        try:
            app.run(hal)
            log("app returned; restarting")
        except Exception as exc:  # noqa: BLE001
            log_exc("app crashed; restarting", exc)
        hal.wdt_feed()
        time.sleep(RESTART_PAUSE_MS / 1000)
        sys.modules.pop("gateway.app", None)


main()
