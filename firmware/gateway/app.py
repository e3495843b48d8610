# The gateway application: main.py calls run(hal) with the HAL it built for
# this board (hal.config holds config.json). For now: poll the configured
# meters and print READING / HEALTH lines on the console (gateway/poller.py).
from gateway.poller import Poller


def run(hal, cycles=None):
    Poller(hal, getattr(hal, "config", None) or {}).run(cycles)
