"""`metergate vboard`: run the virtual board, or serve its REPL on a pty."""

import os
import pathlib
import signal
import sys

import click

FLASH = click.option("--flash", required=True, type=click.Path(file_okay=False, path_type=pathlib.Path),
                     help="Directory that is the board's flash (its '/'); created if missing.")
BUS = click.option("--bus", default=None, metavar="URL",
                   help="Meter-bus simulator the UART connects to, e.g. tcp://127.0.0.1:7645 "
                        "(else config.json's, else none).")
FIRMWARE = click.option("--firmware", type=click.Path(file_okay=False, exists=True, path_type=pathlib.Path),
                        default=None, help="Firmware to install into the flash first "
                                           "[default: this checkout's firmware/].")
NO_INSTALL = click.option("--no-install", is_flag=True,
                          help="Boot whatever code the flash holds; do not install firmware.")
DEVICE_ID = click.option("--device-id", default=None, help="Device id the HAL reports (default: config/derived).")


def _install(flash, firmware, no_install):
    from metergate.vboard import board

    flash.mkdir(parents=True, exist_ok=True)
    if not no_install:
        try:
            board.install_firmware(flash, firmware or board.FIRMWARE_DIR)
        except board.VboardError as exc:
            raise click.ClickException(str(exc))


@click.group()
def vboard():
    """The virtual board: gateway firmware under the MicroPython unix port."""


@vboard.command("run")
@FLASH
@BUS
@FIRMWARE
@NO_INSTALL
@DEVICE_ID
@click.option("--heapsize", default=None, metavar="SIZE",
              help="Cap the MicroPython heap, e.g. 96K (an ESP32 without PSRAM) [default: the interpreter's].")
def run(flash, bus, firmware, no_install, device_id, heapsize):
    """Boot the firmware in the foreground; its console is this terminal."""
    from metergate.vboard import board

    try:
        board.check_heapsize(heapsize)
    except board.VboardError as exc:
        raise click.BadParameter(str(exc), param_hint="--heapsize")
    _install(flash, firmware, no_install)
    env = board.board_env(flash, bus, repl=False, device_id=device_id)
    argv = board.run_argv(heapsize)
    sys.stdout.flush()
    # Replace this process: signals (Ctrl-C, SIGTERM) reach the board directly
    # and nothing is left behind when it stops.
    os.execve(argv[0], argv, env)


@vboard.command("serve-repl")
@FLASH
@click.option("--link", type=click.Path(dir_okay=False, path_type=pathlib.Path), default=None,
              help="Path of the pty symlink [default: FLASH/../vboard.pty].")
@BUS
@FIRMWARE
@NO_INSTALL
@DEVICE_ID
@click.option("--no-main", is_flag=True, help="Do not run main.py at power-on and soft reset.")
def serve_repl(flash, link, bus, firmware, no_install, device_id, no_main):
    """Serve the board's REPL on a pty: `mpremote connect PTY resume ...` works on it."""
    from metergate.vboard import board

    _install(flash, firmware, no_install)
    link = link or flash.resolve().parent / "vboard.pty"
    server = board.ReplServer(flash, link, bus=bus, run_main=not no_main, device_id=device_id)

    def _stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    try:
        server.start()
        click.echo("virtual board REPL on %s (-> %s); flash %s" % (link, server.pty, server.flash))
        click.echo("try: mpremote connect %s resume exec \"print('hello')\"" % link)
        server.wait()
        raise click.ClickException("socat stopped unexpectedly (exit %s)" % server.proc.returncode)
    except board.VboardError as exc:
        raise click.ClickException(str(exc))
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
