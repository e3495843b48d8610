# The gateway application: main.py calls run(hal) with the HAL it built for
# this board (hal.config holds the validated config.json; hal.config_errors
# and hal.config_source say what safe mode did). The work itself is
# gateway/runtime.py: polling, the spool, MQTT, health and commands.


def run(hal):
    import asyncio

    from gateway.runtime import Runtime

    rt = Runtime(hal, getattr(hal, "config", None) or {}, getattr(hal, "config_errors", ()),
                 getattr(hal, "config_source", "config.json"), own_config=True)
    asyncio.run(rt.main())
