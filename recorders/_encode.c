/* Fast path of the trace writer: framed TracePackets with a TrackEvent, encoded by hand;
 * and RingReader, which reads a BPF ring buffer in bulk (the sched pack's records).
 *
 * recorders/trace_writer.py builds packets with the protobuf classes (about 3-4 us per
 * event packet in Python); on the recorder's hot path (one scheduler slice = two
 * packets, thousands per second) track_event() does the same in well under a microsecond,
 * and encode_sched_events() a whole drain of the sched pack's raw records, decoding included.
 * Interning stays in Python: the caller passes the iids, and the new (table, iid, name)
 * entries to emit in a packet's interned_data (encode_sched_events: none, its strings are
 * interned beforehand with TraceWriter.intern()).
 *
 * Field numbers (perfetto/protos/perfetto/trace/...):
 *   Trace.packet = 1
 *   TracePacket: timestamp 8, trusted_packet_sequence_id 10, track_event 11,
 *                interned_data 12, sequence_flags 13
 *   TrackEvent: category_iids 3, debug_annotations 4, type 9, name_iid 10, track_uuid 11,
 *               counter_value 30, double_counter_value 44, flow_ids 47 (fixed64),
 *               terminating_flow_ids 48 (fixed64)
 *   DebugAnnotation: name_iid 1, bool_value 2, int_value 4, double_value 5, string_value 6
 *   InternedData: event_categories 1, event_names 2, debug_annotation_names 3
 *   (EventCategory / EventName / DebugAnnotationName: iid 1, name 2)
 * tests/test_trace_writer.py checks every packet against the protobuf classes.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <linux/bpf.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
    uint8_t *p;
    size_t len, cap;
    uint8_t inline_buf[512];
} Buf;

static void buf_init(Buf *b) { b->p = b->inline_buf; b->len = 0; b->cap = sizeof(b->inline_buf); }
static void buf_free(Buf *b) { if (b->p != b->inline_buf) PyMem_Free(b->p); }

static int buf_grow(Buf *b, size_t extra) {
    size_t cap = b->cap * 2;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *n = PyMem_Malloc(cap);
    if (!n) { PyErr_NoMemory(); return -1; }
    memcpy(n, b->p, b->len);
    if (b->p != b->inline_buf) PyMem_Free(b->p);
    b->p = n;
    b->cap = cap;
    return 0;
}

static inline int buf_reserve(Buf *b, size_t extra) {
    return b->len + extra <= b->cap ? 0 : buf_grow(b, extra);
}

static int put_varint(Buf *b, uint64_t v) {
    if (buf_reserve(b, 10)) return -1;
    uint8_t *p = b->p + b->len, *start = p;  /* a local cursor: stores through uint8_t* may alias b */
    while (v >= 0x80) { *p++ = (uint8_t)(v | 0x80); v >>= 7; }
    *p++ = (uint8_t)v;
    b->len += (size_t)(p - start);
    return 0;
}

static int put_tag(Buf *b, uint32_t field, uint32_t wire) { return put_varint(b, ((uint64_t)field << 3) | wire); }

static int put_bytes(Buf *b, uint32_t field, const void *data, size_t n) {
    if (put_tag(b, field, 2) || put_varint(b, n) || buf_reserve(b, n)) return -1;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    return 0;
}

static int put_fixed64(Buf *b, uint32_t field, uint64_t v) {
    if (put_tag(b, field, 1) || buf_reserve(b, 8)) return -1;
    memcpy(b->p + b->len, &v, 8);  /* x86-64 and arm64 are little-endian, as the wire format */
    b->len += 8;
    return 0;
}

static int put_double(Buf *b, uint32_t field, double d) {
    uint64_t v;
    memcpy(&v, &d, 8);
    return put_fixed64(b, field, v);
}

static int put_uint_field(Buf *b, uint32_t field, uint64_t v) { return put_tag(b, field, 0) || put_varint(b, v); }

/* A Python int as the int64 varint protobuf writes (negative: ten bytes, two's complement). */
static int as_i64(PyObject *o, int64_t *out) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = (int64_t)v;
    return 0;
}

static int put_annotation(Buf *b, PyObject *item) {
    /* item: (name_iid, value) with value bool, int, float or str */
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
        PyErr_SetString(PyExc_TypeError, "annotation must be a (name_iid, value) tuple");
        return -1;
    }
    uint64_t iid = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 0));
    if (PyErr_Occurred()) return -1;
    PyObject *v = PyTuple_GET_ITEM(item, 1);
    Buf a;
    buf_init(&a);
    int rc = put_uint_field(&a, 1, iid);
    if (!rc) {
        if (PyBool_Check(v)) {
            rc = put_uint_field(&a, 2, v == Py_True);
        } else if (PyLong_Check(v)) {
            int64_t x;
            rc = as_i64(v, &x) || put_uint_field(&a, 4, (uint64_t)x);
        } else if (PyFloat_Check(v)) {
            rc = put_double(&a, 5, PyFloat_AS_DOUBLE(v));
        } else {
            PyObject *s = PyUnicode_Check(v) ? (Py_INCREF(v), v) : PyObject_Str(v);
            if (!s) rc = -1;
            else {
                Py_ssize_t n;
                const char *u = PyUnicode_AsUTF8AndSize(s, &n);
                rc = !u || put_bytes(&a, 6, u, (size_t)n);
                Py_DECREF(s);
            }
        }
    }
    if (!rc) rc = put_bytes(b, 4, a.p, a.len);
    buf_free(&a);
    return rc ? -1 : 0;
}

static int put_flows(Buf *b, uint32_t field, PyObject *seq) {
    if (seq == Py_None) return 0;
    PyObject *fast = PySequence_Fast(seq, "flow ids must be a sequence");
    if (!fast) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t v = PyLong_AsUnsignedLongLongMask(PySequence_Fast_GET_ITEM(fast, i));
        if (PyErr_Occurred() || put_fixed64(b, field, v)) { Py_DECREF(fast); return -1; }
    }
    Py_DECREF(fast);
    return 0;
}

static int put_interned(Buf *b, PyObject *seq) {
    /* seq: [(table_field, iid, name)], table_field 1 categories, 2 names, 3 annotation names.
     * Written table by table, as protobuf serializes InternedData (field order), so that the
     * bytes match the protobuf classes' whatever the order of the entries. */
    if (seq == Py_None || PySequence_Size(seq) == 0) return 0;
    PyObject *fast = PySequence_Fast(seq, "interned entries must be a sequence");
    if (!fast) return -1;
    Buf d;
    buf_init(&d);
    int rc = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    for (unsigned int want = 1; want <= 3 && !rc; want++) {
        for (Py_ssize_t i = 0; i < n && !rc; i++) {
            PyObject *t = PySequence_Fast_GET_ITEM(fast, i);
            unsigned int table;
            unsigned long long iid;
            const char *name;
            Py_ssize_t name_len;
            if (!PyArg_ParseTuple(t, "IKs#", &table, &iid, &name, &name_len)) { rc = -1; break; }
            if (table < 1 || table > 3) {
                PyErr_Format(PyExc_ValueError, "interned table must be 1, 2 or 3 (got %u)", table);
                rc = -1;
                break;
            }
            if (table != want) continue;
            Buf e;
            buf_init(&e);
            rc = put_uint_field(&e, 1, iid) || put_bytes(&e, 2, name, (size_t)name_len) ||
                 put_bytes(&d, table, e.p, e.len);
            buf_free(&e);
        }
    }
    if (!rc) rc = put_bytes(b, 12, d.p, d.len);
    buf_free(&d);
    Py_DECREF(fast);
    return rc ? -1 : 0;
}

/* track_event(ts, track_uuid, type, name_iid, category_iid, annotations, flow_ids,
 *             terminating_flow_ids, interned, sequence_id, sequence_flags, counter) -> bytes
 * name_iid / category_iid 0: none. counter: None, int or float. Returns the framed packet
 * (the Trace.packet tag and length included), ready to append to the file. */
static PyObject *track_event(PyObject *self, PyObject *args) {
    unsigned long long ts, track_uuid, name_iid, cat_iid;
    unsigned int type, seq_id, seq_flags;
    PyObject *anns, *flows, *term, *interned, *counter;
    if (!PyArg_ParseTuple(args, "KKIKKOOOOIIO", &ts, &track_uuid, &type, &name_iid, &cat_iid, &anns, &flows,
                          &term, &interned, &seq_id, &seq_flags, &counter))
        return NULL;
    Buf ev, pkt, out;
    buf_init(&ev);
    buf_init(&pkt);
    buf_init(&out);
    PyObject *result = NULL;
    /* TrackEvent, fields in protobuf's serialization order (ascending field numbers) */
    if (cat_iid && put_uint_field(&ev, 3, cat_iid)) goto done;
    if (anns != Py_None) {
        PyObject *fast = PySequence_Fast(anns, "annotations must be a sequence");
        if (!fast) goto done;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
        for (Py_ssize_t i = 0; i < n; i++)
            if (put_annotation(&ev, PySequence_Fast_GET_ITEM(fast, i))) { Py_DECREF(fast); goto done; }
        Py_DECREF(fast);
    }
    if (put_uint_field(&ev, 9, type)) goto done;
    if (name_iid && put_uint_field(&ev, 10, name_iid)) goto done;
    if (put_uint_field(&ev, 11, track_uuid)) goto done;
    if (counter != Py_None) {
        if (PyLong_Check(counter)) {
            int64_t x;
            if (as_i64(counter, &x) || put_uint_field(&ev, 30, (uint64_t)x)) goto done;
        } else {
            double d = PyFloat_AsDouble(counter);
            if (PyErr_Occurred() || put_double(&ev, 44, d)) goto done;
        }
    }
    if (put_flows(&ev, 47, flows) || put_flows(&ev, 48, term)) goto done;
    /* TracePacket */
    if (put_uint_field(&pkt, 8, ts)) goto done;
    if (put_uint_field(&pkt, 10, seq_id)) goto done;
    if (put_bytes(&pkt, 11, ev.p, ev.len)) goto done;
    if (put_interned(&pkt, interned)) goto done;
    if (seq_flags && put_uint_field(&pkt, 13, seq_flags)) goto done;
    if (put_bytes(&out, 1, pkt.p, pkt.len)) goto done;
    result = PyBytes_FromStringAndSize((const char *)out.p, (Py_ssize_t)out.len);
done:
    buf_free(&ev);
    buf_free(&pkt);
    buf_free(&out);
    return result;
}

static size_t varint_len(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) { v >>= 7; n++; }
    return n;
}

/* ---- encode_sched_events: a drain of the sched pack, in one call --------------------------
 *
 * raw: struct sched_event records (recorders/packs/sched/sched.bpf.c) back to back, as
 * RingReader.drain_fixed(56) returns them. Each record becomes the BEGIN and END packets
 * that this TraceWriter.slice() call writes once its strings are interned:
 *
 *   slice(tracks[tid], ts_off, ts_on - ts_off, REASON_NAMES[reason] or "off_cpu", "sched",
 *         {"by_pid": by_pid, "by_comm": _comm(by_comm), "runq_wait_ns": runq_ns, "cpu": cpu})
 *
 * by_comm as the pack's _comm() decodes it: the bytes before the first NUL, as UTF-8 with
 * invalid bytes replaced (by Python's own decoder, for a comm that is not ASCII). */

typedef struct {
    uint64_t ts_off, ts_on, runq_ns;
    uint32_t tid, by_pid, cpu, reason;
    char by_comm[16];
} SchedEvent;

typedef char sched_event_is_56_bytes[sizeof(SchedEvent) == 56 ? 1 : -1];

/* A drain holds a few distinct threads: their tracks are looked up in the dict once per call. */
#define SCHED_TRACK_CACHE 16

typedef struct {
    PyObject *tracks;               /* dict: tid -> track uuid */
    PyObject *missing;              /* list of the tids not in it, or NULL while none */
    int n;
    struct { uint32_t tid; uint64_t uuid; } entry[SCHED_TRACK_CACHE];  /* uuid 0: not in tracks */
} SchedTracks;

/* The track uuid of tid (0 if it has none yet: tid is then appended to tracks->missing). */
static int sched_track(SchedTracks *t, uint32_t tid, uint64_t *uuid) {
    for (int k = 0; k < t->n; k++)
        if (t->entry[k].tid == tid) { *uuid = t->entry[k].uuid; return 0; }
    PyObject *key = PyLong_FromUnsignedLong(tid);
    if (!key) return -1;
    PyObject *value = PyDict_GetItemWithError(t->tracks, key);  /* borrowed */
    int rc = 0;
    *uuid = 0;
    if (value) {
        *uuid = PyLong_AsUnsignedLongLong(value);
        if (PyErr_Occurred()) rc = -1;
        else if (*uuid == 0) { PyErr_Format(PyExc_ValueError, "track uuid 0 for tid %u", tid); rc = -1; }
    } else if (PyErr_Occurred()) {
        rc = -1;
    } else {  /* a thread without a track: listed once (the cache may be full) */
        if (!t->missing) t->missing = PyList_New(0);
        int listed = t->missing ? PySequence_Contains(t->missing, key) : -1;
        rc = listed < 0 || (!listed && PyList_Append(t->missing, key)) ? -1 : 0;
    }
    Py_DECREF(key);
    if (!rc && t->n < SCHED_TRACK_CACHE) {
        t->entry[t->n].tid = tid;
        t->entry[t->n].uuid = *uuid;
        t->n++;
    }
    return rc;
}

/* Writers through a cursor, for encode_sched_events: the caller has reserved the room.
 * (A cursor in a register, not Buf.len in memory: 2-3x faster.) Field numbers < 16. */
static inline uint8_t *wr_varint(uint8_t *p, uint64_t v) {
    while (v >= 0x80) { *p++ = (uint8_t)(v | 0x80); v >>= 7; }
    *p++ = (uint8_t)v;
    return p;
}

static inline uint8_t *wr_uint(uint8_t *p, unsigned int field, uint64_t v) {
    *p++ = (uint8_t)(field << 3);
    return wr_varint(p, v);
}

static inline uint8_t *wr_bytes(uint8_t *p, unsigned int field, const void *data, size_t n) {
    *p++ = (uint8_t)(field << 3 | 2);
    p = wr_varint(p, n);
    memcpy(p, data, n);
    return p + n;
}

/* TrackEvent.debug_annotations {name_iid, int_value}: at most 24 bytes */
static inline uint8_t *wr_int_annotation(uint8_t *p, uint64_t name_iid, uint64_t v) {
    *p++ = 4 << 3 | 2;
    p = wr_varint(p, 1 + varint_len(name_iid) + 1 + varint_len(v));
    return wr_uint(wr_uint(p, 1, name_iid), 4, v);
}

/* TrackEvent.debug_annotations {name_iid, string_value}: at most 15 + n bytes (n < 128) */
static inline uint8_t *wr_str_annotation(uint8_t *p, uint64_t name_iid, const char *s, size_t n) {
    *p++ = 4 << 3 | 2;
    p = wr_varint(p, 1 + varint_len(name_iid) + 1 + varint_len(n) + n);
    return wr_bytes(wr_uint(p, 1, name_iid), 6, s, n);
}

/* A framed TracePacket {timestamp, sequence id, track_event (n bytes), flags}: at most 40 + n bytes */
static inline uint8_t *wr_event_packet(uint8_t *p, uint64_t ts, unsigned int seq_id, const uint8_t *ev, size_t n,
                                       unsigned int seq_flags) {
    *p++ = 1 << 3 | 2;
    p = wr_varint(p, 1 + varint_len(ts) + 1 + varint_len(seq_id) + 1 + varint_len(n) + n +
                         (seq_flags ? 1 + varint_len(seq_flags) : 0));
    p = wr_bytes(wr_uint(wr_uint(p, 8, ts), 10, seq_id), 11, ev, n);
    return seq_flags ? wr_uint(p, 13, seq_flags) : p;
}

/* by_comm: at most 48 bytes of UTF-8 (16 invalid bytes, each replaced by U+FFFD) */
static uint8_t *wr_comm_annotation(uint8_t *p, uint64_t name_iid, const char comm[16]) {
    const char *nul = memchr(comm, 0, 16);
    size_t n = nul ? (size_t)(nul - comm) : 16;
    int ascii = 1;
    for (size_t i = 0; i < n; i++) ascii &= (unsigned char)comm[i] < 0x80;
    if (ascii) return wr_str_annotation(p, name_iid, comm, n);
    PyObject *text = PyUnicode_DecodeUTF8(comm, (Py_ssize_t)n, "replace");
    if (!text) return NULL;
    Py_ssize_t len;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &len);
    if (utf8) p = wr_str_annotation(p, name_iid, utf8, (size_t)len);
    Py_DECREF(text);
    return utf8 ? p : NULL;
}

/* Bounds of one record's encoding: its BEGIN TrackEvent (category 11, annotations 24 + 63 +
 * 24 + 24, type 2, name 11, track 11) and both framed packets (END: at most 13 + 40 bytes). */
#define SCHED_EVENT_MAX 192
#define SCHED_RECORD_MAX (SCHED_EVENT_MAX + 40 + 13 + 40)

/* Count a record of this reason: in counts[] for 0-2 (those sched.bpf.c writes), others in by_reason. */
static int count_reason(Py_ssize_t counts[3], PyObject *by_reason, uint32_t reason) {
    if (reason < 3) { counts[reason]++; return 0; }
    PyObject *key = PyLong_FromUnsignedLong(reason);
    if (!key) return -1;
    PyObject *was = PyDict_GetItemWithError(by_reason, key);  /* borrowed */
    Py_ssize_t before = was ? PyLong_AsSsize_t(was) : 0;
    PyObject *now = PyErr_Occurred() ? NULL : PyLong_FromSsize_t(before + 1);
    int rc = !now || PyDict_SetItem(by_reason, key, now);
    Py_XDECREF(now);
    Py_DECREF(key);
    return rc ? -1 : 0;
}

/* encode_sched_events(raw, tracks, name_iids, category_iid, annotation_iids, sequence_id,
 *                     sequence_flags) -> (bytes, {reason: records}) | [tid]
 * name_iids: the iids of ("off_cpu", "preempted", "blocked"), by reason; annotation_iids: of
 * ("by_pid", "by_comm", "runq_wait_ns", "cpu"); tracks: tid -> track uuid. Returns the framed
 * packets of every record (two each) and the records counted by reason; or, when some tids
 * have no track in `tracks`, the list of those tids and nothing else (call again once they
 * have one). */
static PyObject *encode_sched_events(PyObject *self, PyObject *args) {
    Py_buffer raw;
    PyObject *tracks;
    unsigned long long names[3], cat_iid, ann[4];
    unsigned int seq_id, seq_flags;
    if (!PyArg_ParseTuple(args, "y*O!(KKK)K(KKKK)II", &raw, &PyDict_Type, &tracks, &names[0], &names[1],
                          &names[2], &cat_iid, &ann[0], &ann[1], &ann[2], &ann[3], &seq_id, &seq_flags))
        return NULL;
    PyObject *result = NULL, *by_reason = NULL;
    uint64_t *uuids = NULL;
    SchedTracks t = {.tracks = tracks};
    Py_ssize_t n = raw.len / (Py_ssize_t)sizeof(SchedEvent), counts[3] = {0, 0, 0};
    Buf out;
    buf_init(&out);
    if (raw.len % (Py_ssize_t)sizeof(SchedEvent)) {
        PyErr_Format(PyExc_ValueError, "%zd bytes: not a whole number of %zu-byte records", raw.len,
                     sizeof(SchedEvent));
        goto done;
    }
    /* every record's track first: nothing is written for a drain with threads new to `tracks` */
    uuids = PyMem_Malloc(sizeof(uint64_t) * (size_t)(n + 1));
    if (!uuids) { PyErr_NoMemory(); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t tid;
        memcpy(&tid, (const char *)raw.buf + i * (Py_ssize_t)sizeof(SchedEvent) + offsetof(SchedEvent, tid), 4);
        if (sched_track(&t, tid, &uuids[i])) goto done;
    }
    if (t.missing) {
        result = t.missing;
        t.missing = NULL;
        goto done;
    }
    by_reason = PyDict_New();
    if (!by_reason || buf_reserve(&out, (size_t)n * 96 /* ~80 bytes a record */)) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        SchedEvent e;  /* a copy: the records are not 8-byte aligned in a bytes object */
        memcpy(&e, (const char *)raw.buf + i * (Py_ssize_t)sizeof(SchedEvent), sizeof(e));
        if (count_reason(counts, by_reason, e.reason) || buf_reserve(&out, SCHED_RECORD_MAX)) goto done;
        /* BEGIN: TrackEvent fields in protobuf's order (category, annotations, type, name, track) */
        uint8_t ev[SCHED_EVENT_MAX], *p = wr_uint(ev, 3, cat_iid);
        p = wr_comm_annotation(wr_int_annotation(p, ann[0], e.by_pid), ann[1], e.by_comm);
        if (!p) goto done;
        p = wr_int_annotation(wr_int_annotation(p, ann[2], e.runq_ns), ann[3], e.cpu);
        p = wr_uint(wr_uint(wr_uint(p, 9, 1 /* TYPE_SLICE_BEGIN */), 10, names[e.reason < 3 ? e.reason : 0]), 11,
                    uuids[i]);
        uint8_t *o = wr_event_packet(out.p + out.len, e.ts_off, seq_id, ev, (size_t)(p - ev), seq_flags);
        /* END at ts_on (at ts_off when the CPUs' clocks put ts_on before it) */
        int64_t dur = (int64_t)(e.ts_on - e.ts_off);
        p = wr_uint(wr_uint(ev, 9, 2 /* TYPE_SLICE_END */), 11, uuids[i]);
        o = wr_event_packet(o, e.ts_off + (uint64_t)(dur > 0 ? dur : 0), seq_id, ev, (size_t)(p - ev), seq_flags);
        out.len = (size_t)(o - out.p);
    }
    for (uint32_t r = 0; r < 3; r++) {
        if (!counts[r]) continue;
        PyObject *key = PyLong_FromUnsignedLong(r), *value = PyLong_FromSsize_t(counts[r]);
        int rc = !key || !value || PyDict_SetItem(by_reason, key, value);
        Py_XDECREF(key);
        Py_XDECREF(value);
        if (rc) goto done;
    }
    PyObject *data = PyBytes_FromStringAndSize((const char *)out.p, (Py_ssize_t)out.len);
    if (data) result = Py_BuildValue("(NO)", data, by_reason);
done:
    PyBuffer_Release(&raw);
    PyMem_Free(uuids);
    Py_XDECREF(t.missing);
    Py_XDECREF(by_reason);
    buf_free(&out);
    return result;
}

/* ---- RingReader: a BPF ring buffer read in bulk ------------------------------------------
 *
 * BCC hands each record to a Python callback through libbpf and ctypes (~2.4 us a record
 * before the pack's own code runs); this reads the map's memory directly, as libbpf's
 * ringbuf.c does, and returns every committed record of a drain in one bytes object.
 * Layout (kernel/bpf/ringbuf.c): page 0 holds consumer_pos (ours to write), page 1
 * producer_pos, then the data area, which the kernel maps twice in a row so that a record
 * wrapping around its end reads as one piece. Each record: u32 len (BUSY and DISCARD bits
 * on top), u32 pg_off, the payload; records are 8-byte aligned.
 * One thread at a time may drain a reader (the engine's polling thread). */

#define RB_BUSY_BIT (1U << 31)
#define RB_DISCARD_BIT (1U << 30)
#define RB_HDR_SZ 8

typedef struct {
    PyObject_HEAD
    unsigned long *consumer_pos;
    unsigned long *producer_pos;
    const uint8_t *data;
    size_t page_size, data_size;
    unsigned long long skipped;
} RingReader;

static int ring_map_size(int fd, size_t *data_size) {
    struct bpf_map_info info;
    union bpf_attr attr;
    memset(&info, 0, sizeof(info));
    memset(&attr, 0, sizeof(attr));
    attr.info.bpf_fd = (uint32_t)fd;
    attr.info.info_len = sizeof(info);
    attr.info.info = (uint64_t)(uintptr_t)&info;
    if (syscall(__NR_bpf, BPF_OBJ_GET_INFO_BY_FD, &attr, sizeof(attr)) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (info.type != BPF_MAP_TYPE_RINGBUF) {
        PyErr_Format(PyExc_ValueError, "map fd %d is not a ring buffer (type %u)", fd, info.type);
        return -1;
    }
    *data_size = info.max_entries;
    return 0;
}

static void ring_unmap(RingReader *r) {
    if (r->consumer_pos) munmap(r->consumer_pos, r->page_size);
    if (r->producer_pos) munmap(r->producer_pos, r->page_size + 2 * r->data_size);
    r->consumer_pos = r->producer_pos = NULL;
    r->data = NULL;
}

static int RingReader_init(RingReader *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"map_fd", NULL};
    int fd;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", kwlist, &fd)) return -1;
    ring_unmap(self);
    self->page_size = (size_t)sysconf(_SC_PAGESIZE);
    if (ring_map_size(fd, &self->data_size)) return -1;
    void *cons = mmap(NULL, self->page_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (cons == MAP_FAILED) { PyErr_SetFromErrno(PyExc_OSError); return -1; }
    void *prod = mmap(NULL, self->page_size + 2 * self->data_size, PROT_READ, MAP_SHARED, fd, (off_t)self->page_size);
    if (prod == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        munmap(cons, self->page_size);
        return -1;
    }
    self->consumer_pos = cons;
    self->producer_pos = prod;
    self->data = (const uint8_t *)prod + self->page_size;
    self->skipped = 0;
    return 0;
}

static void RingReader_dealloc(RingReader *self) {
    ring_unmap(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Copy out the committed records up to the producer position read at the start, and give
 * their space back. fixed 0: each payload preceded by its u32 length; fixed > 0: only the
 * payloads of that size, back to back (others counted in `skipped`). */
static PyObject *ring_drain(RingReader *self, size_t fixed) {
    if (!self->data) {
        PyErr_SetString(PyExc_ValueError, "ring reader is closed");
        return NULL;
    }
    unsigned long cons = __atomic_load_n(self->consumer_pos, __ATOMIC_ACQUIRE);
    unsigned long prod = __atomic_load_n(self->producer_pos, __ATOMIC_ACQUIRE);
    size_t avail = prod - cons;
    if (avail == 0) return PyBytes_FromStringAndSize(NULL, 0);
    if (avail > self->data_size) {
        PyErr_Format(PyExc_RuntimeError, "ring buffer positions inconsistent (%lu ahead of %lu)", prod, cons);
        return NULL;
    }
    /* a record's output (4 + len, or len) never exceeds its space in the ring (8 + len rounded up) */
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)avail);
    if (!out) return NULL;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    size_t n = 0, mask = self->data_size - 1;
    while (cons < prod) {
        const uint32_t *hdr = (const uint32_t *)(self->data + (cons & mask));
        uint32_t len = __atomic_load_n(hdr, __ATOMIC_ACQUIRE);
        if (len & RB_BUSY_BIT) break;  /* reserved, not yet submitted: the rest waits */
        uint32_t size = len & ~(RB_BUSY_BIT | RB_DISCARD_BIT);
        if (size > avail) {
            Py_DECREF(out);
            PyErr_Format(PyExc_RuntimeError, "ring buffer record of %u bytes in %zu", size, avail);
            return NULL;
        }
        if (!(len & RB_DISCARD_BIT)) {
            const uint8_t *payload = (const uint8_t *)hdr + RB_HDR_SZ;
            if (!fixed) {
                memcpy(o + n, &size, 4);
                memcpy(o + n + 4, payload, size);
                n += 4 + size;
            } else if (size == fixed) {
                memcpy(o + n, payload, size);
                n += size;
            } else {
                self->skipped++;
            }
        }
        cons += (size + RB_HDR_SZ + 7) & ~(size_t)7;
    }
    __atomic_store_n(self->consumer_pos, cons, __ATOMIC_RELEASE);
    if (_PyBytes_Resize(&out, (Py_ssize_t)n)) return NULL;
    return out;
}

static PyObject *RingReader_drain(RingReader *self, PyObject *Py_UNUSED(ignored)) { return ring_drain(self, 0); }

static PyObject *RingReader_drain_fixed(RingReader *self, PyObject *arg) {
    Py_ssize_t size = PyLong_AsSsize_t(arg);
    if (size == -1 && PyErr_Occurred()) return NULL;
    if (size <= 0) {
        PyErr_SetString(PyExc_ValueError, "record size must be positive");
        return NULL;
    }
    return ring_drain(self, (size_t)size);
}

static PyObject *RingReader_close(RingReader *self, PyObject *Py_UNUSED(ignored)) {
    ring_unmap(self);
    Py_RETURN_NONE;
}

static PyMethodDef RingReader_methods[] = {
    {"drain", (PyCFunction)RingReader_drain, METH_NOARGS,
     "drain() -> bytes: every committed record, each as u32 length (native order) + payload; consumes them."},
    {"drain_fixed", (PyCFunction)RingReader_drain_fixed, METH_O,
     "drain_fixed(record_size) -> bytes: the payloads of that size back to back (others: `skipped`)."},
    {"close", (PyCFunction)RingReader_close, METH_NOARGS, "Unmap the buffer (the map itself stays)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef RingReader_members[] = {
    {"skipped", T_ULONGLONG, offsetof(RingReader, skipped), READONLY, "records drain_fixed left out (other sizes)"},
    {"data_size", T_PYSSIZET, offsetof(RingReader, data_size), READONLY, "bytes in the data area"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject RingReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "recorders._encode.RingReader",
    .tp_doc = "RingReader(map_fd): read a BPF ring buffer map in bulk (mmap, as libbpf does).",
    .tp_basicsize = sizeof(RingReader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RingReader_init,
    .tp_dealloc = (destructor)RingReader_dealloc,
    .tp_methods = RingReader_methods,
    .tp_members = RingReader_members,
};

static PyMethodDef methods[] = {
    {"track_event", track_event, METH_VARARGS, "Encode one framed TracePacket with a TrackEvent (see the module comment)."},
    {"encode_sched_events", encode_sched_events, METH_VARARGS,
     "Encode a drain of struct sched_event records as slices (see encode_sched_events)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "recorders._encode", NULL, -1, methods};

PyMODINIT_FUNC PyInit__encode(void) {
    if (PyType_Ready(&RingReaderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&RingReaderType);
    if (PyModule_AddObject(m, "RingReader", (PyObject *)&RingReaderType) < 0) {
        Py_DECREF(&RingReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
