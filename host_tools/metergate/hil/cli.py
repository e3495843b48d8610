"""`metergate hil`: run the HIL suite (hil_tests/) with pytest."""

import pathlib
import sys

import click

# pytest is a test extra: import it only when the command runs, so that every
# other `metergate` command works without it.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
HIL_TESTS = REPO_ROOT / "hil_tests"
DEFAULT_JUNIT = pathlib.Path("build") / "hil-junit.xml"


def _has_junit(args):
    return any(a in ("--junitxml", "--junit-xml") or a.startswith(("--junitxml=", "--junit-xml="))
               for a in args)


def pytest_argv(pytest_args):
    """The pytest command line `metergate hil ARGS` runs."""
    args = list(pytest_args)
    if not _has_junit(args):
        args.append("--junitxml=%s" % DEFAULT_JUNIT)
    return [str(HIL_TESTS), "-p", "metergate.hil.plugin"] + args


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                 "help_option_names": ["-h", "--help"]})
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def hil(pytest_args):
    """Run the HIL suite; arguments after `--` go to pytest.

    \b
    metergate hil                       virtual board, simulator, own mosquitto
    metergate hil -- -k broker -x
    metergate hil -- --board port:/dev/ttyUSB0 --bus port:/dev/ttyUSB1 \\
        --board-config esp32-devkitc-max485 --broker mqtt://192.168.1.10:1883

    Writes JUnit XML to build/hil-junit.xml unless --junitxml is given; logs go
    to build/hil-logs/. Exits with pytest's exit code. See docs/hil.md.
    """
    if not HIL_TESTS.is_dir():
        raise click.ClickException("no HIL suite at %s (run from a source checkout)" % HIL_TESTS)
    try:
        import pytest
    except ImportError:
        raise click.ClickException("pytest is not installed: pip install -e '.[test]'")
    # in-process, so Ctrl-C reaches pytest's own teardown and the bench
    # processes are stopped rather than orphaned
    sys.exit(int(pytest.main(pytest_argv(pytest_args))))
