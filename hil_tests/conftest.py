# The HIL fixtures and options (--board, --bus, --broker, --site, --board-config)
# live in the plugin so that `metergate hil` and plain pytest load the same thing.
pytest_plugins = ["metergate.hil.plugin"]
