/* Fast path of the trace writer: one framed TracePacket with a TrackEvent, encoded by hand.
 *
 * recorders/trace_writer.py builds packets with the protobuf classes (about 3-4 us per
 * event packet in Python); on the recorder's hot path (one scheduler slice = two
 * packets, thousands per second) this encoder does the same in well under a microsecond.
 * Interning stays in Python: the caller passes the iids, and the new (table, iid, name)
 * entries to emit in this packet's interned_data.
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
#include <stdint.h>
#include <string.h>

typedef struct {
    uint8_t *p;
    size_t len, cap;
    uint8_t inline_buf[512];
} Buf;

static void buf_init(Buf *b) { b->p = b->inline_buf; b->len = 0; b->cap = sizeof(b->inline_buf); }
static void buf_free(Buf *b) { if (b->p != b->inline_buf) PyMem_Free(b->p); }

static int buf_reserve(Buf *b, size_t extra) {
    if (b->len + extra <= b->cap) return 0;
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

static int put_varint(Buf *b, uint64_t v) {
    if (buf_reserve(b, 10)) return -1;
    while (v >= 0x80) { b->p[b->len++] = (uint8_t)(v | 0x80); v >>= 7; }
    b->p[b->len++] = (uint8_t)v;
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
    /* seq: [(table_field, iid, name)], table_field 1 categories, 2 names, 3 annotation names */
    if (seq == Py_None || PySequence_Size(seq) == 0) return 0;
    PyObject *fast = PySequence_Fast(seq, "interned entries must be a sequence");
    if (!fast) return -1;
    Buf d;
    buf_init(&d);
    int rc = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t i = 0; i < n && !rc; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(fast, i);
        unsigned int table;
        unsigned long long iid;
        const char *name;
        Py_ssize_t name_len;
        if (!PyArg_ParseTuple(t, "IKs#", &table, &iid, &name, &name_len)) { rc = -1; break; }
        Buf e;
        buf_init(&e);
        rc = put_uint_field(&e, 1, iid) || put_bytes(&e, 2, name, (size_t)name_len) ||
             put_bytes(&d, table, e.p, e.len);
        buf_free(&e);
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

static PyMethodDef methods[] = {
    {"track_event", track_event, METH_VARARGS, "Encode one framed TracePacket with a TrackEvent (see the module comment)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "recorders._encode", NULL, -1, methods};

PyMODINIT_FUNC PyInit__encode(void) { return PyModule_Create(&module); }
