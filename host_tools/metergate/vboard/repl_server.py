# The virtual board's "ROM": a MicroPython script, run by the unix-port
# interpreter, that makes a directory look like the board's flash and serves
# the board's REPL on stdin/stdout the way mpremote expects of a real board.
#
#   micropython repl_server.py            (settings come from the environment)
#
#   METERGATE_FLASH   directory that becomes "/" (required)
#   METERGATE_VBOARD  comma-separated flags: "repl" serve the REPL (else just
#                     boot main.py and exit with it), "nomain" do not run
#                     main.py at power-on / soft reset.
#
# Protocol notes (learned from mpremote's transport and the MicroPython docs):
# friendly REPL with '>>> ', Ctrl-A raw REPL, Ctrl-B back, Ctrl-D soft reset
# on an empty line, raw-REPL exec answering "OK" + stdout + 0x04 + error +
# 0x04, raw-paste (Ctrl-E 'A' 0x01 -> 'R' 0x01 + window, 0x01 grants another
# window, 0x04 ends). Ctrl-C never reaches stdin: the pty in front of us has
# ISIG on, so it becomes SIGINT, i.e. KeyboardInterrupt, exactly when a real
# board's UART interrupt would raise it - also while user code runs.
# Output is written with '\n'; the pty's ONLCR turns it into '\r\n' like a
# board's cooked console.
import gc
import io
import os
import sys

import vfs

_IN = sys.stdin.buffer
_OUT = sys.stdout.buffer
_THIS = __file__ if "__file__" in globals() else "repl_server.py"
_WINDOW = 512  # raw-paste window; its two bytes must not contain 0x0a (ONLCR)
_RESET_EXIT = 0xB0  # SystemExit code hal.reset() uses: reboot, do not stop


def _w(text):
    _OUT.write(text if isinstance(text, (bytes, bytearray)) else text.encode())


def _getc():
    b = _IN.read(1)
    if not b:
        raise EOFError
    return b[0]


def _exc_text(exc):
    # Drop the frame of this server that called exec(): the user sees their
    # code's frames only, as on a board.
    buf = io.StringIO()
    sys.print_exception(exc, buf)
    lines = buf.getvalue().split("\n")
    keep = []
    for ln in lines:
        if _THIS in ln and ln.lstrip().startswith("File "):
            continue
        keep.append(ln)
    return "\n".join(keep)


def _mount_flash(path):
    # The flash directory becomes "/", so absolute board paths (mpremote ':/x')
    # and relative ones both land inside it and nothing outside is reachable.
    vfs.umount("/")
    vfs.mount(vfs.VfsPosix(path), "/")
    os.chdir("/")
    sys.path[:] = ["", ".frozen", "/lib"]
    sys.modules["os"] = _BoardOs()


class _BoardOs:
    """`os` as board code sees it: the real module, but ilistdir() entries carry
    the file size as their 4th item, as on the board's FAT/littlefs (VfsPosix
    gives 3-tuples, which would make `mpremote fs ls` show size 0)."""

    def __getattr__(self, name):
        return getattr(_os, name)

    def rename(self, old, new):
        # VfsPosix mounted at "/" fails a rename between absolute paths (ENOENT)
        # while the same rename relative to the cwd ("/") works: the board's
        # littlefs takes both, so board code may use either.
        return _os.rename(_relative(old), _relative(new))

    def ilistdir(self, path=""):
        prefix = path.rstrip("/") + "/" if path else ""
        for entry in _os.ilistdir(path or "."):
            size = 0
            if entry[1] == 0x8000:
                try:
                    size = _os.stat(prefix + entry[0])[6]
                except OSError:
                    pass
            yield (entry[0], entry[1], entry[2], size)


_os = os


def _relative(path):
    while path.startswith("/"):
        path = path[1:]
    return path or "."


def _exists(name):
    try:
        os.stat(name)
        return True
    except OSError:
        return False


class Board:
    def __init__(self, run_main):
        self.run_main = run_main
        self.base_modules = set(sys.modules)
        self.g = {"__name__": "__main__"}

    # -- reset and boot --------------------------------------------------
    def soft_reset(self):
        _w("MPY: soft reboot\n")
        for name in list(sys.modules):
            if name not in self.base_modules:
                del sys.modules[name]
        self.g = {"__name__": "__main__"}
        gc.collect()
        os.chdir("/")
        os.putenv("METERGATE_RESET_CAUSE", "soft")

    def boot(self):
        """Run boot.py then main.py like the board does; True if main asked to reboot."""
        for name in ("boot.py", "main.py"):
            if name == "main.py" and not self.run_main:
                continue
            if not _exists(name):
                continue
            try:
                with open(name) as f:
                    src = f.read()
                exec(compile(src, name, "exec"), self.g)
            except SystemExit as exc:
                if exc.args and exc.args[0] == _RESET_EXIT:
                    return True
                return False
            except BaseException as exc:  # noqa: B036 - the board survives everything
                _w(_exc_text(exc))
                if isinstance(exc, KeyboardInterrupt):
                    return False
        return False

    # -- execution -------------------------------------------------------
    def exec_raw(self, src):
        """Run a raw-REPL block: stdout streams, then 0x04, error text, 0x04."""
        err = ""
        reset = False
        try:
            exec(compile(bytes(src), "<stdin>", "exec"), self.g)
        except SystemExit:
            reset = True
        except BaseException as exc:  # noqa: B036
            err = _exc_text(exc)
        _w(b"\x04")
        _w(err)
        _w(b"\x04")
        return reset

    def exec_friendly(self, src):
        try:
            exec(compile(src, "<stdin>", "single"), self.g)
        except SystemExit:
            return True
        except BaseException as exc:  # noqa: B036
            _w(_exc_text(exc))
        return False

    # -- raw REPL --------------------------------------------------------
    def raw_repl(self):
        _w("raw REPL; CTRL-B to exit\n")
        while True:
            _w(">")
            buf = bytearray()
            while True:
                try:
                    c = _getc()
                except KeyboardInterrupt:
                    buf = bytearray()
                    continue
                if c == 0x01:  # Ctrl-A again: restart raw REPL
                    return "raw"
                if c == 0x02:  # Ctrl-B: friendly REPL
                    _w("\n")
                    return "friendly"
                if c == 0x04:
                    if not buf:
                        _w("\n")
                        return "reset-raw"
                    _w("OK")
                    if self.exec_raw(buf):
                        return "reset-raw"
                    break
                if c == 0x05 and not buf:
                    got = self.raw_paste()
                    if got is None:
                        continue
                    if self.exec_raw(got):
                        return "reset-raw"
                    break
                buf.append(c)

    def raw_paste(self):
        try:
            if _getc() != ord("A") or _getc() != 0x01:
                _w("R\x00")
                return None
            _w(b"R\x01" + bytes((_WINDOW & 0xFF, _WINDOW >> 8)))
            buf = bytearray()
            n = 0
            while True:
                c = _getc()
                if c == 0x04:
                    _w(b"\x04")
                    return buf
                buf.append(c)
                n += 1
                if n == _WINDOW:
                    n = 0
                    _w(b"\x01")
        except KeyboardInterrupt:
            _w(b"\x04")
            return None

    # -- friendly REPL ---------------------------------------------------
    def banner(self):
        v = sys.implementation.version
        _w("MicroPython v%d.%d.%d on metergate virtual board (unix port); %s\n"
           'Type "help()" for more information.\n' % (v[0], v[1], v[2], sys.platform))

    def readline(self, prompt):
        """One line of input as str, or the control code typed at an empty line (int)."""
        _w(prompt)
        line = bytearray()
        last = 0
        while True:
            try:
                c = _getc()
            except KeyboardInterrupt:
                _w("\n")
                return 0x03
            if c == 0x0A and last == 0x0D:
                last = c
                continue
            last = c
            if c in (0x0D, 0x0A):
                _w("\n")
                return line.decode()
            if c in (0x08, 0x7F):
                if line:
                    line.pop()
                    _w("\x08 \x08")
                continue
            if not line and c in (0x01, 0x02, 0x04, 0x05):
                return c
            if c == 0x04:
                continue
            if c >= 0x20 or c == 0x09:
                line.append(c)
                _OUT.write(bytes((c,)))

    def paste_mode(self):
        _w("\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\n=== ")
        buf = bytearray()
        while True:
            try:
                c = _getc()
            except KeyboardInterrupt:
                _w("\n")
                return None
            if c == 0x04:
                _w("\n")
                return buf.decode()
            buf.append(c)
            _OUT.write(b"\n=== " if c == 0x0D else bytes((c,)))

    def friendly_repl(self):
        self.banner()
        while True:
            line = self.readline(">>> ")
            if line == 0x03:
                continue
            if line == 0x01:
                return "raw"
            if line == 0x04:
                _w("\n")
                return "reset"
            if line == 0x02:
                _w("\n")
                self.banner()
                continue
            if line == 0x05:
                src = self.paste_mode()
                if src and self.exec_exec(src):
                    return "reset"
                continue
            if not line.strip():
                continue
            src = line
            while _needs_more(src):
                more = self.readline("... ")
                if more == 0x03:
                    src = None
                    break
                if not isinstance(more, str) or not more.strip():
                    break
                src += "\n" + more
            if src is None:
                continue
            if self.exec_friendly(src + "\n"):
                return "reset"

    def exec_exec(self, src):
        try:
            exec(compile(src, "<stdin>", "exec"), self.g)
        except SystemExit:
            return True
        except BaseException as exc:  # noqa: B036
            _w(_exc_text(exc))
        return False

    # -- main loop -------------------------------------------------------
    def serve(self):
        mode = "friendly"
        if self.boot():
            mode = "reset"
        while True:
            try:
                if mode == "friendly":
                    mode = self.friendly_repl()
                elif mode == "raw":
                    mode = self.raw_repl()
                elif mode == "reset":
                    self.soft_reset()
                    mode = "reset" if self.boot() else "friendly"
                elif mode == "reset-raw":
                    # raw REPL soft reset: the board skips main.py
                    self.soft_reset()
                    mode = "raw"
            except KeyboardInterrupt:
                # Ctrl-C that landed between two reads: back to a clean prompt
                _w("\n")


def _needs_more(src):
    # Continue a friendly-REPL statement the way the board does: after a ':'
    # line, a trailing backslash, open brackets or an open triple quote.
    if src.count('"""') % 2 or src.count("'''") % 2:
        return True
    if "\n" in src:
        return True  # inside a block until an empty line
    s = src.rstrip()
    if s.endswith(":") or s.endswith("\\"):
        return True
    depth = 0
    quote = None
    for ch in s:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            break
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
    return depth > 0


def main():
    flash = os.getenv("METERGATE_FLASH")
    if not flash:
        sys.stderr.write("repl_server: METERGATE_FLASH is not set\n")
        sys.exit(2)
    flags = (os.getenv("METERGATE_VBOARD") or "").split(",")
    _mount_flash(flash)
    board = Board(run_main="nomain" not in flags)
    if "repl" in flags:
        try:
            board.serve()
        except EOFError:
            pass  # the pty went away: power off
        return 0
    # Foreground run: boot main.py; hal.reset() reboots in place.
    while board.boot():
        board.soft_reset()
    return 0


sys.exit(main())
