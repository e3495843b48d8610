"""The `metergate` command: thin click commands over the library modules."""

import pathlib

import click

from metergate import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="metergate")
def main():
    """Metergate: RS-485 meter gateways, their test bench and back office."""


@main.group()
def firmware():
    """Build the gateway firmware."""


@firmware.command("build")
@click.option("--out", type=click.Path(path_type=pathlib.Path), default=pathlib.Path("build/mpy"), show_default=True)
def firmware_build(out):
    """Compile every firmware module with the matching mpy-cross."""
    from metergate import firmware as fw

    try:
        written = fw.build(out)
    except fw.BuildError as exc:
        raise click.ClickException("mpy-cross rejected %s" % exc)
    mpy = [(p, n) for p, n in written if p.suffix == ".mpy"]
    total = sum(n for _, n in mpy)
    click.echo("firmware: %d modules compiled with mpy-cross (mpy v%s) into %s, %d bytes of .mpy"
               % (len(mpy), fw.mpy_version(), out, total))


from metergate.hil.cli import hil; main.add_command(hil)  # noqa: E402,E702
from metergate.vboard.cli import vboard; main.add_command(vboard)  # noqa: E402,E702
from metergate.sim.cli import sim; main.add_command(sim)  # noqa: E402,E702
from metergate.demo import demo; main.add_command(demo)  # noqa: E402,E702
from metergate.config import config_cli; main.add_command(config_cli)  # noqa: E402,E702
from metergate.provision.cli import provision_cmd; main.add_command(provision_cmd)  # noqa: E402,E702
from metergate.provision.cli import broker_acl_cmd; main.add_command(broker_acl_cmd)  # noqa: E402,E702
from metergate.provision.cli import commission_cmd; main.add_command(commission_cmd)  # noqa: E402,E702
from metergate.backoffice.cli import backoffice; main.add_command(backoffice)  # noqa: E402,E702
from metergate.scoring.cli import score, sample; main.add_command(score); main.add_command(sample)  # noqa: E402,E702
from metergate.technician.cli import selfcheck_cmd; main.add_command(selfcheck_cmd)  # noqa: E402,E702


if __name__ == "__main__":  # pragma: no cover
    main()
