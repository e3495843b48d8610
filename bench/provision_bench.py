"""Provisioning speed on virtual boards (issue 8).

Figures: a batch of 4 boards provisioned from empty flash, then again with
nothing changed, against a peer measured in the same run: the real mpremote
copying the same files onto one more empty board with a single
`fs cp` chain (no probe, no verify, no reboot), the bare cost of the copy.
The batch's boards share the machine's cores; the peer runs alone.
"""

import pathlib
import subprocess
import tempfile
import time

from metergate.provision import app as appbuild
from metergate.provision import device as devfiles
from metergate.provision import runner
from metergate.provision.credentials import CredentialStore
from metergate.provision.repl import mpremote_command
from metergate.vboard.board import ReplServer

N = 4


def run():
    with tempfile.TemporaryDirectory(prefix="provision-bench-") as tmp:
        tmp = pathlib.Path(tmp)
        servers = [ReplServer(tmp / ("f%d" % i), tmp / ("g%d.pty" % i)) for i in range(N + 1)]
        for s in servers:
            s.start()
        try:
            ports = [str(s.link) for s in servers[:N]]
            plan = runner.Plan(board=devfiles.load_board("esp32-devkitc-max485"), broker="mqtt://127.0.0.1:1883",
                               credentials=CredentialStore(tmp / "creds.json"), wait="none")
            exe = appbuild.matching_mpy_cross(appbuild.emitted_version(appbuild.candidates()[0]), "")
            files = appbuild.build(exe)  # warm the cache: compile time is not what we measure
            t0 = time.monotonic()
            first = runner.provision(ports, plan)
            t1 = time.monotonic()
            second = runner.provision(ports, plan)
            t2 = time.monotonic()
            assert all(r.ok for r in first + second), [r.error for r in first + second if not r.ok]
            # peer: one plain mpremote copy of the same app onto the spare board
            peer = servers[N]
            dirs = sorted({d.rsplit("/", 1)[0] for d in files if "/" in d}, key=lambda d: d.count("/"))
            args = mpremote_command() + ["connect", str(peer.link), "exec",
                                         "import os\nfor d in %r:\n  try: os.mkdir(d)\n  except OSError: pass"
                                         % (dirs,)]
            for dest, src in sorted(files.items()):
                args += ["+", "fs", "cp", str(src), ":" + dest]
            t3 = time.monotonic()
            subprocess.run(args, check=True, capture_output=True)
            t4 = time.monotonic()
        finally:
            for s in servers:
                s.stop()
    first_s, second_s, peer_s = t1 - t0, t2 - t1, t4 - t3
    print("   boards in a batch                     %d" % N)
    print("   first run, empty flash                %.2f s (%.2f s a board, %d files each)"
          % (first_s, max(r.seconds for r in first), len(files) + 2))
    print("   second run, nothing changed           %.2f s (%.2f s a board)"
          % (second_s, max(r.seconds for r in second)))
    print("   peer: plain mpremote fs cp, 1 board   %.2f s" % peer_s)
    print("   ratio first run (a board) / peer      %.2f" % (max(r.seconds for r in first) / peer_s))
    print("   ratio second run / first run          %.2f" % (second_s / first_s))
