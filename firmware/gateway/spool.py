# Store-and-forward spool: readings wait on flash until the broker has
# acknowledged them. Format, guarantees and sizing: docs/spool.md.
#
# Layout in one directory:
#   NNNNNN.seg  segments, oldest = lowest number. Each starts with an 8-byte
#               segment header, then records back to back.
#   state       floor (every seq <= floor is acked or gone), reserved seq
#               high-water, dropped count; replaced via state.tmp + rename.
# Record: magic D5 6D | payload length u16 | seq u64 | ts u32 | crc32 u32 |
# payload; little-endian; crc32 over the first 16 header bytes + payload.
# Only whole-file renames and appends followed by flush() are relied on: that
# is what littlefs commits atomically on the ESP32 (no fsync there).
import os
import struct

from gateway.compat import const, ticks_ms, ticks_diff, ticks_add

_NIB = (
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4,
    0x4DB26158, 0x5005713C, 0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C,
    0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C,
)


def crc32_sw(data, crc=0):
    """zlib's CRC-32, four bits at a time (16-entry table): for ports built
    without binascii.crc32."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        crc = (crc >> 4) ^ _NIB[crc & 15]
        crc = (crc >> 4) ^ _NIB[crc & 15]
    return crc ^ 0xFFFFFFFF


try:
    from binascii import crc32 as _crc32

    _crc32(b"")
except (ImportError, AttributeError):
    _crc32 = crc32_sw


M0 = const(0xD5)  # D5 6D never occurs in UTF-8 text, so JSON payloads cannot fake it
M1 = const(0x6D)
HDR = const(20)
SEGHDR = const(8)
SEG_MAGIC = b"MGSP\x01\x00\x00\x00"
STATE_MAGIC = b"MGST"
_STATE_LEN = const(28)
_CHUNK = const(128)


class Spool:
    """Records (seq, ts, payload bytes) on flash until ack(seq).

    root: directory (created if missing), e.g. hal.flash_path("spool").
    max_bytes: bound on all segment files together; split into `segments`
    files, the oldest of which is dropped when a new one is needed and there is
    no room. max_record: largest payload accepted. ack_every: ack progress is
    persisted after this many records leave (and whenever a segment goes).
    reserve: seqs reserved per state write, so a seq never repeats after a
    power cut even when every record carrying it has gone.
    """

    def __init__(self, root, max_bytes=262144, segments=8, max_record=1024, ack_every=32, reserve=256):
        if segments < 2:
            raise ValueError("segments must be >= 2")
        self.root = root.rstrip("/")
        self.max_bytes = max_bytes
        self.nseg = segments
        self.seg_bytes = max_bytes // segments
        if max_record + HDR + SEGHDR > self.seg_bytes:
            max_record = self.seg_bytes - HDR - SEGHDR
        if max_record < 1 or max_record > 65535:
            raise ValueError("max_bytes too small or max_record too large")
        self.max_record = max_record
        self.ack_every = ack_every
        self.reserve = reserve
        self._hdr = bytearray(HDR)  # read side
        self._hmv = memoryview(self._hdr)
        self._whdr = bytearray(HDR)  # write side: a drop during append reads records
        self._wmv = memoryview(self._whdr)
        self._pay = bytearray(max_record)
        self._pmv = memoryview(self._pay)
        self._scratch = bytearray(_CHUNK + 1)
        self._sbuf = bytearray(_STATE_LEN)
        self._state_path = self.root + "/state"
        self._state_tmp = self.root + "/state.tmp"
        # reader of the last record found by _read: seq, ts, payload length
        self._r_seq = 0
        self._r_ts = 0
        self._r_len = 0
        self._wf = None  # append handle of the active (last) segment
        self._rf = None  # cached read handle
        self._rf_num = -1
        self._rf_end = 0
        self._rf_pos = -1  # where the read handle stands: spares a seek per record
        self._segs = []  # [number, size] oldest first; size of the last is the write end
        self._acked = set()  # acked seqs above the floor (out-of-order QoS1 acks)
        self._since_save = 0
        self.corrupt = 0  # damaged regions skipped by the verify pass at open
        self.torn = 0  # torn tail found at open (the record being written at a power cut)
        self.appended = 0
        self.consumed = 0
        self._open()

    # -- public ------------------------------------------------------------
    @property
    def depth(self):
        """Records on flash not yet acknowledged."""
        d = self._above - len(self._acked)
        return d if d > 0 else 0

    @property
    def dropped(self):
        """Records lost because the spool was full (persisted, cumulative)."""
        return self._dropped

    @property
    def next_seq(self):
        return self._next

    @property
    def floor(self):
        return self._floor

    def append(self, payload, ts):
        """Commit one record to flash; returns its seq. When this returns the
        record survives a power cut."""
        n = len(payload)
        if n > self.max_record:
            raise ValueError("record too large")
        seq = self._next
        if seq > self._reserved:
            self._reserved = seq + self.reserve - 1
            self._save()
        h = self._whdr
        struct.pack_into("<BBHQI", h, 0, M0, M1, n, seq, int(ts) & 0xFFFFFFFF)
        crc = _crc32(payload, _crc32(self._wmv[:16])) & 0xFFFFFFFF
        struct.pack_into("<I", h, 16, crc)
        last = self._segs[-1] if self._segs else None
        if last is None or self._wf is None or last[1] + HDR + n > self.seg_bytes:
            self._rotate(payload)
        else:
            wf = self._wf
            wf.write(h)
            wf.write(payload)
            wf.flush()
            last[1] += HDR + n
        self._next = seq + 1
        self._above += 1
        self.appended += 1
        return seq

    def ack(self, seq):
        """The broker has the record seq. Returns False for unknown or repeated
        acks. Acks may arrive in any order."""
        if seq <= self._floor or seq >= self._next or seq in self._acked:
            return False
        self._acked.add(seq)
        if self._head_seq is None or seq == self._head_seq:
            self._advance()
        return True

    def records(self, after=0):
        """Oldest-first iterator of unacked records with seq > after, as
        (seq, ts, payload memoryview). The memoryview is reused: copy it (or
        publish it) before the next step."""
        if after > self._floor and after == self._hint_seq and self._seg_index(self._hint_num) >= 0:
            num, off = self._hint_num, self._hint_off
        else:
            num, off = self._head_num, self._head_off
        while True:
            pos = self._find(num, off)
            if pos is None:
                return
            num, off = pos
            off += HDR + self._r_len
            seq = self._r_seq
            if seq <= after or seq <= self._floor or seq in self._acked:
                continue
            self._hint_seq = seq
            self._hint_num = num
            self._hint_off = off
            yield seq, self._r_ts, self._pmv[: self._r_len]

    def peek(self, n=1, after=0):
        """Up to n oldest unacked records with seq > after: [(seq, ts, bytes)]."""
        out = []
        if n <= 0:
            return out
        for seq, ts, mv in self.records(after):
            out.append((seq, ts, bytes(mv)))
            if len(out) >= n:
                break
        return out

    def stats(self):
        return {
            "depth": self.depth,
            "dropped": self._dropped,
            "corrupt": self.corrupt,
            "torn": self.torn,
            "next_seq": self._next,
            "floor": self._floor,
            "pending_acks": len(self._acked),
            "segments": len(self._segs),
            "bytes": self.used_bytes(),
            "max_bytes": self.max_bytes,
            "appended": self.appended,
            "consumed": self.consumed,
        }

    def used_bytes(self):
        total = 0
        for s in self._segs:
            total += s[1]
        return total

    def flush(self):
        """Persist ack progress now (e.g. before a planned reboot)."""
        self._save()

    def close(self):
        self._save()
        self._close_files()

    # -- open / recovery -----------------------------------------------------
    def _open(self):
        try:
            os.mkdir(self.root)
        except OSError:
            pass
        self._floor, self._reserved, self._dropped = self._load()
        nums = []
        for name in os.listdir(self.root):
            if name.endswith(".tmp"):
                # never renamed: its record was the one being written
                os.remove(self.root + "/" + name)
            elif name.endswith(".seg") and len(name) == 10:
                try:
                    nums.append(int(name[:6]))
                except ValueError:
                    pass
        nums.sort()
        segs = self._segs
        for num in nums:
            segs.append([num, os.stat(self._seg_path(num))[6]])
        # Verify pass: count records above the floor, find the max seq and
        # whether the newest segment ends in a torn record.
        self._above = 0
        max_seq = 0
        head = None
        tail_ok = True
        for s in segs:
            num, size = s
            off = SEGHDR
            if not self._seg_ok(num):
                off = size
                if s is segs[-1]:
                    tail_ok = False
                else:
                    self.corrupt += 1
            valid_end = off
            while off < size:
                if self._read(num, off, size):
                    seq = self._r_seq
                    if seq > max_seq:
                        max_seq = seq
                    if seq > self._floor:
                        self._above += 1
                        if head is None:
                            head = (num, off)
                    off += HDR + self._r_len
                    valid_end = off
                    continue
                nxt = self._resync(num, off, size)
                if nxt >= size:
                    if s is segs[-1]:
                        self.torn += 1
                        if tail_ok:
                            self._repair(s, valid_end)
                    else:
                        self.corrupt += 1
                    break
                self.corrupt += 1
                off = nxt
        self._next = (max_seq if max_seq > self._reserved else self._reserved) + 1
        if head is None:
            if segs:
                head = (segs[-1][0], segs[-1][1])
            else:
                head = (0, SEGHDR)
        self._head_num, self._head_off = head
        self._head_seq = None
        self._head_len = 0
        self._hint_seq = -1
        self._hint_num = -1
        self._hint_off = 0
        if segs and tail_ok:
            self._wf = open(self._seg_path(segs[-1][0]), "ab")
        # Segments entirely at or below the floor were acked before the crash.
        self._advance()

    def _load(self):
        b = self._sbuf
        try:
            with open(self._state_path, "rb") as f:
                n = f.readinto(b)
        except OSError:
            return 0, 0, 0
        if n != _STATE_LEN or bytes(b[0:4]) != STATE_MAGIC:
            return 0, 0, 0
        if _crc32(memoryview(b)[: _STATE_LEN - 4]) & 0xFFFFFFFF != struct.unpack_from("<I", b, 24)[0]:
            return 0, 0, 0
        floor, reserved, dropped = struct.unpack_from("<QQI", b, 4)
        return floor, reserved, dropped

    def _save(self):
        b = self._sbuf
        b[0:4] = STATE_MAGIC
        struct.pack_into("<QQI", b, 4, self._floor, self._reserved, self._dropped)
        struct.pack_into("<I", b, 24, _crc32(memoryview(b)[: _STATE_LEN - 4]) & 0xFFFFFFFF)
        with open(self._state_tmp, "wb") as f:
            f.write(b)
        _replace(self._state_tmp, self._state_path)
        self._since_save = 0

    # -- segments ------------------------------------------------------------
    def _seg_path(self, num):
        return "%s/%06d.seg" % (self.root, num)

    def _seg_index(self, num):
        segs = self._segs
        for i in range(len(segs)):
            if segs[i][0] == num:
                return i
        return -1

    def _seg_ok(self, num):
        f = self._reader(num, SEGHDR)
        f.seek(0)
        self._rf_pos = -1
        mv = memoryview(self._scratch)[:SEGHDR]
        return f.readinto(mv) == SEGHDR and bytes(mv) == SEG_MAGIC

    def _repair(self, seg, end):
        """Cut the torn record off the newest segment so appends can go on in
        it: copy what is valid to a temporary file and rename it over. A power
        cut during the copy leaves the old file, and the next open repairs it."""
        num = seg[0]
        tmp = self.root + "/seg.tmp"
        buf = self._scratch
        src = self._reader(num, end)
        src.seek(0)
        self._rf_pos = -1
        with open(tmp, "wb") as dst:
            left = end
            while left > 0:
                got = src.readinto(buf)
                if not got:
                    break
                if got > left:
                    got = left
                dst.write(memoryview(buf)[:got])
                left -= got
        self._rf.close()
        self._rf = None
        self._rf_num = -1
        _replace(tmp, self._seg_path(num))
        seg[1] = end

    def _rotate(self, payload):
        """New segment holding the record in self._whdr + payload, made whole
        under a temporary name and then renamed: a segment never appears half
        written."""
        # Room by bytes, not by file count: segments cut short by a power cut
        # must not push readings out early. The count cap only bounds listdir.
        need = self.seg_bytes  # the new segment may grow to this
        while self._segs and (self.used_bytes() + need > self.max_bytes or len(self._segs) >= 2 * self.nseg):
            self._drop_oldest()
        num = self._segs[-1][0] + 1 if self._segs else 0
        if self._wf is not None:
            self._wf.close()
            self._wf = None
        tmp = self.root + "/seg.tmp"
        with open(tmp, "wb") as f:
            f.write(SEG_MAGIC)
            f.write(self._whdr)
            f.write(payload)
        path = self._seg_path(num)
        _replace(tmp, path)
        self._segs.append([num, SEGHDR + HDR + len(payload)])
        self._wf = open(path, "ab")

    def _drop_oldest(self):
        num, size = self._segs[0]
        above = acked = 0
        last = self._floor
        off = SEGHDR
        while off < size:
            if not self._read(num, off, size):
                off = self._resync(num, off, size)
                continue
            seq = self._r_seq
            if seq > self._floor:
                above += 1
                if seq in self._acked:
                    acked += 1
            if seq > last:
                last = seq
            off += HDR + self._r_len
        if last > self._floor:
            self._floor = last
        self._dropped += above - acked
        self._above -= above
        if acked:
            for seq in [s for s in self._acked if s <= last]:
                self._acked.discard(seq)
        self._save()  # count and floor first: a crash before the remove cannot lose the count
        self._forget(num)
        if self._head_num == num:
            self._head_num = self._segs[0][0] if self._segs else num + 1
            self._head_off = SEGHDR
            self._head_seq = None

    def _forget(self, num):
        if self._rf_num == num:
            self._rf.close()
            self._rf = None
            self._rf_num = -1
        os.remove(self._seg_path(num))
        i = self._seg_index(num)
        if i >= 0:
            self._segs.pop(i)

    # -- reading ---------------------------------------------------------------
    def _reader(self, num, end):
        # The active segment grows; reopen when asked past what the handle saw
        # (littlefs shows another handle's appends only to files opened later).
        if self._rf_num != num or end > self._rf_end:
            if self._rf is not None:
                self._rf.close()
                self._rf = None
            self._rf_num = -1
            self._rf = open(self._seg_path(num), "rb")
            self._rf_pos = 0
            self._rf_num = num
            i = self._seg_index(num)
            self._rf_end = self._segs[i][1] if i >= 0 else end
        return self._rf

    def _read(self, num, off, end):
        """True when a whole, valid record starts at off (before end); its
        fields land in _r_seq/_r_ts/_r_len and its payload in _pay."""
        if end - off < HDR:
            return False
        f = self._reader(num, end)
        if self._rf_pos != off:
            f.seek(off)
        self._rf_pos = -1
        h = self._hdr
        if f.readinto(self._hmv) != HDR or h[0] != M0 or h[1] != M1:
            return False
        n = h[2] | (h[3] << 8)
        if n > self.max_record or off + HDR + n > end:
            return False
        if n and f.readinto(self._pmv[:n]) != n:
            return False
        crc = _crc32(self._pmv[:n], _crc32(self._hmv[:16])) & 0xFFFFFFFF
        if crc != struct.unpack_from("<I", h, 16)[0]:
            return False
        self._rf_pos = off + HDR + n
        self._r_seq = struct.unpack_from("<Q", h, 4)[0]
        self._r_ts = struct.unpack_from("<I", h, 12)[0]
        self._r_len = n
        return True

    def _resync(self, num, off, end):
        """Offset of the next valid record after a damaged one at off, or end."""
        s = self._scratch
        pos = off + 1
        while pos < end - 1:
            f = self._reader(num, end)
            f.seek(pos)
            self._rf_pos = -1
            got = f.readinto(s)
            if not got:
                break
            i = 0
            while True:
                i = s.find(b"\xd5\x6d", i, got)
                if i < 0:
                    break
                if self._read(num, pos + i, end):
                    return pos + i
                i += 1
            if got < 2:
                break
            pos += got - 1  # overlap one byte: the magic may straddle chunks
        return end

    def _find(self, num, off):
        """(num, off) of the first valid record at or after (num, off), crossing
        into later segments; None at the end of the spool."""
        segs = self._segs
        i = self._seg_index(num)
        if i < 0:
            # that segment went away (dropped): continue with the next newer one
            i = 0
            while i < len(segs) and segs[i][0] < num:
                i += 1
            off = SEGHDR
        while i < len(segs):
            num, size = segs[i]
            if off < SEGHDR:
                off = SEGHDR
            while off < size:
                if self._read(num, off, size):
                    return num, off
                off = self._resync(num, off, size)
            i += 1
            off = SEGHDR
        return None

    def _advance(self):
        """Move the head past records at or below the floor or acked; delete
        segments the head has left; persist now and then."""
        while True:
            seq = self._head_seq
            if seq is not None:
                # the head record is known: consume it without reading it again
                if seq not in self._acked:
                    break
                self._acked.discard(seq)
                self._floor = seq
                self._above -= 1
                self.consumed += 1
                self._since_save += 1
                self._head_off += HDR + self._head_len
                self._head_seq = None
                continue
            pos = self._find(self._head_num, self._head_off)
            if pos is None:
                if self._segs:
                    self._head_num = self._segs[-1][0]
                    self._head_off = self._segs[-1][1]
                self._head_seq = None
                break
            num, off = pos
            seq = self._r_seq
            self._head_num = num
            self._head_off = off
            if seq > self._floor and seq not in self._acked:
                self._head_seq = seq
                self._head_len = self._r_len
                break
            if seq > self._floor:
                self._acked.discard(seq)
                self._floor = seq
                self._above -= 1
                self.consumed += 1
                self._since_save += 1
            self._head_off = off + HDR + self._r_len
        if self._segs and self._segs[0][0] < self._head_num:
            self._save()  # floor first, then remove: a crash between only replays
            while self._segs and self._segs[0][0] < self._head_num:
                self._forget(self._segs[0][0])
        if self._since_save >= self.ack_every:
            self._save()

    def _close_files(self):
        if self._wf is not None:
            self._wf.close()
            self._wf = None
        if self._rf is not None:
            self._rf.close()
            self._rf = None
            self._rf_num = -1


def _replace(src, dst):
    try:
        os.rename(src, dst)
    except OSError:  # file systems whose rename will not overwrite
        try:
            os.remove(dst)
        except OSError:
            pass
        os.rename(src, dst)


class ReplayBudget:
    """Paces backlog replay so live readings keep flowing.

    Credits accrue per_live for every live record published (live()) and
    per_second with time; each replayed record spends one (take()). Credits are
    capped at burst, so a long quiet spell does not turn into a flood.
    """

    def __init__(self, per_live=4, per_second=20, burst=32):
        self.per_live = per_live
        self.per_second = per_second
        self.burst = burst
        self.credit = burst
        self._t = ticks_ms()

    def _refill(self):
        if not self.per_second:
            return
        step = 1000 // self.per_second or 1  # ms per credit
        n = ticks_diff(ticks_ms(), self._t) // step
        if n > 0:
            self._t = ticks_add(self._t, n * step)
            self.credit = min(self.burst, self.credit + n)

    def live(self):
        """A live record was published."""
        self.credit = min(self.burst, self.credit + self.per_live)

    def take(self):
        """True when one replayed record may be published now."""
        self._refill()
        if self.credit > 0:
            self.credit -= 1
            return True
        return False
