# Gateway entry point: load the config from flash, build the HAL for this
# runtime, hand both to the app. Nothing here may stop the board for good: a
# bad config boots with defaults, a crashing app is logged and restarted after
# a pause. Ctrl-C (KeyboardInterrupt) and SystemExit (hal.reset) still pass.
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


def load_config(path=CONFIG):
    try:
        import json

        with open(path) as f:
            cfg = json.load(f)
        if not isinstance(cfg, dict):
            raise ValueError("config is not a JSON object")
        return cfg
    except OSError:
        return {}  # no config yet: an unprovisioned board
    except Exception as exc:  # noqa: BLE001 - a bad config must not brick the board
        log_exc("bad " + path + ", booting with defaults", exc)
        return {}


def build_hal(cfg):
    if sys.platform in ("esp32",):
        from gateway.hal.esp32 import Esp32HAL

        return Esp32HAL(cfg)
    from gateway.hal.unix import UnixHAL

    return UnixHAL(cfg)


def find_app():
    try:
        import gateway.app as app
    except ImportError as exc:
        msg = str(exc)
        if "gateway.app" in msg or "'app'" in msg:
            return None
        raise
    return app


def main():
    cfg = load_config()
    try:
        hal = build_hal(cfg)
    except Exception as exc:  # noqa: BLE001
        log_exc("HAL with this config failed, using defaults", exc)
        cfg = {}
        hal = build_hal(cfg)
    log("boot device=%s reset=%s hal=%s" % (hal.device_id(), hal.reset_cause(), hal.name))
    while True:
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
