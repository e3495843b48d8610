"""The toolchain the firmware tests rely on: mpy-cross emits what the interpreter
loads, every firmware module compiles, and the MicroPython runner reports failures."""

import pathlib
import subprocess
import sys

from metergate import firmware

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.executable).parent
MICROPYTHON = str(BIN / "micropython")


def run_mpy(*args, cwd=None):
    return subprocess.run([MICROPYTHON, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_mpy_cross_matches_interpreter():
    # sys.implementation._mpy: low byte = major mpy version, bits 8..9 = sub-version
    out = run_mpy("-c", "import sys; print(sys.implementation._mpy)")
    assert out.returncode == 0, out.stderr
    native = int(out.stdout.strip())
    interpreter = "%d.%d" % (native & 0xFF, (native >> 8) & 3)
    assert firmware.mpy_version() == interpreter


def test_every_firmware_module_compiles_and_loads(tmp_path):
    written = firmware.build(tmp_path / "mpy")
    names = {str(p) for p, _ in written}
    assert "gateway/compat.mpy" in names
    assert "main.py" in names  # the entry point stays source
    assert all(size > 0 for _, size in written)
    # the compiled package imports on the interpreter, from .mpy only
    probe = "import sys; sys.path.insert(0, %r); import gateway.compat as c; print(c.__file__, c.const(7))" % str(tmp_path / "mpy")
    out = run_mpy("-c", probe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "mpy" / "gateway" / "compat.mpy"), "7"]


def test_build_error_names_the_file(tmp_path):
    src = tmp_path / "src"
    (src / "gateway").mkdir(parents=True)
    (src / "gateway" / "broken.py").write_text("def f(:\n    pass\n")
    try:
        firmware.build(tmp_path / "out", root=src)
    except firmware.BuildError as exc:
        assert "gateway/broken.py" in str(exc)
    else:
        raise AssertionError("a syntax error compiled")


def test_micropython_runner_counts_and_fails(tmp_path):
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_sample.py").write_text(
        "def test_good():\n    assert 1 + 1 == 2\n\n"
        "def test_bad():\n    assert 1 + 1 == 3, 'arithmetic'\n"
    )
    out = run_mpy(str(ROOT / "tests" / "firmware" / "mpy_runner.py"), str(ROOT / "firmware"), str(tests))
    assert out.returncode == 1
    assert "micropython: 1 passed, 1 failed" in out.stdout
    assert "FAIL test_sample.test_bad" in out.stdout
