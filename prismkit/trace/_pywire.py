"""Pure-Python twin of ``_wire.c`` (used when the C extension is not built).

Same interface and same output as the native ``Decoder``/``match_slices``/
``build_args``, about 30x slower. Keep the two in step: tests load the same
traces through both and compare the tables.
"""
from __future__ import annotations

import struct
from array import array

A_INT, A_UINT, A_DOUBLE, A_BOOL, A_STR, A_PTR, A_JSON, A_OBJ, A_NONE = range(9)
K_NAME, K_CAT, K_DANAME, K_DASTR = 1, 2, 3, 4
_U64 = (1 << 64) - 1


class _Bad(Exception):
    pass


def _s64(v: int) -> int:
    return v - (1 << 64) if v >= (1 << 63) else v


def _varint(buf, pos: int, end: int):
    result = 0
    shift = 0
    while pos < end:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & _U64, pos
        shift += 7
        if shift >= 70:
            raise _Bad("bad varint")
    return None, pos


def encode_varint(n: int) -> bytes:
    """A non-negative int as a protobuf varint (the writers' framing)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf, pos: int, end: int):
    """Yield (number, wire type, value) with value = int or (start, end) for LEN."""
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        if tag is None:
            raise _Bad("bad field tag")
        num, wt = tag >> 3, tag & 7
        if num == 0 or num > 0x1FFFFFFF:
            raise _Bad("field number out of range")
        if wt == 0:
            v, pos = _varint(buf, pos, end)
            if v is None:
                raise _Bad("bad varint")
            yield num, 0, v
        elif wt == 1:
            if end - pos < 8:
                raise _Bad("truncated fixed64")
            yield num, 1, int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wt == 5:
            if end - pos < 4:
                raise _Bad("truncated fixed32")
            yield num, 5, int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if n is None:
                raise _Bad("bad length")
            if n > end - pos:
                raise _Bad("length past the end of its message")
            yield num, 2, (pos, pos + n)
            pos += n
        else:
            raise _Bad("invalid wire type")


def _want(wt: int, expected: int) -> None:
    if wt != expected:
        raise _Bad("unexpected wire type for a known field")


def _repeated(buf, wt: int, v, fixed64: bool) -> list[int]:
    if wt == 2:
        a, b = v
        out = []
        if fixed64:
            if (b - a) % 8:
                raise _Bad("truncated packed fixed64")
            for i in range(a, b, 8):
                out.append(int.from_bytes(buf[i:i + 8], "little"))
        else:
            p = a
            while p < b:
                x, p = _varint(buf, p, b)
                if x is None:
                    raise _Bad("bad packed varint")
                out.append(x)
        return out
    if wt != (1 if fixed64 else 0):
        raise _Bad("unexpected wire type for a repeated field")
    return [v]


def _f64(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits & _U64))[0]


def _str(buf, a: int, b: int) -> str:
    return bytes(buf[a:b]).decode("utf-8", "replace")


class _Seq:
    __slots__ = ("seq_id", "valid", "intern", "has_defaults", "def_clock", "def_track", "def_extra", "def_extra_d",
                 "has_thread", "pid", "tid", "ref_us", "clocks")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.valid = False
        self.intern: dict = {}
        self.has_defaults = False
        self.def_clock = 0
        self.def_track = None
        self.def_extra: list = []
        self.def_extra_d: list = []
        self.has_thread = False
        self.pid = self.tid = 0
        self.ref_us = 0
        self.clocks: dict = {}   # id -> [incremental, last, mult]

    def clear(self) -> None:
        self.intern.clear()
        self.has_defaults = False
        self.def_clock = 0
        self.def_track = None
        self.def_extra = []
        self.def_extra_d = []
        self.valid = True


def synth_thread_uuid(pid: int, tid: int) -> int:
    return (1 << 63) | ((pid & 0x7FFFFFFF) << 32) | (tid & 0xFFFFFFFF)


def _i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


class Decoder:
    def __init__(self, decompress=None, size_hint: int = 0) -> None:
        self.decompress = decompress
        self.ev = {k: array(t) for k, t in (("ts", "q"), ("clk", "h"), ("track", "i"), ("name", "i"),
                                            ("cat", "i"), ("type", "b"))}
        self.ct = {k: array(t) for k, t in (("ts", "q"), ("clk", "h"), ("track", "i"), ("val", "d"), ("name", "i"))}
        self.cx = {k: array(t) for k, t in (("row", "i"), ("dur", "q"))}
        self.tracks: list[int] = []
        self._track_index: dict[int, int] = {}
        self.clock_keys: list[int] = []
        self.ar = {k: array(t) for k, t in (("ev", "i"), ("key", "i"), ("type", "b"), ("val", "q"))}
        self.fl = {k: array(t) for k, t in (("ev", "i"), ("id", "Q"), ("term", "b"))}
        self.strings: list[str] = []
        self._codes: dict[str, int] = {}
        self.objects: list = []
        self.descs: list = []
        self.clocks: list = []
        self.seqs: dict[int, _Seq] = {}
        self.gclock_mult: dict[int, int] = {}
        self.packets = self.skipped_no_state = self.unresolved_iids = self.unsupported_events = 0
        self._error = None
        self._depth = 0

    # -- strings -----------------------------------------------------------
    def _intern(self, s: str) -> int:
        c = self._codes.get(s)
        if c is None:
            c = self._codes[s] = len(self.strings)
            self.strings.append(s)
        return c

    def _istr(self, buf, a: int, b: int) -> int:
        return self._intern(_str(buf, a, b))

    @property
    def error(self):
        return self._error

    # -- framing -----------------------------------------------------------
    def feed(self, buf, base: int = 0) -> int:
        if self._error is not None:
            return 0
        buf = bytes(buf)
        try:
            return self._feed(buf, base, nested=False)
        except _BadAt as e:
            self._error = (base + e.consumed, e.msg)
            return e.consumed

    def _feed(self, buf: bytes, base: int, nested: bool) -> int:
        pos = 0
        n_all = len(buf)
        while pos < n_all:
            start = pos
            if buf[pos] != 0x0A:
                raise _BadAt(start, f"unexpected byte 0x{buf[pos]:02x} where a TracePacket should start")
            p = pos + 1
            try:
                n, p = _varint(buf, p, n_all)
            except _Bad:
                raise _BadAt(start, "bad TracePacket length") from None
            if n is None:
                break
            if n > (1 << 31):
                raise _BadAt(start, "bad TracePacket length")
            if n_all - p < n:
                break
            snap = self._snapshot()
            try:
                self._packet(buf, p, p + n)
            except _Bad as e:
                if nested:
                    raise
                self._rollback(snap)
                raise _BadAt(start, str(e)) from None
            except _BadAt as e:
                if nested:
                    raise _Bad(e.msg) from None
                self._rollback(snap)
                raise _BadAt(start, e.msg) from None
            pos = p + n
        return pos

    def _snapshot(self):
        return ({k: len(v) for k, v in self.ev.items()}, {k: len(v) for k, v in self.ct.items()},
                {k: len(v) for k, v in self.ar.items()}, {k: len(v) for k, v in self.fl.items()},
                {k: len(v) for k, v in self.cx.items()},
                len(self.objects), len(self.descs), len(self.clocks))

    def _rollback(self, snap) -> None:
        for cols, lens in zip((self.ev, self.ct, self.ar, self.fl, self.cx), snap[:5]):
            for k, n in lens.items():
                del cols[k][n:]
        del self.objects[snap[5]:]
        del self.descs[snap[6]:]
        del self.clocks[snap[7]:]

    def _track(self, uuid: int) -> int:
        i = self._track_index.get(uuid)
        if i is None:
            i = self._track_index[uuid] = len(self.tracks)
            self.tracks.append(uuid)
        return i

    def _clock(self, key: int) -> int:
        try:
            return self.clock_keys.index(key)
        except ValueError:
            if len(self.clock_keys) == 4096:
                raise _Bad("more than 4096 distinct clocks") from None
            self.clock_keys.append(key)
            return len(self.clock_keys) - 1

    # -- packets -----------------------------------------------------------
    def _seq(self, seq_id: int) -> _Seq:
        s = self.seqs.get(seq_id)
        if s is None:
            s = self.seqs[seq_id] = _Seq(seq_id)
        return s

    def _packet(self, buf: bytes, p: int, end: int) -> None:
        has_ts = False
        ts = 0
        clk = None
        seq = 0
        flags = 0
        cleared = dropped = False
        spans: dict[int, tuple] = {}
        for num, wt, v in _fields(buf, p, end):
            if num == 8:
                _want(wt, 0); has_ts = True; ts = v
            elif num == 58:
                _want(wt, 0); clk = v & 0xFFFFFFFF
            elif num == 10:
                _want(wt, 0); seq = v & 0xFFFFFFFF
            elif num == 13:
                _want(wt, 0); flags = v
            elif num == 41:
                _want(wt, 0); cleared = v != 0
            elif num == 42:
                _want(wt, 0); dropped = v != 0
            elif num in (11, 12, 59, 6, 60, 44, 43, 50):
                _want(wt, 2); spans[num] = v
        self.packets += 1
        s = self._seq(seq)
        if flags & 1 or cleared:
            s.clear()
        elif dropped:
            s.valid = False
        if 59 in spans:
            self._defaults(buf, s, *spans[59])
        if 12 in spans:
            self._interned(buf, s, *spans[12])
        if 6 in spans:
            self._clock_snapshot(buf, s, *spans[6])
        if 44 in spans:
            a, b = spans[44]
            self._thread_desc(buf, s, a, b)
            self.descs.append((3, seq, bytes(buf[a:b]), len(self.ev["ts"])))
        if 43 in spans:
            a, b = spans[43]
            self.descs.append((2, seq, bytes(buf[a:b]), len(self.ev["ts"])))
        if 60 in spans:
            a, b = spans[60]
            self.descs.append((1, seq, bytes(buf[a:b]), len(self.ev["ts"])))
        if 50 in spans:
            if self.decompress is None or self._depth > 4:
                return
            a, b = spans[50]
            try:
                out = self.decompress(bytes(buf[a:b]))
            except Exception:
                raise _Bad("compressed_packets could not be inflated") from None
            self._depth += 1
            try:
                consumed = self._feed(bytes(out), -1, nested=True)
            finally:
                self._depth -= 1
            if consumed != len(out):
                raise _Bad("truncated packet inside compressed_packets")
            return
        if 11 in spans:
            if flags & 2 and not s.valid:
                self.skipped_no_state += 1
                return
            key = 0
            t = 0
            c = clk if clk is not None else (s.def_clock if s.has_defaults else 0)
            if has_ts:
                t, key = self._resolve_ts(s, c, ts)
            self._track_event(buf, s, *spans[11], has_ts, t, key)

    def _resolve_ts(self, s: _Seq, clock: int, raw: int):
        if clock == 0:
            return _s64(raw), 0
        if 64 <= clock < 128:
            key = (1 << 40) | (s.seq_id << 8) | clock
            v = _s64(raw)
            ci = s.clocks.get(clock)
            if ci is not None:
                if ci[0]:
                    v = ci[1] + v
                    ci[1] = v
                if ci[2] > 1:
                    v *= ci[2]
            return v, key
        m = self.gclock_mult.get(clock, 1)
        return _s64(raw) * m if m > 1 else _s64(raw), clock

    def _defaults(self, buf, s: _Seq, a: int, b: int) -> None:
        s.has_defaults = True
        s.def_clock = 0
        s.def_track = None
        s.def_extra = []
        s.def_extra_d = []
        for num, wt, v in _fields(buf, a, b):
            if num == 58:
                _want(wt, 0); s.def_clock = v & 0xFFFFFFFF
            elif num == 11:
                _want(wt, 2)
                for n2, w2, v2 in _fields(buf, *v):
                    if n2 == 11:
                        if w2 != 0:
                            raise _Bad("bad track_event_defaults")
                        s.def_track = v2
                    elif n2 == 31:
                        s.def_extra += _repeated(buf, w2, v2, False)
                    elif n2 == 45:
                        s.def_extra_d += _repeated(buf, w2, v2, False)

    def _interned(self, buf, s: _Seq, a: int, b: int) -> None:
        kinds = {1: K_CAT, 2: K_NAME, 3: K_DANAME, 29: K_DASTR}
        for num, wt, v in _fields(buf, a, b):
            kind = kinds.get(num)
            if kind is None:
                continue
            _want(wt, 2)
            iid = 0
            sp = None
            for n2, w2, v2 in _fields(buf, *v):
                if n2 == 1 and w2 == 0:
                    iid = v2
                elif n2 == 2 and w2 == 2:
                    sp = v2
            code = self._istr(buf, *sp) if sp else self._intern("")
            s.intern[(kind, iid & ((1 << 58) - 1))] = code

    def _clock_snapshot(self, buf, s: _Seq, a: int, b: int) -> None:
        primary = -1
        lst = []
        for num, wt, v in _fields(buf, a, b):
            if num == 2 and wt == 0:
                primary = v
            elif num == 1 and wt == 2:
                cid = ts = 0
                mult = 1
                incr = False
                for n2, w2, v2 in _fields(buf, *v):
                    if n2 == 1:
                        cid = v2
                    elif n2 == 2:
                        ts = v2
                    elif n2 == 3:
                        incr = v2 != 0
                    elif n2 == 4:
                        mult = v2 or 1
                if 64 <= cid < 128:
                    s.clocks[cid] = [incr, _s64(ts), mult]
                    key = (1 << 40) | (s.seq_id << 8) | cid
                else:
                    key = cid
                    if mult > 1:
                        self.gclock_mult[cid] = mult
                lst.append((key, _s64(ts) * mult))
        self.clocks.append((s.seq_id, primary, lst))

    def _thread_desc(self, buf, s: _Seq, a: int, b: int) -> None:
        for num, wt, v in _fields(buf, a, b):
            if num == 1 and wt == 0:
                s.pid = v
            elif num == 2 and wt == 0:
                s.tid = v
            elif num == 6 and wt == 0:
                s.ref_us = _s64(v)
        s.pid = _i32(s.pid)
        s.tid = _i32(s.tid)
        s.has_thread = True

    # -- track events --------------------------------------------------------
    def _track_event(self, buf, s: _Seq, a: int, b: int, has_ts: bool, ts: int, clk: int) -> None:
        type_ = None
        track = None
        name = -1
        cats: list[int] = []
        cval = None
        dur = -1
        legacy = False
        phase = 0
        legacy_name = -1
        x_uuid: list = []
        x_ival: list = []
        xd_uuid: list = []
        xd_val: list = []
        abs_us = delta_us = None
        later = []
        for num, wt, v in _fields(buf, a, b):
            if num == 9:
                _want(wt, 0); type_ = v
            elif num == 10:
                _want(wt, 0)
                c = s.intern.get((K_NAME, v & ((1 << 58) - 1)))
                if c is None:
                    self.unresolved_iids += 1
                else:
                    name = c
            elif num == 23:
                _want(wt, 2); name = self._istr(buf, *v)
            elif num == 11:
                _want(wt, 0); track = v
            elif num == 3:
                if wt not in (0, 2):
                    raise _Bad("unexpected wire type for category_iids")
                for iid in _repeated(buf, wt, v, False):
                    c = s.intern.get((K_CAT, iid & ((1 << 58) - 1)))
                    if c is None:
                        self.unresolved_iids += 1
                    elif len(cats) < 8:
                        cats.append(c)
            elif num == 22:
                _want(wt, 2)
                c = self._istr(buf, *v)
                if len(cats) < 8:
                    cats.append(c)
            elif num == 30:
                _want(wt, 0); cval = float(_s64(v))
            elif num == 44:
                _want(wt, 1); cval = _f64(v)
            elif num == 31:
                x_uuid += _repeated(buf, wt, v, False)
            elif num == 12:
                x_ival += [_s64(x) for x in _repeated(buf, wt, v, False)]
            elif num == 45:
                xd_uuid += _repeated(buf, wt, v, False)
            elif num == 46:
                xd_val += [_f64(x) for x in _repeated(buf, wt, v, True)]
            elif num == 16:
                _want(wt, 0); abs_us = _s64(v)
            elif num == 1:
                _want(wt, 0); delta_us = _s64(v)
            elif num == 6:
                _want(wt, 2)
                legacy = True
                for n2, w2, v2 in _fields(buf, *v):
                    if n2 == 1 and w2 == 0:
                        c = s.intern.get((K_NAME, v2 & ((1 << 58) - 1)))
                        if c is None:
                            self.unresolved_iids += 1
                        else:
                            legacy_name = c
                    elif n2 == 2 and w2 == 0:
                        phase = v2
                    elif n2 == 3 and w2 == 0:
                        dur = _s64(v2) * 1000
            elif num in (4, 36, 47, 42, 48):
                if num == 4 and wt != 2:
                    raise _Bad("unexpected wire type for debug_annotations")
                later.append((num, wt, v))
        if name < 0 and legacy_name >= 0:
            name = legacy_name
        if not has_ts:
            if abs_us is not None:
                ts, clk = abs_us * 1000, 0
            elif delta_us is not None:
                s.ref_us += delta_us
                ts, clk = s.ref_us * 1000, 0
        etype = -1
        is_counter = type_ == 4
        if type_ in (1, 2, 3):
            etype = type_
        elif (type_ is None or type_ == 0) and legacy:
            ph = chr(phase) if 0 < phase < 0x110000 else ""
            if ph == "B":
                etype = 1
            elif ph == "E":
                etype = 2
            elif ph in ("I", "i", "n", "R"):
                etype = 3
            elif ph == "X":
                etype = 4
                if dur < 0:
                    dur = 0
        if etype != 4:
            dur = -1
        if track is None:
            if s.has_defaults and s.def_track is not None:
                track = s.def_track
            elif s.has_thread:
                track = synth_thread_uuid(s.pid, s.tid)
            else:
                track = 0
        cat = -1
        if len(cats) == 1:
            cat = cats[0]
        elif len(cats) > 1:
            cat = self._intern(",".join(self.strings[c] for c in cats))
        row = -1
        ct = self.ct
        ci = self._clock(clk)
        ti = self._track(track)
        if is_counter:
            if cval is not None:
                ct["ts"].append(ts); ct["clk"].append(ci); ct["track"].append(ti)
                ct["val"].append(cval); ct["name"].append(name)
        elif etype >= 1:
            ev = self.ev
            row = len(ev["ts"])
            ev["ts"].append(ts); ev["clk"].append(ci); ev["type"].append(etype); ev["track"].append(ti)
            ev["name"].append(name); ev["cat"].append(cat)
            if etype == 4:
                self.cx["row"].append(row); self.cx["dur"].append(dur)
        else:
            self.unsupported_events += 1
        uu = x_uuid if x_uuid else (s.def_extra if s.has_defaults else [])
        for u, val in zip(uu, x_ival):
            ct["ts"].append(ts); ct["clk"].append(ci); ct["track"].append(self._track(u)); ct["val"].append(float(val))
            ct["name"].append(-1)
        uu = xd_uuid if xd_uuid else (s.def_extra_d if s.has_defaults else [])
        for u, val in zip(uu, xd_val):
            ct["ts"].append(ts); ct["clk"].append(ci); ct["track"].append(self._track(u)); ct["val"].append(val)
            ct["name"].append(-1)
        if row < 0:
            return
        for num, wt, v in later:
            if num == 4:
                self._annotation(buf, s, *v, row)
            else:
                fixed = num in (47, 48)
                term = num in (42, 48)
                for fid in _repeated(buf, wt, v, fixed):
                    self.fl["ev"].append(row); self.fl["id"].append(fid); self.fl["term"].append(int(term))

    def _annotation(self, buf, s: _Seq, a: int, b: int, row: int) -> None:
        key = None
        named = False
        type_ = A_NONE
        val = 0
        nested = False
        for num, wt, v in _fields(buf, a, b):
            if num == 1:
                _want(wt, 0)
                named = True
                key = s.intern.get((K_DANAME, v & ((1 << 58) - 1)))
                if key is None:
                    self.unresolved_iids += 1
            elif num == 10:
                _want(wt, 2); named = True; key = self._istr(buf, *v)
            elif num == 2:
                _want(wt, 0); type_, val = A_BOOL, int(v != 0)
            elif num == 3:
                _want(wt, 0); type_, val = A_UINT, _s64(v)
            elif num == 4:
                _want(wt, 0); type_, val = A_INT, _s64(v)
            elif num == 5:
                _want(wt, 1); type_, val = A_DOUBLE, _s64(v)
            elif num == 7:
                _want(wt, 0); type_, val = A_PTR, _s64(v)
            elif num in (6, 9):
                _want(wt, 2); type_, val = (A_STR if num == 6 else A_JSON), self._istr(buf, *v)
            elif num == 17:
                _want(wt, 0)
                c = s.intern.get((K_DASTR, v & ((1 << 58) - 1)))
                if c is None:
                    self.unresolved_iids += 1
                    type_ = A_NONE
                else:
                    type_, val = A_STR, c
            elif num in (8, 11, 12):
                _want(wt, 2); nested = True
        if named and key is None:
            return
        if not named:
            key = self._intern("")
        if nested:
            _, obj = self._da_to_py(buf, s, a, b)
            type_, val = A_OBJ, len(self.objects)
            self.objects.append(obj)
        ar = self.ar
        ar["ev"].append(row); ar["key"].append(key); ar["type"].append(type_); ar["val"].append(val)

    def _da_to_py(self, buf, s: _Seq, a: int, b: int):
        key = -1
        v = None
        dct = None
        lst = None
        for num, wt, x in _fields(buf, a, b):
            def need(w):
                if wt != w:
                    raise _Bad("unexpected wire type in a debug annotation")
            if num == 1:
                need(0)
                c = s.intern.get((K_DANAME, x & ((1 << 58) - 1)))
                if c is None:
                    self.unresolved_iids += 1
                else:
                    key = c
            elif num == 10:
                need(2); key = self._istr(buf, *x)
            elif num == 2:
                need(0); v = x != 0
            elif num in (3, 7):
                need(0); v = x
            elif num == 4:
                need(0); v = _s64(x)
            elif num == 5:
                need(1); v = _f64(x)
            elif num in (6, 9):
                need(2); v = _str(buf, *x)
            elif num == 17:
                need(0)
                c = s.intern.get((K_DASTR, x & ((1 << 58) - 1)))
                if c is None:
                    self.unresolved_iids += 1
                    v = None
                else:
                    v = self.strings[c]
            elif num == 8:
                need(2); v = self._nested(buf, *x)
            elif num == 11:
                need(2)
                if dct is None:
                    dct = {}
                k, sub = self._da_to_py(buf, s, *x)
                dct[self.strings[k] if k >= 0 else ""] = sub
            elif num == 12:
                need(2)
                if lst is None:
                    lst = []
                lst.append(self._da_to_py(buf, s, *x)[1])
        if dct is not None:
            return key, dct
        if lst is not None:
            return key, lst
        return key, v

    def _nested(self, buf, a: int, b: int):
        ntype = 0
        keys, vals, arr = [], [], []
        scalar = None
        for num, wt, x in _fields(buf, a, b):
            if num == 1:
                ntype = x
            elif num == 2:
                keys.append(_str(buf, *x) if wt == 2 else "")
            elif num == 3 and wt == 2:
                vals.append(self._nested(buf, *x))
            elif num == 4 and wt == 2:
                arr.append(self._nested(buf, *x))
            elif num == 5:
                scalar = _s64(x)
            elif num == 6:
                scalar = _f64(x)
            elif num == 7:
                scalar = x != 0
            elif num == 8 and wt == 2:
                scalar = _str(buf, *x)
        if ntype == 1:
            return dict(zip(keys, vals))
        if ntype == 2:
            return arr
        return scalar

    # -- output --------------------------------------------------------------
    def finish(self) -> dict:
        out = {}
        for prefix, cols in (("ev", self.ev), ("ct", self.ct), ("ar", self.ar), ("fl", self.fl), ("cx", self.cx)):
            for k, v in cols.items():
                out[f"{prefix}_{k}"] = v
        out.update(tracks=array("Q", self.tracks), clock_keys=array("q", self.clock_keys), strings=self.strings, objects=self.objects, descs=self.descs, clocks=self.clocks,
                   packets=self.packets, skipped_no_state=self.skipped_no_state,
                   unresolved_iids=self.unresolved_iids, unsupported_events=self.unsupported_events)
        return out


class _BadAt(Exception):
    def __init__(self, consumed: int, msg: str) -> None:
        super().__init__(msg)
        self.consumed = consumed
        self.msg = msg


def match_slices(order, type_, track, ts, dur, sid, ns):
    """Pair BEGIN/END per track; same contract as _wire.match_slices (see reader.py)."""
    import numpy as np

    order = np.frombuffer(order, dtype=np.int32).tolist()
    type_ = np.frombuffer(type_, dtype=np.int8).tolist()
    track = np.frombuffer(track, dtype=np.int32).tolist()
    ts = np.frombuffer(ts, dtype=np.int64).tolist()
    dur = np.frombuffer(dur, dtype=np.int64).tolist()
    sid = np.frombuffer(sid, dtype=np.int32).tolist()
    n = len(order)
    se = [-1] * ns
    dep = [0] * ns
    par = [-1] * ns
    e2s = [-1] * n
    stack: list[list] = []   # [slice, end or None]
    cur = None
    unmatched = 0
    for i in order:
        if track[i] != cur:
            stack = []
            cur = track[i]
        t = ts[i]
        while stack and stack[-1][1] is not None and stack[-1][1] <= t:
            stack.pop()
        ty = type_[i]
        if ty == 2:
            j = len(stack) - 1
            while j >= 0 and stack[j][1] is not None:
                j -= 1
            if j < 0:
                unmatched += 1
                continue
            sl = stack[j][0]
            se[sl] = i
            e2s[i] = sl
            del stack[j:]
            continue
        sl = sid[i]
        dep[sl] = len(stack)
        par[sl] = stack[-1][0] if stack else -1
        e2s[i] = sl
        if ty == 1:
            stack.append([sl, None])
        elif ty == 4:
            d = dur[i] if i < len(dur) else 0
            stack.append([sl, t + max(d, 0)])
    return (array("i", se), array("i", dep), array("i", par), array("i", e2s), unmatched)


def group_order(codes, ncodes, pre):
    import numpy as np

    codes = np.frombuffer(codes, dtype=np.int32)
    if pre is None:
        return np.argsort(codes, kind="stable").astype(np.int32)
    pre = np.frombuffer(pre, dtype=np.int32)
    return pre[np.argsort(codes[pre], kind="stable")].astype(np.int32)


def _value(t: int, x: int, strings, objects):
    if t == A_INT:
        return x
    if t in (A_UINT, A_PTR):
        return x & _U64
    if t == A_DOUBLE:
        return _f64(x)
    if t == A_BOOL:
        return x != 0
    if t in (A_STR, A_JSON):
        return strings[x] if 0 <= x < len(strings) else None
    if t == A_OBJ:
        return objects[x] if 0 <= x < len(objects) else None
    return None


def build_args(begin_rows, end_rows, offsets, key, type_, val, strings, objects):
    import numpy as np

    brow = np.frombuffer(begin_rows, dtype=np.int32).tolist()
    erow = np.frombuffer(end_rows, dtype=np.int32).tolist()
    off = np.frombuffer(offsets, dtype=np.int32).tolist()
    key = np.frombuffer(key, dtype=np.int32).tolist()
    type_ = np.frombuffer(type_, dtype=np.int8).tolist()
    val = np.frombuffer(val, dtype=np.int64).tolist()
    nev = len(off) - 1
    out = []
    for b, e in zip(brow, erow):
        d = None
        for r in (b, e):
            if r < 0 or r >= nev:
                continue
            for j in range(off[r], off[r + 1]):
                k = key[j]
                if k < 0 or k >= len(strings):
                    continue
                if d is None:
                    d = {}
                d[strings[k]] = _value(type_[j], val[j], strings, objects)
        out.append(d)
    return out


def scan_packets(buf, pos: int = 0):
    """Twin of _wire.scan_packets: (array of int64 quadruples (start, end, ts, flags), end of the last
    complete packet); see prismkit/trace/tail.py."""
    rows = array("q")
    n = len(buf)
    pos = max(0, min(pos, n))
    while pos < n:
        try:
            tag, i = _varint(buf, pos, n)
            if tag is None:
                break
            if tag != 0x0A:
                raise _Bad("not a Trace.packet")
            length, i = _varint(buf, i, n)
            if length is None or length > n - i:
                break
            end = i + length
            ts, flags = -1, 0
            for num, wt, v in _fields(buf, i, end):
                if num == 8 and wt == 0:
                    ts = _s64(v)
                elif wt == 2 and num == 11:
                    flags |= 1
                elif wt == 2 and num == 12:
                    flags |= 2
        except _Bad as e:
            raise ValueError(f"{e} at byte {pos}") from None
        rows.extend((pos, end, ts, flags))
        pos = end
    return rows, pos
