# The spool under SIGKILL at random moments (issue 4, reliability): a real
# MicroPython process appends and acks in a loop and is killed >= 30 times.
# After every restart the spool must open, read back only intact records whose
# payload is exactly what was written under that seq, never reuse a seq, and
# lose nothing that was committed and not acknowledged. An independent parser
# (zlib's CRC) reads the segment files after every kill too.
import os
import pathlib
import random
import signal
import struct
import subprocess
import time
import zlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MPY = ROOT / ".venv" / "bin" / "micropython"
DRIVER = pathlib.Path(__file__).with_name("spool_crash_driver.py")
FIRMWARE = ROOT / "firmware"
KILLS = 34
PAD = b"abcdefghijklmnopqrstuvwxyz0123456789"

pytestmark = pytest.mark.skipif(not MPY.exists(), reason="MicroPython unix port not installed")


def payload(seq):
    return b'{"seq":%d,"pad":"%s"}' % (seq, PAD[: (seq * 7) % 37])


def run_driver(spool_dir, seed, kill_after=None, after_readback=True):
    """Run the driver; kill it kill_after seconds after it finished reading back
    (after_readback) or after it started. Returns its complete output lines."""
    args = [str(MPY), str(DRIVER), str(FIRMWARE), str(spool_dir), str(seed)]
    if kill_after is None:
        args.append("once")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = b""
    if kill_after is None:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err.decode()
    else:
        if after_readback:
            # wait for the end of the read-back, so a slow machine still gets
            # kills in the append/ack loop rather than only during start-up
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                head += line
                if not line or line.startswith(b"E "):
                    break
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        # read through the same buffered file objects readline() used: communicate()
        # reads the raw pipe and would lose what readline() had already buffered
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(30)
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, err.decode())
    out = head + out
    assert b"Traceback" not in err, err.decode()
    # a line cut by the kill has no newline: it proves nothing
    lines = out.split(b"\n")[:-1]
    return [line.decode().split() for line in lines]


def scan_files(spool_dir):
    """Every record an independent parser accepts: {seq: payload}."""
    found = {}
    for name in sorted(os.listdir(spool_dir)):
        if not name.endswith(".seg"):
            continue
        data = (spool_dir / name).read_bytes()
        assert data[:8] == b"MGSP\x01\x00\x00\x00", name
        off = 8
        while off + 20 <= len(data):
            if data[off] != 0xD5 or data[off + 1] != 0x6D:
                off += 1
                continue
            n, seq, _ts, crc = struct.unpack_from("<HQII", data, off + 2)
            body = data[off + 20: off + 20 + n]
            if len(body) == n and zlib.crc32(body, zlib.crc32(data[off: off + 16])) == crc:
                assert seq not in found, "seq %d twice on flash" % seq
                found[seq] = body
                off += 20 + n
            else:
                off += 1
    return found


def test_spool_survives_sigkill(tmp_path):
    spool_dir = tmp_path / "spool"
    rng = random.Random(0x5EED)
    committed = []  # every seq printed as committed, in order, across runs
    acked = set()
    possible = set()  # seqs that may exist without a C line: the one being written at a kill
    started = time.monotonic()
    full_reads = 0
    seen_max = 0
    torn_seen = 0
    torn_made = 0
    torn_before = 0
    max_backlog = 0
    for run in range(KILLS + 1):
        final = run == KILLS
        expect_torn = torn_made - torn_before if run else 0
        torn_before = torn_made
        early = run % 5 == 4  # now and then a kill during open and read-back
        lines = run_driver(spool_dir, rng.randrange(1 << 30), None if final else rng.uniform(0.0, 0.25),
                           after_readback=not early)
        if lines:
            assert lines[0][0] == "O", lines[:3]
            next_seq, _floor, dropped, torn, corrupt = map(int, lines[0][1:])
            assert dropped == 0 and corrupt == 0 and torn <= 1
            assert torn >= expect_torn
            torn_seen += torn
            # the seq the open hands out next is above every seq that ever reached flash
            assert next_seq > seen_max, (next_seq, seen_max)
        else:
            assert early  # killed before the open finished: only the files can be checked
        readback = []
        ended = False
        run_commits = []
        for parts in lines[1:]:
            tag = parts[0]
            assert tag != "X", parts
            if tag == "R":
                assert parts[2] == "1", "record %s read back wrong" % parts[1]
                readback.append(int(parts[1]))
            elif tag == "E":
                ended = True
            elif tag == "C":
                run_commits.append(int(parts[1]))
            elif tag == "A":
                acked.add(int(parts[1]))
        known = set(committed) | possible
        assert readback == sorted(set(readback)), "read back out of order or twice"
        assert set(readback) <= known, "invented records: %s" % sorted(set(readback) - known)
        if ended:
            full_reads += 1
            max_backlog = max(max_backlog, len(readback))
            lost = [q for q in committed if q not in acked and q not in set(readback)]
            assert not lost, "committed, never acked, gone: %s" % lost[:10]
        # seqs strictly increase across the whole life of the spool
        for q in run_commits:
            assert not committed or q > committed[-1], (q, committed[-1])
            committed.append(q)
        if run_commits:
            assert run_commits[0] == next_seq
            seen_max = max(seen_max, run_commits[-1])
        if ended and not final:
            # the append in progress at the kill may have reached flash
            possible.add(run_commits[-1] + 1 if run_commits else next_seq)
        if not final and run % 3 == 1 and (run + 1) % 5 != 4:
            # what a power cut (rather than a kill) leaves: a half-written record
            segs = sorted(n for n in os.listdir(spool_dir) if n.endswith(".seg"))
            if segs:
                with open(spool_dir / segs[-1], "ab") as f:
                    f.write(b"\xd5\x6d" + bytes(rng.randrange(256) for _ in range(rng.randrange(40))))
                torn_made += 1
        # independent check of the files: intact records hold exactly what was written
        on_flash = scan_files(spool_dir)
        for seq, body in on_flash.items():
            assert seq in set(committed) | possible, "invented record %d on flash" % seq
            assert body == payload(seq), seq
            seen_max = max(seen_max, seq)
    took = time.monotonic() - started
    print("kills %d, commits %d, acks %d, full read-backs %d, torn tails made %d / found %d, largest backlog %d, %.1f s"
          % (KILLS, len(committed), len(acked), full_reads, torn_made, torn_seen, max_backlog, took))
    assert len(committed) > 500  # the loop really ran between kills
    assert full_reads >= KILLS // 2
    assert torn_seen >= torn_made > 0
    assert took < 30
