"""`metergate hil` is part of `make test`: the whole HIL suite against the
virtual board, the simulator and a mosquitto of its own, as a subprocess the
way CI and a bench user run it; and the capability skip on a board without
UART inversion names the missing feature."""

import pathlib
import subprocess
import sys

METERGATE = str(pathlib.Path(sys.executable).with_name("metergate"))


def hil(tmp_path, *args, timeout=600):
    argv = [METERGATE, "hil", "--", "-p", "no:cacheprovider", "-rs",
            "--junitxml=%s" % (tmp_path / "hil-junit.xml"), "--hil-logs", str(tmp_path / "logs")] + list(args)
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)


def test_hil_suite_passes_on_the_virtual_bench(tmp_path):
    result = hil(tmp_path, "-q")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "failed" not in out and "skipped" not in out, out
    assert "test_gateway_polls" in (tmp_path / "hil-junit.xml").read_text()
    assert (tmp_path / "logs" / "test_gateway_polls").is_dir()


def test_ab_swap_test_skips_on_a_board_without_uart_inversion(tmp_path):
    result = hil(tmp_path, "-k", "ab_swapped", "--board", "port:/dev/null", "--board-config", "lilygo-t-can485")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "1 skipped" in out, out
    assert "needs uart-invert; board port:/dev/null [lilygo-t-can485] has no capabilities" in out, out
