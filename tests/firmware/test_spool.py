# Store-and-forward spool (gateway/spool.py): runs under CPython and MicroPython.
import os

from gateway import spool as sp
from gateway.spool import Spool, ReplayBudget, HDR, SEGHDR
from checks import raises

_n = [0]


def _rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        os.remove(path + "/" + name)
    os.rmdir(path)


def _tmpdir():
    _n[0] += 1
    rnd = os.urandom(4)
    path = "/tmp/mg-spool-%d-%d" % (_n[0], rnd[0] | (rnd[1] << 8) | (rnd[2] << 16))
    _rmtree(path)
    os.mkdir(path)
    return path


def _payload(seq):
    # encodes its own seq so a record returned under another seq is caught
    return b'{"seq":%d,"v":"%s"}' % (seq, b"x" * (seq % 23))


def _all(s):
    return [(seq, bytes(mv)) for seq, ts, mv in s.records()]


def _segfiles(root):
    return sorted(n for n in os.listdir(root) if n.endswith(".seg"))


def _readfile(path):
    with open(path, "rb") as f:
        return f.read()


def _writefile(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_append_peek_ack_in_order():
    root = _tmpdir()
    s = Spool(root)
    seqs = [s.append(_payload(i + 1), 1700000000 + i) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert s.depth == 5
    got = s.peek(3)
    assert [r[0] for r in got] == [1, 2, 3]
    assert got[0][1] == 1700000000 and got[0][2] == _payload(1)
    assert s.ack(1) and s.ack(2)
    assert s.depth == 3 and s.floor == 2
    assert [r[0] for r in s.peek(10)] == [3, 4, 5]
    assert not s.ack(2)  # repeated
    assert not s.ack(99)  # never appended
    for q in (3, 4, 5):
        assert s.ack(q)
    assert s.depth == 0 and s.peek(5) == []
    s.close()
    _rmtree(root)


def test_out_of_order_acks_hold_floor():
    root = _tmpdir()
    s = Spool(root)
    for i in range(10):
        s.append(_payload(i + 1), i)
    for q in (3, 2, 5):
        assert s.ack(q)
    assert s.floor == 0 and s.depth == 7
    assert [r[0] for r in s.peek(10)] == [1, 4, 6, 7, 8, 9, 10]
    assert s.ack(1)
    assert s.floor == 3
    assert s.ack(4)
    assert s.floor == 5
    assert s.stats()["pending_acks"] == 0
    assert [r[0] for r in s.peek(2, after=6)] == [7, 8]
    s.close()
    _rmtree(root)


def test_replay_in_batches_with_after():
    root = _tmpdir()
    s = Spool(root, max_bytes=65536, segments=4)
    for i in range(200):
        s.append(_payload(i + 1), i)
    last = 0
    seen = []
    while True:
        batch = s.peek(7, after=last)
        if not batch:
            break
        for seq, ts, data in batch:
            assert data == _payload(seq)
            seen.append(seq)
        last = batch[-1][0]
        s.ack(batch[0][0])  # some acks while replaying
    assert seen == list(range(1, 201))
    s.close()
    _rmtree(root)


def test_reopen_keeps_state_and_seq():
    root = _tmpdir()
    s = Spool(root, max_bytes=4096, segments=4)
    for i in range(60):
        s.append(_payload(i + 1), i)
    for q in range(1, 31):
        s.ack(q)
    s.ack(40)
    s.close()
    s = Spool(root, max_bytes=4096, segments=4)
    got = _all(s)
    # 40 was acked above the floor; it may come back (a duplicate), nothing below 31 may
    assert [q for q, _ in got if q != 40] == list(range(31, 40)) + list(range(41, 61))
    for q, data in got:
        assert data == _payload(q)
    assert s.floor == 30
    assert s.append(b"later", 0) > 60
    s.close()
    _rmtree(root)


def test_acked_segments_are_deleted():
    root = _tmpdir()
    s = Spool(root, max_bytes=2048, segments=4)
    for i in range(40):
        s.append(_payload(i + 1), i)
    assert len(_segfiles(root)) >= 3
    for q in range(1, 41):
        s.ack(q)
    assert s.depth == 0
    assert len(_segfiles(root)) == 1  # only the active one stays
    s.close()
    s = Spool(root, max_bytes=2048, segments=4)
    assert s.depth == 0 and s.peek(1) == []
    s.close()
    _rmtree(root)


def test_full_spool_drops_oldest_and_counts():
    root = _tmpdir()
    s = Spool(root, max_bytes=2048, segments=4)
    n = 300
    for i in range(n):
        s.append(_payload(i + 1), i)
        assert s.used_bytes() <= 2048
    st = s.stats()
    assert st["dropped"] > 0
    assert st["depth"] + st["dropped"] == n
    got = _all(s)
    assert len(got) == st["depth"]
    # what is left is the newest, contiguous, intact
    assert [q for q, _ in got] == list(range(n - len(got) + 1, n + 1))
    for q, data in got:
        assert data == _payload(q)
    dropped = s.dropped
    s.close()
    size = 0
    for name in _segfiles(root):
        size += os.stat(root + "/" + name)[6]
    assert size <= 2048
    s = Spool(root, max_bytes=2048, segments=4)
    assert s.dropped == dropped
    assert s.depth == len(got)
    s.close()
    _rmtree(root)


def test_drop_counts_only_unacked():
    root = _tmpdir()
    s = Spool(root, max_bytes=2048, segments=4)
    for i in range(20):
        s.append(_payload(i + 1), i)
    s.ack(2)
    s.ack(3)  # acked above the floor, in the oldest segment
    for i in range(20, 300):
        s.append(_payload(i + 1), i)
    st = s.stats()
    assert st["depth"] + st["dropped"] == 298
    assert st["pending_acks"] == 0
    s.close()
    _rmtree(root)


def _fill(root, n):
    s = Spool(root, max_bytes=65536, segments=4)
    for i in range(n):
        s.append(_payload(i + 1), 1000 + i)
    s.close()
    names = _segfiles(root)
    assert len(names) == 1
    return root + "/" + names[0]


def test_torn_last_record_every_offset():
    src = _tmpdir()
    seg = _fill(src, 5)
    data = _readfile(seg)
    state = _readfile(src + "/state")
    last_len = HDR + len(_payload(5))
    start = len(data) - last_len
    root = _tmpdir()
    name = seg[seg.rindex("/") + 1:]
    for cut in range(start, len(data) + 1):
        for n in os.listdir(root):
            os.remove(root + "/" + n)
        _writefile(root + "/" + name, data[:cut])
        _writefile(root + "/state", state)
        s = Spool(root, max_bytes=65536, segments=4)
        got = _all(s)
        want = 5 if cut == len(data) else 4
        assert [q for q, _ in got] == list(range(1, want + 1)), cut
        for q, payload in got:
            assert payload == _payload(q)
        assert s.torn == (0 if cut in (start, len(data)) else 1), cut
        q = s.append(b"after", 7)
        assert q > 5  # never reuses the torn record's seq
        assert [r[0] for r in s.peek(10)][-1] == q
        s.close()
        s = Spool(root, max_bytes=65536, segments=4)
        assert [r[0] for r in s.peek(10)] == list(range(1, want + 1)) + [q]
        s.close()
    _rmtree(root)
    _rmtree(src)


def test_bit_flip_is_skipped_and_counted():
    src = _tmpdir()
    seg = _fill(src, 6)
    data = _readfile(seg)
    off3 = SEGHDR + (HDR + len(_payload(1))) + (HDR + len(_payload(2)))
    # one flip in the payload, one in the seq, one in the length field
    for pos in (off3 + HDR + 3, off3 + 5, off3 + 2):
        bad = bytearray(data)
        bad[pos] ^= 0x10
        _writefile(seg, bad)
        s = Spool(src, max_bytes=65536, segments=4)
        got = _all(s)
        assert [q for q, _ in got] == [1, 2, 4, 5, 6], pos
        for q, payload in got:
            assert payload == _payload(q)
        assert s.corrupt == 1 and s.stats()["corrupt"] == 1
        # leave it closed without rewriting the segment
        s._close_files()
    _rmtree(src)


def test_seq_never_repeats_after_reopen():
    root = _tmpdir()
    s = Spool(root, reserve=8)
    for i in range(5):
        s.append(_payload(i + 1), i)
    for q in range(1, 6):
        s.ack(q)
    s.close()
    seen = set(range(1, 6))
    top = 5
    for _ in range(4):
        s = Spool(root, reserve=8)
        for i in range(3):
            q = s.append(b"r", 0)
            assert q not in seen and q > top
            seen.add(q)
            top = q
        s._close_files()  # a crash: no close(), no final state write
    # state gone too: the spool's own max seq still guards
    os.remove(root + "/state")
    s = Spool(root, reserve=8)
    q = s.append(b"r", 0)
    assert q > top or q not in seen
    s.close()
    _rmtree(root)


def test_leftover_temp_files_are_ignored():
    root = _tmpdir()
    s = Spool(root)
    s.append(b"one", 1)
    s._close_files()
    _writefile(root + "/seg.tmp", b"MGSP half written")
    _writefile(root + "/state.tmp", b"junk")
    s = Spool(root)
    assert [r[0] for r in s.peek(5)] == [1]
    assert "seg.tmp" not in os.listdir(root)
    s.close()
    _rmtree(root)


def test_record_size_limit():
    root = _tmpdir()
    s = Spool(root, max_bytes=4096, segments=4, max_record=1024)
    assert s.max_record == 4096 // 4 - HDR - SEGHDR
    raises(ValueError, s.append, b"x" * (s.max_record + 1), 0)
    assert s.append(b"x" * s.max_record, 0) == 1
    s.close()
    raises(ValueError, Spool, root, 4096, 1)
    _rmtree(root)


def test_crc_matches_zlib_vector():
    assert sp._crc32(b"123456789") & 0xFFFFFFFF == 0xCBF43926
    assert sp.crc32_sw(b"123456789") == 0xCBF43926
    data = bytes(range(256)) * 3
    assert sp.crc32_sw(data[100:], sp.crc32_sw(data[:100])) == sp._crc32(data) & 0xFFFFFFFF


def test_replay_budget_paces():
    b = ReplayBudget(per_live=2, per_second=0, burst=4)
    assert [b.take() for _ in range(5)] == [True, True, True, True, False]
    b.live()
    assert [b.take() for _ in range(3)] == [True, True, False]
    for _ in range(10):
        b.live()
    assert b.credit == 4  # capped at burst


def test_repeated_torn_tails_do_not_push_records_out():
    # each power cut mid-record leaves a short segment behind; with plenty of
    # bytes free none of the waiting records may be dropped for it
    root = _tmpdir()
    kept = []
    for i in range(12):
        s = Spool(root, max_bytes=8192, segments=4)
        kept.append(s.append(_payload(s.next_seq), i))
        seg = root + "/" + _segfiles(root)[-1]
        s._close_files()  # power cut...
        with open(seg, "ab") as f:
            f.write(b"\xd5\x6d\x30")  # ...while the next header was going out
    s = Spool(root, max_bytes=8192, segments=4)
    assert s.torn == 1 and s.dropped == 0
    got = _all(s)
    assert [q for q, _ in got] == kept
    for q, data in got:
        assert data == _payload(q)
    assert len(_segfiles(root)) == 1  # repaired in place, no segment per power cut
    s.close()
    _rmtree(root)
