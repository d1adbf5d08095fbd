/* prismkit.trace._wire: decode Perfetto TrackEvent traces straight into columns.
 *
 * Decoder.feed(buf, base_offset) walks the Trace framing (field 1 = TracePacket),
 * keeps per-sequence incremental state (interning, packet defaults, thread
 * descriptor, sequence-scoped clocks) and appends rows to growable C arrays:
 *   events   (slice begin/end/instant/complete): ts, clk, type, track, name, cat
 *   complete : row, dur (durations of legacy complete events)
 *   counters : ts, clk, track, value, name
 * (track and clk are indices into the small `tracks` / `clock_keys` tables)
 *   args     : event row, key, type, value (int64 bits; strings are string codes)
 *   flows    : event row, flow id, terminating
 * Strings (names, categories, keys, string values) go to one deduplicated table.
 * Rare packets (track/process/thread descriptors, clock snapshots) are handed
 * to Python as small tuples. Decoder.finish() returns the columns as buffer
 * objects (zero copy for numpy.frombuffer). The pure-Python twin is _pywire.py;
 * both must produce identical output (tests check it).
 *
 * match_slices() pairs BEGIN/END events per track (events pre-sorted by track, ts),
 * group_order() is a stable counting sort, and build_args() turns the compact
 * argument columns into dicts on demand.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

#define HOT static inline __attribute__((always_inline))

/* ------------------------------------------------------------------ buffers */

typedef struct {
    PyObject_HEAD
    void *data;
    Py_ssize_t size;
} BufObject;

static int buf_getbuffer(BufObject *self, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)self, self->data ? self->data : (void *)"", self->size, 0, flags);
}
static void buf_dealloc(BufObject *self) {
    free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}
static PyBufferProcs buf_as_buffer = {(getbufferproc)buf_getbuffer, NULL};
static PyTypeObject BufType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "prismkit.trace._wire.Buf",
    .tp_basicsize = sizeof(BufObject),
    .tp_dealloc = (destructor)buf_dealloc,
    .tp_as_buffer = &buf_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A malloc'd column handed to numpy.frombuffer without a copy.",
};

/* Wrap (and take ownership of) data. */
static PyObject *make_buf(void *data, Py_ssize_t size) {
    BufObject *b = PyObject_New(BufObject, &BufType);
    if (!b) { free(data); return NULL; }
    b->data = data;
    b->size = size;
    return (PyObject *)b;
}

/* ------------------------------------------------------------- small maps */

typedef struct { uint64_t *keys; int64_t *vals; uint8_t *used; size_t cap, n; } U64Map;

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}
static void map_free(U64Map *m) { free(m->keys); free(m->vals); free(m->used); memset(m, 0, sizeof *m); }
static void map_clear(U64Map *m) { if (m->used) memset(m->used, 0, m->cap); m->n = 0; }
HOT int map_get(const U64Map *m, uint64_t key, int64_t *val) {
    if (!m->cap) return 0;
    size_t mask = m->cap - 1, i = mix64(key) & mask;
    while (m->used[i]) {
        if (m->keys[i] == key) { *val = m->vals[i]; return 1; }
        i = (i + 1) & mask;
    }
    return 0;
}
static int map_put(U64Map *m, uint64_t key, int64_t val);
static int map_grow(U64Map *m) {
    size_t oc = m->cap, nc = oc ? oc * 2 : 64;
    uint64_t *ok = m->keys; int64_t *ov = m->vals; uint8_t *ou = m->used;
    m->keys = malloc(nc * sizeof(uint64_t)); m->vals = malloc(nc * sizeof(int64_t)); m->used = calloc(nc, 1);
    if (!m->keys || !m->vals || !m->used) { PyErr_NoMemory(); return -1; }
    m->cap = nc; m->n = 0;
    for (size_t i = 0; i < oc; i++) if (ou[i]) map_put(m, ok[i], ov[i]);
    free(ok); free(ov); free(ou);
    return 0;
}
static int map_put(U64Map *m, uint64_t key, int64_t val) {
    if ((m->n + 1) * 2 > m->cap && map_grow(m) < 0) return -1;
    size_t mask = m->cap - 1, i = mix64(key) & mask;
    while (m->used[i]) {
        if (m->keys[i] == key) { m->vals[i] = val; return 0; }
        i = (i + 1) & mask;
    }
    m->used[i] = 1; m->keys[i] = key; m->vals[i] = val; m->n++;
    return 0;
}

/* ------------------------------------------------------------ string table */

typedef struct {
    char *arena; size_t alen, acap;
    uint64_t *ent_off;   /* offset into arena */
    uint32_t *ent_len;
    uint64_t *ent_hash;
    size_t n, ecap;
    int32_t *slots; size_t scap;   /* open addressing: entry index or -1 */
} StrTab;

static uint64_t fnv1a(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ULL; }
    return h;
}
static void strtab_free(StrTab *t) {
    free(t->arena); free(t->ent_off); free(t->ent_len); free(t->ent_hash); free(t->slots);
    memset(t, 0, sizeof *t);
}
static int strtab_rehash(StrTab *t, size_t nc) {
    int32_t *s = malloc(nc * sizeof(int32_t));
    if (!s) { PyErr_NoMemory(); return -1; }
    memset(s, 0xff, nc * sizeof(int32_t));
    for (size_t e = 0; e < t->n; e++) {
        size_t i = t->ent_hash[e] & (nc - 1);
        while (s[i] >= 0) i = (i + 1) & (nc - 1);
        s[i] = (int32_t)e;
    }
    free(t->slots); t->slots = s; t->scap = nc;
    return 0;
}
/* Returns the code of the string (inserting it), or -2 on memory error. */
static int32_t strtab_intern(StrTab *t, const uint8_t *p, size_t n) {
    uint64_t h = fnv1a(p, n);
    if ((t->n + 1) * 2 > t->scap && strtab_rehash(t, t->scap ? t->scap * 2 : 256) < 0) return -2;
    size_t mask = t->scap - 1, i = h & mask;
    while (t->slots[i] >= 0) {
        int32_t e = t->slots[i];
        if (t->ent_hash[e] == h && t->ent_len[e] == n && memcmp(t->arena + t->ent_off[e], p, n) == 0) return e;
        i = (i + 1) & mask;
    }
    if (t->n == t->ecap) {
        size_t nc = t->ecap ? t->ecap * 2 : 256;
        uint64_t *o = realloc(t->ent_off, nc * sizeof(uint64_t)); if (!o) { PyErr_NoMemory(); return -2; } t->ent_off = o;
        uint32_t *l = realloc(t->ent_len, nc * sizeof(uint32_t)); if (!l) { PyErr_NoMemory(); return -2; } t->ent_len = l;
        uint64_t *hh = realloc(t->ent_hash, nc * sizeof(uint64_t)); if (!hh) { PyErr_NoMemory(); return -2; } t->ent_hash = hh;
        t->ecap = nc;
    }
    if (t->alen + n > t->acap) {
        size_t nc = t->acap ? t->acap : 4096;
        while (nc < t->alen + n) nc *= 2;
        char *a = realloc(t->arena, nc); if (!a) { PyErr_NoMemory(); return -2; }
        t->arena = a; t->acap = nc;
    }
    if (n) memcpy(t->arena + t->alen, p, n);
    int32_t e = (int32_t)t->n++;
    t->ent_off[e] = t->alen; t->ent_len[e] = (uint32_t)n; t->ent_hash[e] = h;
    t->alen += n;
    t->slots[i] = e;
    return e;
}

/* ------------------------------------------------------------- columns */

#define GROW(arr, T, cap) do { T *np_ = realloc((arr), (cap) * sizeof(T)); if (!np_) { PyErr_NoMemory(); return -1; } (arr) = np_; } while (0)

/* Tracks and clocks are small tables; rows hold their index (track: int32, clock: int16). */
typedef struct {
    size_t n, cap;
    int64_t *ts; int16_t *clk; int32_t *track, *name, *cat; int8_t *type;
} EvCols;
typedef struct {
    size_t n, cap;
    int64_t *ts; int16_t *clk; int32_t *track; double *val; int32_t *name;
} CtCols;
typedef struct {   /* durations of complete (legacy 'X') events: sparse */
    size_t n, cap;
    int32_t *row; int64_t *dur;
} CxCols;
typedef struct {
    size_t n, cap;
    int32_t *ev, *key; int8_t *type; int64_t *val;
} ArCols;
typedef struct {
    size_t n, cap;
    int32_t *ev; uint64_t *id; int8_t *term;
} FlCols;

static int ev_reserve(EvCols *c, size_t need) {
    if (need <= c->cap) return 0;
    size_t nc = c->cap ? c->cap : 4096; while (nc < need) nc *= 2;
    GROW(c->ts, int64_t, nc); GROW(c->clk, int16_t, nc); GROW(c->track, int32_t, nc);
    GROW(c->name, int32_t, nc); GROW(c->cat, int32_t, nc); GROW(c->type, int8_t, nc);
    c->cap = nc; return 0;
}
static int ct_reserve(CtCols *c, size_t need) {
    if (need <= c->cap) return 0;
    size_t nc = c->cap ? c->cap : 1024; while (nc < need) nc *= 2;
    GROW(c->ts, int64_t, nc); GROW(c->clk, int16_t, nc); GROW(c->track, int32_t, nc); GROW(c->val, double, nc);
    GROW(c->name, int32_t, nc);
    c->cap = nc; return 0;
}
static int cx_reserve(CxCols *c, size_t need) {
    if (need <= c->cap) return 0;
    size_t nc = c->cap ? c->cap : 256; while (nc < need) nc *= 2;
    GROW(c->row, int32_t, nc); GROW(c->dur, int64_t, nc);
    c->cap = nc; return 0;
}
static int ar_reserve(ArCols *c, size_t need) {
    if (need <= c->cap) return 0;
    size_t nc = c->cap ? c->cap : 4096; while (nc < need) nc *= 2;
    GROW(c->ev, int32_t, nc); GROW(c->key, int32_t, nc); GROW(c->type, int8_t, nc); GROW(c->val, int64_t, nc);
    c->cap = nc; return 0;
}
static int fl_reserve(FlCols *c, size_t need) {
    if (need <= c->cap) return 0;
    size_t nc = c->cap ? c->cap : 256; while (nc < need) nc *= 2;
    GROW(c->ev, int32_t, nc); GROW(c->id, uint64_t, nc); GROW(c->term, int8_t, nc);
    c->cap = nc; return 0;
}

/* --------------------------------------------------------------- state */

enum { K_NAME = 1, K_CAT = 2, K_DANAME = 3, K_DASTR = 4 };
#define IKEY(kind, iid) (((uint64_t)(kind) << 58) | ((iid) & ((1ULL << 58) - 1)))

typedef struct { int set, incremental; int64_t last; uint64_t mult; } ClockInfo;

typedef struct {
    uint32_t seq_id;
    int valid;
    U64Map intern;                 /* interned ids that do not fit the dense tables */
    int32_t *dense[5]; size_t dcap[5], dmax[5];   /* kind -> iid -> string code (-1: none) */
    int has_defaults;
    uint32_t def_clock;
    int has_def_track; uint64_t def_track;
    uint64_t *def_extra; size_t n_def_extra, cap_def_extra;       /* extra_counter_track_uuids */
    uint64_t *def_extra_d; size_t n_def_extra_d, cap_def_extra_d; /* extra_double_counter_track_uuids */
    int has_thread; int64_t pid, tid; int64_t ref_us;
    ClockInfo clocks[64];   /* sequence-scoped clock ids 64..127 */
} SeqState;

/* arg value types, shared with Python (_pywire.py, reader.py) */
enum { A_INT = 0, A_UINT = 1, A_DOUBLE = 2, A_BOOL = 3, A_STR = 4, A_PTR = 5, A_JSON = 6, A_OBJ = 7, A_NONE = 8 };

typedef struct {
    PyObject_HEAD
    EvCols ev; CtCols ct; ArCols ar; FlCols fl; CxCols cx;
    U64Map trackmap; uint64_t *tracks; size_t ntracks, captracks; uint64_t last_uuid; int32_t last_track;
    int64_t clock_keys[4096]; int nclocks; int last_clock;
    StrTab st;
    SeqState *seqs; size_t nseq, capseq; U64Map seqmap;
    U64Map gclock_mult;         /* global clock id -> unit multiplier */
    PyObject *objects;          /* list: nested annotation values */
    PyObject *descs;            /* list of (kind, seq, bytes, ev_row) */
    PyObject *clocks;           /* list of (seq, primary or -1, [(key, ns), ...]) */
    PyObject *decompress;       /* callable or None */
    /* stats */
    long long packets, skipped_no_state, unresolved_iids, unsupported_events;
    /* error */
    int has_error; long long err_offset; char err_msg[200];
    /* scratch */
    uint64_t *x_uuid; size_t x_n, x_cap; int64_t *x_ival; size_t xi_n, xi_cap;
    uint64_t *xd_uuid; size_t xd_n, xd_cap; double *xd_val; size_t xdv_n, xdv_cap;
    char *cbuf; size_t cbuf_cap;
    int depth;
    int bad_nested;             /* nested_to_py met bad data (message in err_msg) */
} Decoder;

/* Parse errors: a message and the packet is rolled back. */
#define BAD(msg) do { snprintf(d->err_msg, sizeof d->err_msg, "%s", (msg)); return -2; } while (0)

/* ------------------------------------------------------------ wire reading */

HOT int rd_varint(const uint8_t **pp, const uint8_t *end, uint64_t *out) {
    const uint8_t *p = *pp;
    if (p < end && *p < 0x80) { *out = *p; *pp = p + 1; return 0; }
    uint64_t r = 0; int shift = 0;
    while (p < end) {
        uint8_t b = *p++;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) { *pp = p; *out = r; return 0; }
        shift += 7;
        if (shift >= 70) return -2;
    }
    return -1;  /* ran out of bytes */
}

/* Read one field header and its value. For LEN fields lp..le delimit the payload. */
typedef struct { uint32_t num; int wt; uint64_t v; const uint8_t *lp, *le; } Field;

HOT int rd_field(Decoder *d, const uint8_t **pp, const uint8_t *end, Field *f) {
    uint64_t tag;
    if (rd_varint(pp, end, &tag) != 0) BAD("bad field tag");
    f->num = (uint32_t)(tag >> 3); f->wt = (int)(tag & 7);
    if (f->num == 0 || (tag >> 3) > 0x1fffffff) BAD("field number out of range");
    switch (f->wt) {
    case 0: if (rd_varint(pp, end, &f->v) != 0) BAD("bad varint"); return 0;
    case 1: if (end - *pp < 8) BAD("truncated fixed64"); memcpy(&f->v, *pp, 8); *pp += 8; return 0;
    case 5: { uint32_t x; if (end - *pp < 4) BAD("truncated fixed32"); memcpy(&x, *pp, 4); *pp += 4; f->v = x; return 0; }
    case 2: {
        uint64_t n;
        if (rd_varint(pp, end, &n) != 0) BAD("bad length");
        if (n > (uint64_t)(end - *pp)) BAD("length past the end of its message");
        f->lp = *pp; f->le = *pp + n; *pp += n; return 0;
    }
    default: BAD("invalid wire type");
    }
}
#define WANT(wt_) do { if (f.wt != (wt_)) BAD("unexpected wire type for a known field"); } while (0)

/* --------------------------------------------------------------- helpers */

static SeqState *get_seq(Decoder *d, uint32_t seq_id) {
    int64_t idx;
    if (map_get(&d->seqmap, seq_id, &idx)) return &d->seqs[idx];
    if (d->nseq == d->capseq) {
        size_t nc = d->capseq ? d->capseq * 2 : 8;
        SeqState *n = realloc(d->seqs, nc * sizeof(SeqState));
        if (!n) { PyErr_NoMemory(); return NULL; }
        d->seqs = n; d->capseq = nc;
    }
    SeqState *s = &d->seqs[d->nseq];
    memset(s, 0, sizeof *s);
    s->seq_id = seq_id;
    if (map_put(&d->seqmap, seq_id, (int64_t)d->nseq) < 0) return NULL;
    d->nseq++;
    return s;
}

#define DENSE_MAX 65536

HOT int intern_get(SeqState *s, int kind, uint64_t iid, int64_t *code) {
    if (iid < s->dcap[kind]) {
        int32_t c = s->dense[kind][iid];
        if (c >= 0) { *code = c; return 1; }
        return 0;
    }
    if (iid < DENSE_MAX) return 0;
    return map_get(&s->intern, IKEY(kind, iid), code);
}

static int intern_put(SeqState *s, int kind, uint64_t iid, int32_t code) {
    if (iid < DENSE_MAX) {
        if (iid >= s->dcap[kind]) {
            size_t nc = s->dcap[kind] ? s->dcap[kind] : 64;
            while (nc <= iid) nc *= 2;
            int32_t *a = realloc(s->dense[kind], nc * 4);
            if (!a) { PyErr_NoMemory(); return -1; }
            memset(a + s->dcap[kind], 0xff, (nc - s->dcap[kind]) * 4);
            s->dense[kind] = a; s->dcap[kind] = nc;
        }
        s->dense[kind][iid] = code;
        if (iid + 1 > s->dmax[kind]) s->dmax[kind] = iid + 1;
        return 0;
    }
    return map_put(&s->intern, IKEY(kind, iid), code);
}

static void seq_clear(SeqState *s) {
    map_clear(&s->intern);
    for (int k = 0; k < 5; k++) {
        if (s->dmax[k]) memset(s->dense[k], 0xff, s->dmax[k] * 4);
        s->dmax[k] = 0;
    }
    s->has_defaults = 0; s->def_clock = 0; s->has_def_track = 0; s->def_track = 0;
    s->n_def_extra = 0; s->n_def_extra_d = 0;
    s->valid = 1;
}

static int push_u64(uint64_t **arr, size_t *n, size_t *cap, uint64_t v) {
    if (*n == *cap) { size_t nc = *cap ? *cap * 2 : 16; uint64_t *a = realloc(*arr, nc * 8); if (!a) { PyErr_NoMemory(); return -1; } *arr = a; *cap = nc; }
    (*arr)[(*n)++] = v; return 0;
}

/* Repeated varint/fixed fields may be packed (LEN) or not. */
static int rd_repeated(Decoder *d, const Field *f, int fixed64, uint64_t **arr, size_t *n, size_t *cap) {
    if (f->wt == 2) {
        const uint8_t *p = f->lp;
        while (p < f->le) {
            uint64_t v;
            if (fixed64) { if (f->le - p < 8) BAD("truncated packed fixed64"); memcpy(&v, p, 8); p += 8; }
            else if (rd_varint(&p, f->le, &v) != 0) BAD("bad packed varint");
            if (push_u64(arr, n, cap, v) < 0) return -1;
        }
        return 0;
    }
    if (f->wt != (fixed64 ? 1 : 0)) BAD("unexpected wire type for a repeated field");
    return push_u64(arr, n, cap, f->v);
}

static int64_t resolve_ts(Decoder *d, SeqState *s, uint32_t clock, uint64_t raw, int64_t *key) {
    if (clock == 0) { *key = 0; return (int64_t)raw; }
    if (clock >= 64 && clock < 128) {
        ClockInfo *ci = &s->clocks[clock - 64];
        *key = ((int64_t)1 << 40) | ((int64_t)s->seq_id << 8) | clock;
        int64_t v = (int64_t)raw;
        if (ci->set && ci->incremental) { v = ci->last + v; ci->last = v; }
        return ci->set && ci->mult > 1 ? v * (int64_t)ci->mult : v;
    }
    *key = clock;
    int64_t mult;
    if (d->gclock_mult.n && map_get(&d->gclock_mult, clock, &mult) && mult > 1) return (int64_t)raw * mult;
    return (int64_t)raw;
}

/* ------------------------------------------------------- debug annotations */

static PyObject *nested_to_py(Decoder *d, const uint8_t *p, const uint8_t *end);

static PyObject *str_from(const uint8_t *p, const uint8_t *e) {
    return PyUnicode_DecodeUTF8((const char *)p, e - p, "replace");
}

static PyObject *intern_str_obj(Decoder *d, int32_t code) {
    return PyUnicode_DecodeUTF8(d->st.arena + d->st.ent_off[code], d->st.ent_len[code], "replace");
}

/* Full conversion of one DebugAnnotation to (key code, Python value). Returns 0, -1 (Python error), -2 (bad). */
static int da_to_py(Decoder *d, SeqState *s, const uint8_t *p, const uint8_t *end, int32_t *key, PyObject **val) {
    Field f; int r;
    PyObject *v = NULL, *dict = NULL, *list = NULL;
    *key = -1;
    while (p < end) {
        if ((r = rd_field(d, &p, end, &f)) != 0) goto fail_r;
        switch (f.num) {
        case 1: { if (f.wt != 0) goto bad; int64_t c; if (intern_get(s, K_DANAME, f.v, &c)) *key = (int32_t)c; else d->unresolved_iids++; break; }
        case 10: { if (f.wt != 2) goto bad; int32_t c = strtab_intern(&d->st, f.lp, f.le - f.lp); if (c < 0) { r = -1; goto fail_r; } *key = c; break; }
        case 2: if (f.wt != 0) goto bad; Py_XDECREF(v); v = PyBool_FromLong(f.v != 0); break;
        case 3: case 7: if (f.wt != 0) goto bad; Py_XDECREF(v); v = PyLong_FromUnsignedLongLong(f.v); break;
        case 4: if (f.wt != 0) goto bad; Py_XDECREF(v); v = PyLong_FromLongLong((int64_t)f.v); break;
        case 5: { if (f.wt != 1) goto bad; double x; memcpy(&x, &f.v, 8); Py_XDECREF(v); v = PyFloat_FromDouble(x); break; }
        case 6: case 9: if (f.wt != 2) goto bad; Py_XDECREF(v); v = str_from(f.lp, f.le); break;
        case 17: { if (f.wt != 0) goto bad; int64_t c; Py_XDECREF(v);
            if (intern_get(s, K_DASTR, f.v, &c)) v = intern_str_obj(d, (int32_t)c);
            else { d->unresolved_iids++; v = Py_NewRef(Py_None); }
            break; }
        case 8:
            if (f.wt != 2) goto bad;
            Py_XDECREF(v);
            v = nested_to_py(d, f.lp, f.le);
            if (!v) {
                if (d->bad_nested) { d->bad_nested = 0; PyErr_Clear(); r = -2; goto fail_r; }
                goto fail;
            }
            break;
        case 11: {
            if (f.wt != 2) goto bad;
            if (!dict) { dict = PyDict_New(); if (!dict) goto fail; }
            int32_t k; PyObject *sub = NULL;
            if ((r = da_to_py(d, s, f.lp, f.le, &k, &sub)) != 0) goto fail_r;
            PyObject *ks = k >= 0 ? intern_str_obj(d, k) : PyUnicode_FromString("");
            if (!ks || PyDict_SetItem(dict, ks, sub) < 0) { Py_XDECREF(ks); Py_DECREF(sub); goto fail; }
            Py_DECREF(ks); Py_DECREF(sub);
            continue;
        }
        case 12: {
            if (f.wt != 2) goto bad;
            if (!list) { list = PyList_New(0); if (!list) goto fail; }
            int32_t k; PyObject *sub = NULL;
            if ((r = da_to_py(d, s, f.lp, f.le, &k, &sub)) != 0) goto fail_r;
            int rr = PyList_Append(list, sub); Py_DECREF(sub); if (rr < 0) goto fail;
            continue;
        }
        default: continue;  /* proto values, type names: not represented */
        }
        if (f.num != 1 && f.num != 10 && !v) goto fail;
    }
    if (dict) { Py_XDECREF(v); Py_XDECREF(list); *val = dict; return 0; }
    if (list) { Py_XDECREF(v); *val = list; return 0; }
    *val = v ? v : Py_NewRef(Py_None);
    return 0;
bad:
    snprintf(d->err_msg, sizeof d->err_msg, "unexpected wire type in a debug annotation");
    r = -2;
fail_r:
    Py_XDECREF(v); Py_XDECREF(dict); Py_XDECREF(list);
    return r;
fail:
    Py_XDECREF(v); Py_XDECREF(dict); Py_XDECREF(list);
    return -1;
}

/* Legacy DebugAnnotation.NestedValue. */
static PyObject *nested_to_py(Decoder *d, const uint8_t *p, const uint8_t *end) {
    Field f; int r;
    uint64_t type = 0;
    PyObject *keys = PyList_New(0), *vals = PyList_New(0), *arr = PyList_New(0), *scalar = NULL, *out = NULL;
    if (!keys || !vals || !arr) goto done;
    while (p < end) {
        if ((r = rd_field(d, &p, end, &f)) != 0) {
            if (r == -2) d->bad_nested = 1;
            goto done;
        }
        PyObject *x = NULL;
        switch (f.num) {
        case 1: type = f.v; break;
        case 2: x = str_from(f.wt == 2 ? f.lp : p, f.wt == 2 ? f.le : p); if (!x || PyList_Append(keys, x) < 0) { Py_XDECREF(x); goto done; } Py_DECREF(x); break;
        case 3: if (f.wt != 2) break; x = nested_to_py(d, f.lp, f.le); if (!x || PyList_Append(vals, x) < 0) { Py_XDECREF(x); goto done; } Py_DECREF(x); break;
        case 4: if (f.wt != 2) break; x = nested_to_py(d, f.lp, f.le); if (!x || PyList_Append(arr, x) < 0) { Py_XDECREF(x); goto done; } Py_DECREF(x); break;
        case 5: Py_XDECREF(scalar); scalar = PyLong_FromLongLong((int64_t)f.v); break;
        case 6: { double xx; memcpy(&xx, &f.v, 8); Py_XDECREF(scalar); scalar = PyFloat_FromDouble(xx); break; }
        case 7: Py_XDECREF(scalar); scalar = PyBool_FromLong(f.v != 0); break;
        case 8: if (f.wt != 2) break; Py_XDECREF(scalar); scalar = str_from(f.lp, f.le); break;
        default: break;
        }
    }
    if (type == 1) {
        out = PyDict_New();
        if (!out) goto done;
        Py_ssize_t n = PyList_GET_SIZE(keys) < PyList_GET_SIZE(vals) ? PyList_GET_SIZE(keys) : PyList_GET_SIZE(vals);
        for (Py_ssize_t i = 0; i < n; i++)
            if (PyDict_SetItem(out, PyList_GET_ITEM(keys, i), PyList_GET_ITEM(vals, i)) < 0) { Py_CLEAR(out); goto done; }
    } else if (type == 2) {
        out = Py_NewRef(arr);
    } else {
        out = scalar ? Py_NewRef(scalar) : Py_NewRef(Py_None);
    }
done:
    Py_XDECREF(keys); Py_XDECREF(vals); Py_XDECREF(arr); Py_XDECREF(scalar);
    return out;
}

static int push_arg(Decoder *d, int32_t ev, int32_t key, int8_t type, int64_t val) {
    if (d->ar.n == d->ar.cap && ar_reserve(&d->ar, d->ar.n + 1) < 0) return -1;
    size_t i = d->ar.n++;
    d->ar.ev[i] = ev; d->ar.key[i] = key; d->ar.type[i] = type; d->ar.val[i] = val;
    return 0;
}

/* Top-level annotation: scalars go to the columns, nested values to d->objects. */
static int parse_annotation(Decoder *d, SeqState *s, const uint8_t *p, const uint8_t *end, int32_t ev) {
    const uint8_t *start = p;
    Field f; int r;
    int32_t key = -1; int8_t type = A_NONE; int64_t val = 0; int nested = 0, named = 0;
    while (p < end) {
        if ((r = rd_field(d, &p, end, &f)) != 0) return r;
        switch (f.num) {
        case 1: { WANT(0); int64_t c; named = 1; if (intern_get(s, K_DANAME, f.v, &c)) key = (int32_t)c; else { d->unresolved_iids++; key = -1; } break; }
        case 10: { WANT(2); named = 1; int32_t c = strtab_intern(&d->st, f.lp, f.le - f.lp); if (c < 0) return -1; key = c; break; }
        case 2: WANT(0); type = A_BOOL; val = f.v != 0; break;
        case 3: WANT(0); type = A_UINT; val = (int64_t)f.v; break;
        case 4: WANT(0); type = A_INT; val = (int64_t)f.v; break;
        case 5: WANT(1); type = A_DOUBLE; val = (int64_t)f.v; break;
        case 7: WANT(0); type = A_PTR; val = (int64_t)f.v; break;
        case 6: case 9: { WANT(2); int32_t c = strtab_intern(&d->st, f.lp, f.le - f.lp); if (c < 0) return -1; type = f.num == 6 ? A_STR : A_JSON; val = c; break; }
        case 17: { WANT(0); int64_t c; if (intern_get(s, K_DASTR, f.v, &c)) { type = A_STR; val = c; } else { d->unresolved_iids++; type = A_NONE; } break; }
        case 8: case 11: case 12: WANT(2); nested = 1; break;
        default: break;
        }
    }
    if (named && key < 0) return 0;   /* unresolved name: drop */
    if (!named) { key = strtab_intern(&d->st, (const uint8_t *)"", 0); if (key < 0) return -1; }
    if (nested) {
        int32_t k2; PyObject *obj = NULL;
        if ((r = da_to_py(d, s, start, end, &k2, &obj)) != 0) return r;
        Py_ssize_t idx = PyList_GET_SIZE(d->objects);
        int rr = PyList_Append(d->objects, obj); Py_DECREF(obj);
        if (rr < 0) return -1;
        type = A_OBJ; val = idx;
    }
    return push_arg(d, ev, key, type, val);
}

/* --------------------------------------------------------------- packets */

static int parse_interned(Decoder *d, SeqState *s, const uint8_t *p, const uint8_t *end) {
    Field f; int r;
    while (p < end) {
        if ((r = rd_field(d, &p, end, &f)) != 0) return r;
        int kind = 0;
        switch (f.num) {
        case 1: kind = K_CAT; break;
        case 2: kind = K_NAME; break;
        case 3: kind = K_DANAME; break;
        case 29: kind = K_DASTR; break;
        default: continue;
        }
        WANT(2);
        const uint8_t *q = f.lp; Field g;
        uint64_t iid = 0; const uint8_t *sp = NULL, *se = NULL;
        while (q < f.le) {
            if ((r = rd_field(d, &q, f.le, &g)) != 0) return r;
            if (g.num == 1 && g.wt == 0) iid = g.v;
            else if (g.num == 2 && g.wt == 2) { sp = g.lp; se = g.le; }
        }
        if (!sp) { sp = se = f.lp; }
        int32_t c = strtab_intern(&d->st, sp, se - sp);
        if (c < 0) return -1;
        if (intern_put(s, kind, iid, c) < 0) return -1;
    }
    return 0;
}

static int parse_defaults(Decoder *d, SeqState *s, const uint8_t *p, const uint8_t *end) {
    Field f; int r;
    s->has_defaults = 1; s->def_clock = 0; s->has_def_track = 0; s->n_def_extra = 0; s->n_def_extra_d = 0;
    while (p < end) {
        if ((r = rd_field(d, &p, end, &f)) != 0) return r;
        if (f.num == 58) { WANT(0); s->def_clock = (uint32_t)f.v; }
        else if (f.num == 11) {
            WANT(2);
            const uint8_t *q = f.lp; Field g;
            while (q < f.le) {
                if ((r = rd_field(d, &q, f.le, &g)) != 0) return r;
                if (g.num == 11) { if (g.wt != 0) BAD("bad track_event_defaults"); s->has_def_track = 1; s->def_track = g.v; }
                else if (g.num == 31) { if ((r = rd_repeated(d, &g, 0, &s->def_extra, &s->n_def_extra, &s->cap_def_extra)) != 0) return r; }
                else if (g.num == 45) { if ((r = rd_repeated(d, &g, 0, &s->def_extra_d, &s->n_def_extra_d, &s->cap_def_extra_d)) != 0) return r; }
            }
        }
    }
    return 0;
}

static int parse_clock_snapshot(Decoder *d, SeqState *s, const uint8_t *p, const uint8_t *end) {
    Field f; int r;
    int64_t primary = -1;
    PyObject *lst = PyList_New(0);
    if (!lst) return -1;
    while (p < end) {
        if ((r = rd_field(d, &p, end, &f)) != 0) { Py_DECREF(lst); return r; }
        if (f.num == 2 && f.wt == 0) primary = (int64_t)f.v;
        else if (f.num == 1 && f.wt == 2) {
            const uint8_t *q = f.lp; Field g;
            uint64_t id = 0, ts = 0, mult = 1; int incr = 0;
            while (q < f.le) {
                if ((r = rd_field(d, &q, f.le, &g)) != 0) { Py_DECREF(lst); return r; }
                if (g.num == 1) id = g.v; else if (g.num == 2) ts = g.v; else if (g.num == 3) incr = g.v != 0;
                else if (g.num == 4) mult = g.v ? g.v : 1;
            }
            int64_t key;
            if (id >= 64 && id < 128) {
                ClockInfo *ci = &s->clocks[id - 64];
                ci->set = 1; ci->incremental = incr; ci->last = (int64_t)ts; ci->mult = mult;
                key = ((int64_t)1 << 40) | ((int64_t)s->seq_id << 8) | (int64_t)id;
            } else {
                key = (int64_t)id;
                if (mult > 1 && map_put(&d->gclock_mult, id, (int64_t)mult) < 0) { Py_DECREF(lst); return -1; }
            }
            PyObject *t = Py_BuildValue("(LL)", (long long)key, (long long)((int64_t)ts * (int64_t)mult));
            if (!t || PyList_Append(lst, t) < 0) { Py_XDECREF(t); Py_DECREF(lst); return -1; }
            Py_DECREF(t);
        }
    }
    PyObject *t = Py_BuildValue("(kLN)", (unsigned long)s->seq_id, (long long)primary, lst);
    if (!t) return -1;
    int rr = PyList_Append(d->clocks, t); Py_DECREF(t);
    return rr < 0 ? -1 : 0;
}

static int parse_thread_desc(Decoder *d, SeqState *s, const uint8_t *p, const uint8_t *end) {
    Field f; int r;
    while (p < end) {
        if ((r = rd_field(d, &p, end, &f)) != 0) return r;
        if (f.num == 1 && f.wt == 0) s->pid = (int64_t)f.v;
        else if (f.num == 2 && f.wt == 0) s->tid = (int64_t)f.v;
        else if (f.num == 6 && f.wt == 0) s->ref_us = (int64_t)f.v;
    }
    s->pid = (int32_t)s->pid; s->tid = (int32_t)s->tid;
    s->has_thread = 1;
    return 0;
}

static int add_desc(Decoder *d, int kind, SeqState *s, const uint8_t *p, const uint8_t *end) {
    PyObject *t = Py_BuildValue("(iky#n)", kind, (unsigned long)s->seq_id, (const char *)p, (Py_ssize_t)(end - p), (Py_ssize_t)d->ev.n);
    if (!t) return -1;
    int r = PyList_Append(d->descs, t); Py_DECREF(t);
    return r < 0 ? -1 : 0;
}

/* index of a track uuid in the decoder's track table (-1: memory error) */
static int32_t track_index(Decoder *d, uint64_t uuid) {
    if (d->ntracks && d->last_uuid == uuid) return d->last_track;
    int64_t idx;
    if (!map_get(&d->trackmap, uuid, &idx)) {
        if (d->ntracks == d->captracks) {
            size_t nc = d->captracks ? d->captracks * 2 : 64;
            uint64_t *t = realloc(d->tracks, nc * 8); if (!t) { PyErr_NoMemory(); return -1; }
            d->tracks = t; d->captracks = nc;
        }
        idx = (int64_t)d->ntracks;
        d->tracks[d->ntracks++] = uuid;
        if (map_put(&d->trackmap, uuid, idx) < 0) return -1;
    }
    d->last_uuid = uuid; d->last_track = (int32_t)idx;
    return (int32_t)idx;
}

/* index of a clock key in the decoder's clock table (-2: too many clocks) */
static int clock_index(Decoder *d, int64_t key) {
    if (d->nclocks && d->clock_keys[d->last_clock] == key) return d->last_clock;
    for (int i = 0; i < d->nclocks; i++) if (d->clock_keys[i] == key) { d->last_clock = i; return i; }
    if (d->nclocks == 4096) return -2;
    d->clock_keys[d->nclocks] = key;
    d->last_clock = d->nclocks;
    return d->nclocks++;
}

static inline uint64_t synth_thread_uuid(int64_t pid, int64_t tid) {
    return (1ULL << 63) | ((uint64_t)(pid & 0x7fffffff) << 32) | (uint64_t)(uint32_t)tid;
}

static int parse_track_event(Decoder *d, SeqState *s, const uint8_t *p, const uint8_t *end,
                             int has_ts, int64_t ts, int64_t clk) {
    Field f; int r;
    const uint8_t *start = p;
    int64_t type = 0; int has_type = 0;
    int has_track = 0; uint64_t track = 0;
    int32_t name = -1, cat = -1;
    int ncat = 0; int32_t cat_codes[8];
    int has_cval = 0; double cval = 0;
    int64_t dur = -1;
    int has_legacy = 0; int64_t phase = 0;
    d->x_n = d->xi_n = d->xd_n = d->xdv_n = 0;
    int has_abs_us = 0; int64_t abs_us = 0; int has_delta_us = 0; int64_t delta_us = 0;
    int32_t legacy_name = -1;
    while (p < end) {
        if ((r = rd_field(d, &p, end, &f)) != 0) return r;
        switch (f.num) {
        case 9: WANT(0); type = (int64_t)f.v; has_type = 1; break;
        case 10: { WANT(0); int64_t c; if (intern_get(s, K_NAME, f.v, &c)) name = (int32_t)c; else d->unresolved_iids++; break; }
        case 23: { WANT(2); int32_t c = strtab_intern(&d->st, f.lp, f.le - f.lp); if (c < 0) return -1; name = c; break; }
        case 11: WANT(0); track = f.v; has_track = 1; break;
        case 3: {
            const uint8_t *q = f.lp, *qe = f.le;
            uint64_t one = f.v;
            if (f.wt == 0) { q = NULL; }
            else if (f.wt != 2) BAD("unexpected wire type for category_iids");
            for (;;) {
                uint64_t iid;
                if (q) { if (q >= qe) break; if (rd_varint(&q, qe, &iid) != 0) BAD("bad packed category_iids"); }
                else iid = one;
                int64_t c;
                if (intern_get(s, K_CAT, iid, &c)) { if (ncat < 8) cat_codes[ncat++] = (int32_t)c; }
                else d->unresolved_iids++;
                if (!q) break;
            }
            break;
        }
        case 22: { WANT(2); int32_t c = strtab_intern(&d->st, f.lp, f.le - f.lp); if (c < 0) return -1; if (ncat < 8) cat_codes[ncat++] = c; break; }
        case 30: WANT(0); has_cval = 1; cval = (double)(int64_t)f.v; break;
        case 44: WANT(1); has_cval = 1; memcpy(&cval, &f.v, 8); break;
        case 31: if ((r = rd_repeated(d, &f, 0, &d->x_uuid, &d->x_n, &d->x_cap)) != 0) return r; break;
        case 12: if ((r = rd_repeated(d, &f, 0, (uint64_t **)&d->x_ival, &d->xi_n, &d->xi_cap)) != 0) return r; break;
        case 45: if ((r = rd_repeated(d, &f, 0, &d->xd_uuid, &d->xd_n, &d->xd_cap)) != 0) return r; break;
        case 46: if ((r = rd_repeated(d, &f, 1, (uint64_t **)&d->xd_val, &d->xdv_n, &d->xdv_cap)) != 0) return r; break;
        case 16: WANT(0); has_abs_us = 1; abs_us = (int64_t)f.v; break;
        case 1: WANT(0); has_delta_us = 1; delta_us = (int64_t)f.v; break;
        case 6: {
            WANT(2);
            has_legacy = 1;
            const uint8_t *q = f.lp; Field g;
            while (q < f.le) {
                if ((r = rd_field(d, &q, f.le, &g)) != 0) return r;
                if (g.num == 1 && g.wt == 0) { int64_t c; if (intern_get(s, K_NAME, g.v, &c)) legacy_name = (int32_t)c; else d->unresolved_iids++; }
                else if (g.num == 2 && g.wt == 0) phase = (int64_t)g.v;
                else if (g.num == 3 && g.wt == 0) dur = (int64_t)g.v * 1000;
            }
            break;
        }
        case 4: case 36: case 47: case 42: case 48:
            if (f.num == 4 && f.wt != 2) BAD("unexpected wire type for debug_annotations");
            break;  /* second pass */
        default: break;
        }
    }
    if (name < 0 && legacy_name >= 0) name = legacy_name;
    /* timestamp */
    if (!has_ts) {
        if (has_abs_us) { ts = abs_us * 1000; clk = 0; }
        else if (has_delta_us) { s->ref_us += delta_us; ts = s->ref_us * 1000; clk = 0; }
    }
    /* type */
    int8_t etype = -1;   /* 1 begin, 2 end, 3 instant, 4 complete (legacy 'X') */
    int is_counter = has_type && type == 4;
    if (has_type && type >= 1 && type <= 3) etype = (int8_t)type;
    else if ((!has_type || type == 0) && has_legacy) {
        switch (phase) {
        case 'B': etype = 1; break;
        case 'E': etype = 2; break;
        case 'I': case 'i': case 'n': case 'R': etype = 3; break;
        case 'X': etype = 4; if (dur < 0) dur = 0; break;
        default: etype = -1;
        }
    }
    if (etype != 4) dur = -1;
    /* track */
    if (!has_track) {
        if (s->has_defaults && s->has_def_track) track = s->def_track;
        else if (s->has_thread) track = synth_thread_uuid(s->pid, s->tid);
        else track = 0;
    }
    /* category */
    if (ncat == 1) cat = cat_codes[0];
    else if (ncat > 1) {
        size_t need = 0;
        for (int i = 0; i < ncat; i++) need += d->st.ent_len[cat_codes[i]] + 1;
        if (need > d->cbuf_cap) { char *b = realloc(d->cbuf, need); if (!b) { PyErr_NoMemory(); return -1; } d->cbuf = b; d->cbuf_cap = need; }
        size_t o = 0;
        for (int i = 0; i < ncat; i++) {
            if (i) d->cbuf[o++] = ',';
            memcpy(d->cbuf + o, d->st.arena + d->st.ent_off[cat_codes[i]], d->st.ent_len[cat_codes[i]]);
            o += d->st.ent_len[cat_codes[i]];
        }
        cat = strtab_intern(&d->st, (const uint8_t *)d->cbuf, o);
        if (cat < 0) return -1;
    }
    int32_t row = -1;
    int ci = clock_index(d, clk);
    if (ci == -2) BAD("more than 4096 distinct clocks");
    int32_t ti = track_index(d, track);
    if (ti < 0) return -1;
    if (is_counter) {   /* TYPE_COUNTER */
        if (has_cval) {
            if (ct_reserve(&d->ct, d->ct.n + 1) < 0) return -1;
            size_t i = d->ct.n++;
            d->ct.ts[i] = ts; d->ct.clk[i] = (int16_t)ci; d->ct.track[i] = ti; d->ct.val[i] = cval; d->ct.name[i] = name;
        }
    } else if (etype >= 1) {
        if (ev_reserve(&d->ev, d->ev.n + 1) < 0) return -1;
        size_t i = d->ev.n++;
        row = (int32_t)i;
        d->ev.ts[i] = ts; d->ev.clk[i] = (int16_t)ci; d->ev.type[i] = etype; d->ev.track[i] = ti;
        d->ev.name[i] = name; d->ev.cat[i] = cat;
        if (etype == 4) {
            if (cx_reserve(&d->cx, d->cx.n + 1) < 0) return -1;
            d->cx.row[d->cx.n] = row; d->cx.dur[d->cx.n] = dur; d->cx.n++;
        }
    } else {
        d->unsupported_events++;
    }
    /* extra counters (any event type) */
    {
        uint64_t *uu = d->x_n ? d->x_uuid : s->def_extra;
        size_t nu = d->x_n ? d->x_n : (s->has_defaults ? s->n_def_extra : 0);
        size_t n = d->xi_n < nu ? d->xi_n : nu;
        if (n && ct_reserve(&d->ct, d->ct.n + n) < 0) return -1;
        for (size_t k = 0; k < n; k++) {
            size_t i = d->ct.n++;
            int32_t xt = track_index(d, uu[k]); if (xt < 0) return -1;
            d->ct.ts[i] = ts; d->ct.clk[i] = (int16_t)ci; d->ct.track[i] = xt; d->ct.val[i] = (double)d->x_ival[k]; d->ct.name[i] = -1;
        }
        uu = d->xd_n ? d->xd_uuid : s->def_extra_d;
        nu = d->xd_n ? d->xd_n : (s->has_defaults ? s->n_def_extra_d : 0);
        n = d->xdv_n < nu ? d->xdv_n : nu;
        if (n && ct_reserve(&d->ct, d->ct.n + n) < 0) return -1;
        for (size_t k = 0; k < n; k++) {
            size_t i = d->ct.n++;
            int32_t xt = track_index(d, uu[k]); if (xt < 0) return -1;
            d->ct.ts[i] = ts; d->ct.clk[i] = (int16_t)ci; d->ct.track[i] = xt; d->ct.val[i] = d->xd_val[k]; d->ct.name[i] = -1;
        }
    }
    if (row < 0) return 0;
    /* second pass: annotations and flows */
    p = start;
    while (p < end) {
        if ((r = rd_field(d, &p, end, &f)) != 0) return r;
        switch (f.num) {
        case 4: if ((r = parse_annotation(d, s, f.lp, f.le, row)) != 0) return r; break;
        case 36: case 47: case 42: case 48: {
            int fixed = f.num == 47 || f.num == 48;
            int term = f.num == 42 || f.num == 48;
            size_t before = d->x_n; d->x_n = 0;
            (void)before;
            if ((r = rd_repeated(d, &f, fixed, &d->x_uuid, &d->x_n, &d->x_cap)) != 0) return r;
            if (fl_reserve(&d->fl, d->fl.n + d->x_n) < 0) return -1;
            for (size_t k = 0; k < d->x_n; k++) {
                size_t i = d->fl.n++;
                d->fl.ev[i] = row; d->fl.id[i] = d->x_uuid[k]; d->fl.term[i] = (int8_t)term;
            }
            break;
        }
        default: break;
        }
    }
    return 0;
}

static int feed_trace(Decoder *d, const uint8_t *buf, Py_ssize_t len, long long base, int nested, Py_ssize_t *consumed);

static int process_packet(Decoder *d, const uint8_t *p, const uint8_t *end) {
    Field f; int r;
    int has_ts = 0; uint64_t ts = 0; int has_clk = 0; uint32_t clk = 0; uint32_t seq = 0;
    uint64_t flags = 0; int cleared = 0, dropped = 0;
    const uint8_t *te = NULL, *tee = NULL, *in = NULL, *ine = NULL, *df = NULL, *dfe = NULL;
    const uint8_t *cs = NULL, *cse = NULL, *td = NULL, *tde = NULL, *th = NULL, *the = NULL, *pr = NULL, *pre = NULL;
    const uint8_t *cp = NULL, *cpe = NULL;
    while (p < end) {
        if ((r = rd_field(d, &p, end, &f)) != 0) return r;
        switch (f.num) {
        case 8: WANT(0); has_ts = 1; ts = f.v; break;
        case 58: WANT(0); has_clk = 1; clk = (uint32_t)f.v; break;
        case 10: WANT(0); seq = (uint32_t)f.v; break;
        case 13: WANT(0); flags = f.v; break;
        case 41: WANT(0); cleared = f.v != 0; break;
        case 42: WANT(0); dropped = f.v != 0; break;
        case 11: WANT(2); te = f.lp; tee = f.le; break;
        case 12: WANT(2); in = f.lp; ine = f.le; break;
        case 59: WANT(2); df = f.lp; dfe = f.le; break;
        case 6: WANT(2); cs = f.lp; cse = f.le; break;
        case 60: WANT(2); td = f.lp; tde = f.le; break;
        case 44: WANT(2); th = f.lp; the = f.le; break;
        case 43: WANT(2); pr = f.lp; pre = f.le; break;
        case 50: WANT(2); cp = f.lp; cpe = f.le; break;
        default: break;
        }
    }
    d->packets++;
    SeqState *s = get_seq(d, seq);
    if (!s) return -1;
    if ((flags & 1) || cleared) seq_clear(s);
    else if (dropped) s->valid = 0;
    if (df && (r = parse_defaults(d, s, df, dfe)) != 0) return r;
    if (in && (r = parse_interned(d, s, in, ine)) != 0) return r;
    if (cs && (r = parse_clock_snapshot(d, s, cs, cse)) != 0) return r;
    if (th) { if ((r = parse_thread_desc(d, s, th, the)) != 0) return r; if (add_desc(d, 3, s, th, the) < 0) return -1; }
    if (pr && add_desc(d, 2, s, pr, pre) < 0) return -1;
    if (td && add_desc(d, 1, s, td, tde) < 0) return -1;
    if (cp) {
        if (d->decompress == Py_None || d->depth > 4) return 0;
        PyObject *raw = PyBytes_FromStringAndSize((const char *)cp, cpe - cp);
        if (!raw) return -1;
        PyObject *out = PyObject_CallOneArg(d->decompress, raw);
        Py_DECREF(raw);
        if (!out) { PyErr_Clear(); BAD("compressed_packets could not be inflated"); }
        char *ob; Py_ssize_t ol;
        if (PyBytes_AsStringAndSize(out, &ob, &ol) < 0) { Py_DECREF(out); return -1; }
        Py_ssize_t consumed = 0;
        d->depth++;
        r = feed_trace(d, (const uint8_t *)ob, ol, -1, 1, &consumed);
        d->depth--;
        Py_DECREF(out);
        if (r != 0) return r;
        if (consumed != ol) BAD("truncated packet inside compressed_packets");
        return 0;
    }
    if (te) {
        if ((flags & 2) && !s->valid) { d->skipped_no_state++; return 0; }
        int64_t key = 0, t = 0;
        uint32_t c = has_clk ? clk : (s->has_defaults ? s->def_clock : 0);
        if (has_ts) t = resolve_ts(d, s, c, ts, &key);
        return parse_track_event(d, s, te, tee, has_ts, t, key);
    }
    return 0;
}

/* Walk Trace framing. Returns 0 (consumed set: bytes of complete packets), -1 Python error, -2 bad data
 * (d->has_error set with the offset). Nested (decompressed) buffers report errors at the outer packet. */
static int feed_trace(Decoder *d, const uint8_t *buf, Py_ssize_t len, long long base, int nested, Py_ssize_t *consumed) {
    Py_ssize_t pos = 0;
    while (pos < len) {
        Py_ssize_t start = pos;
        const uint8_t *p = buf + pos;
        if (*p != 0x0a) {
            snprintf(d->err_msg, sizeof d->err_msg, "unexpected byte 0x%02x where a TracePacket should start", *p);
            *consumed = start;
            return -2;
        }
        p++;
        uint64_t n;
        int rv = rd_varint(&p, buf + len, &n);
        if (rv == -1) break;   /* length not complete yet */
        if (rv == -2 || n > ((uint64_t)1 << 31)) {
            snprintf(d->err_msg, sizeof d->err_msg, "bad TracePacket length");
            *consumed = start;
            return -2;
        }
        if ((uint64_t)(buf + len - p) < n) break;   /* packet not complete yet */
        /* remember column sizes to roll back a bad packet */
        size_t ev0 = d->ev.n, ct0 = d->ct.n, ar0 = d->ar.n, fl0 = d->fl.n, cx0 = d->cx.n;
        Py_ssize_t ob0 = PyList_GET_SIZE(d->objects), ds0 = PyList_GET_SIZE(d->descs), cl0 = PyList_GET_SIZE(d->clocks);
        int r = process_packet(d, p, p + n);
        if (r != 0) {
            if (nested) return r;
            d->ev.n = ev0; d->ct.n = ct0; d->ar.n = ar0; d->fl.n = fl0; d->cx.n = cx0;
            if (r == -1) return -1;
            PyList_SetSlice(d->objects, ob0, PyList_GET_SIZE(d->objects), NULL);
            PyList_SetSlice(d->descs, ds0, PyList_GET_SIZE(d->descs), NULL);
            PyList_SetSlice(d->clocks, cl0, PyList_GET_SIZE(d->clocks), NULL);
            *consumed = start;
            return -2;
        }
        pos = (p - buf) + (Py_ssize_t)n;
        (void)base;
    }
    *consumed = pos;
    return 0;
}

/* ------------------------------------------------------------ Decoder type */

static int Decoder_init(Decoder *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"decompress", "size_hint", NULL};
    PyObject *decompress = Py_None; Py_ssize_t hint = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|On", kwlist, &decompress, &hint)) return -1;
    self->objects = PyList_New(0); self->descs = PyList_New(0); self->clocks = PyList_New(0);
    if (!self->objects || !self->descs || !self->clocks) return -1;
    self->decompress = Py_NewRef(decompress);
    if (hint > 0) {
        /* generous reservations: untouched pages cost nothing */
        if (ev_reserve(&self->ev, (size_t)(hint / 16) + 16) < 0) return -1;
        if (ar_reserve(&self->ar, (size_t)(hint / 24) + 16) < 0) return -1;
    }
    return 0;
}

static void Decoder_dealloc(Decoder *self) {
    EvCols *e = &self->ev; free(e->ts); free(e->clk); free(e->track); free(e->name); free(e->cat); free(e->type);
    CtCols *c = &self->ct; free(c->ts); free(c->clk); free(c->track); free(c->val); free(c->name);
    free(self->cx.row); free(self->cx.dur); free(self->tracks); map_free(&self->trackmap);
    ArCols *a = &self->ar; free(a->ev); free(a->key); free(a->type); free(a->val);
    FlCols *l = &self->fl; free(l->ev); free(l->id); free(l->term);
    strtab_free(&self->st);
    for (size_t i = 0; i < self->nseq; i++) {
        map_free(&self->seqs[i].intern); free(self->seqs[i].def_extra); free(self->seqs[i].def_extra_d);
        for (int k = 0; k < 5; k++) free(self->seqs[i].dense[k]);
    }
    free(self->seqs); map_free(&self->seqmap); map_free(&self->gclock_mult);
    free(self->x_uuid); free(self->x_ival); free(self->xd_uuid); free(self->xd_val); free(self->cbuf);
    Py_XDECREF(self->objects); Py_XDECREF(self->descs); Py_XDECREF(self->clocks); Py_XDECREF(self->decompress);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* feed(buf, base_offset) -> consumed bytes. On bad data: self.error = (offset, message). */
static PyObject *Decoder_feed(Decoder *self, PyObject *args) {
    Py_buffer view; long long base = 0;
    if (!PyArg_ParseTuple(args, "y*|L", &view, &base)) return NULL;
    if (self->has_error) { PyBuffer_Release(&view); return PyLong_FromLong(0); }
    Py_ssize_t consumed = 0;
    int r = feed_trace(self, (const uint8_t *)view.buf, view.len, base, 0, &consumed);
    PyBuffer_Release(&view);
    if (r == -1) return NULL;
    if (r == -2) { self->has_error = 1; self->err_offset = base + consumed; }
    return PyLong_FromSsize_t(consumed);
}

static PyObject *Decoder_get_error(Decoder *self, void *c) {
    (void)c;
    if (!self->has_error) Py_RETURN_NONE;
    return Py_BuildValue("(Ls)", self->err_offset, self->err_msg);
}

static PyObject *take_col(void **ptr, size_t n, size_t esize) {
    void *data = *ptr; *ptr = NULL;
    if (!data) { data = malloc(1); if (!data) return PyErr_NoMemory(); }
    else if (n) { void *shrunk = realloc(data, n * esize); if (shrunk) data = shrunk; }
    return make_buf(data, (Py_ssize_t)(n * esize));
}

#define PUT(dict, key, expr) do { PyObject *o_ = (expr); if (!o_ || PyDict_SetItemString(dict, key, o_) < 0) { Py_XDECREF(o_); Py_DECREF(dict); return NULL; } Py_DECREF(o_); } while (0)

/* finish() -> dict of columns (buffers) and lists. The decoder is empty afterwards. */
static PyObject *Decoder_finish(Decoder *self, PyObject *unused) {
    (void)unused;
    PyObject *out = PyDict_New();
    if (!out) return NULL;
    size_t n = self->ev.n;
    PUT(out, "ev_ts", take_col((void **)&self->ev.ts, n, 8));
    PUT(out, "ev_clk", take_col((void **)&self->ev.clk, n, 2));
    PUT(out, "ev_track", take_col((void **)&self->ev.track, n, 4));
    PUT(out, "ev_name", take_col((void **)&self->ev.name, n, 4));
    PUT(out, "ev_cat", take_col((void **)&self->ev.cat, n, 4));
    PUT(out, "ev_type", take_col((void **)&self->ev.type, n, 1));
    self->ev.n = self->ev.cap = 0;
    n = self->ct.n;
    PUT(out, "ct_ts", take_col((void **)&self->ct.ts, n, 8));
    PUT(out, "ct_clk", take_col((void **)&self->ct.clk, n, 2));
    PUT(out, "ct_track", take_col((void **)&self->ct.track, n, 4));
    PUT(out, "ct_val", take_col((void **)&self->ct.val, n, 8));
    PUT(out, "ct_name", take_col((void **)&self->ct.name, n, 4));
    self->ct.n = self->ct.cap = 0;
    n = self->ar.n;
    PUT(out, "ar_ev", take_col((void **)&self->ar.ev, n, 4));
    PUT(out, "ar_key", take_col((void **)&self->ar.key, n, 4));
    PUT(out, "ar_type", take_col((void **)&self->ar.type, n, 1));
    PUT(out, "ar_val", take_col((void **)&self->ar.val, n, 8));
    self->ar.n = self->ar.cap = 0;
    n = self->fl.n;
    PUT(out, "fl_ev", take_col((void **)&self->fl.ev, n, 4));
    PUT(out, "fl_id", take_col((void **)&self->fl.id, n, 8));
    PUT(out, "fl_term", take_col((void **)&self->fl.term, n, 1));
    self->fl.n = self->fl.cap = 0;
    n = self->cx.n;
    PUT(out, "cx_row", take_col((void **)&self->cx.row, n, 4));
    PUT(out, "cx_dur", take_col((void **)&self->cx.dur, n, 8));
    self->cx.n = self->cx.cap = 0;
    PUT(out, "tracks", take_col((void **)&self->tracks, self->ntracks, 8));
    self->ntracks = self->captracks = 0; map_clear(&self->trackmap);
    {
        int64_t *ck = malloc((self->nclocks + 1) * 8);
        if (!ck) { Py_DECREF(out); return PyErr_NoMemory(); }
        memcpy(ck, self->clock_keys, self->nclocks * 8);
        PUT(out, "clock_keys", take_col((void **)&ck, self->nclocks, 8));
    }
    PyObject *strings = PyList_New((Py_ssize_t)self->st.n);
    if (!strings) { Py_DECREF(out); return NULL; }
    for (size_t i = 0; i < self->st.n; i++) {
        PyObject *s = intern_str_obj(self, (int32_t)i);
        if (!s) { Py_DECREF(strings); Py_DECREF(out); return NULL; }
        PyList_SET_ITEM(strings, (Py_ssize_t)i, s);
    }
    PUT(out, "strings", strings);
    PUT(out, "objects", Py_NewRef(self->objects));
    PUT(out, "descs", Py_NewRef(self->descs));
    PUT(out, "clocks", Py_NewRef(self->clocks));
    PUT(out, "packets", PyLong_FromLongLong(self->packets));
    PUT(out, "skipped_no_state", PyLong_FromLongLong(self->skipped_no_state));
    PUT(out, "unresolved_iids", PyLong_FromLongLong(self->unresolved_iids));
    PUT(out, "unsupported_events", PyLong_FromLongLong(self->unsupported_events));
    return out;
}

static PyMethodDef Decoder_methods[] = {
    {"feed", (PyCFunction)Decoder_feed, METH_VARARGS, "feed(buf, base_offset=0) -> bytes consumed (complete packets)"},
    {"finish", (PyCFunction)Decoder_finish, METH_NOARGS, "finish() -> dict of columns"},
    {NULL}
};
static PyGetSetDef Decoder_getset[] = {
    {"error", (getter)Decoder_get_error, NULL, "(offset, message) of the first bad packet, or None", NULL},
    {NULL}
};
static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "prismkit.trace._wire.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Streaming Perfetto TrackEvent decoder into columns.",
    .tp_methods = Decoder_methods,
    .tp_getset = Decoder_getset,
    .tp_init = (initproc)Decoder_init,
    .tp_new = PyType_GenericNew,
};

/* ----------------------------------------------------------- match_slices */

/* match_slices(order, type, track, ts, dur, sid, ns) -> (se, depth, parent, e2s, unmatched_ends)
 * order: int32 event rows sorted by (track, ts, row); type int8; track int32; ts int64;
 * dur: int64 per event, read only for complete events (type 4; may be empty otherwise);
 * sid: int32 slice id of each non-END event (-1 for END). All outputs int32:
 * se[s]: row of the END event closing slice s (-1: none); depth; parent slice or -1;
 * e2s[row]: slice of every event (END events: the slice they close, or -1). */
static PyObject *match_slices(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer bo, bty, btr, bts, bdu, bsid; Py_ssize_t ns;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*n", &bo, &bty, &btr, &bts, &bdu, &bsid, &ns)) return NULL;
    Py_ssize_t n = bo.len / 4, ndur = bdu.len / 8;
    const int32_t *order = bo.buf; const int8_t *type = bty.buf; const int32_t *track = btr.buf;
    const int64_t *ts = bts.buf; const int64_t *dur = bdu.buf; const int32_t *sid = bsid.buf;
    int32_t *se = malloc((ns + 1) * 4), *par = malloc((ns + 1) * 4), *e2s = malloc((n + 1) * 4);
    int32_t *dep = malloc((ns + 1) * 4), *stack = malloc((ns + 1) * 4);
    int64_t *stack_end = malloc((ns + 1) * 8);
    PyObject *res = NULL;
    long long unmatched = 0;
    int bad = 0;
    if (!se || !par || !e2s || !dep || !stack || !stack_end) { PyErr_NoMemory(); goto out; }
    if (bty.len < n || btr.len / 4 < n || bts.len / 8 < n || bsid.len / 4 < n) {
        PyErr_SetString(PyExc_ValueError, "match_slices: columns of different lengths"); goto out;
    }
    for (Py_ssize_t k = 0; k < ns; k++) { se[k] = -1; par[k] = -1; dep[k] = 0; }
    Py_ssize_t sp = 0;
    int32_t cur = 0; int first = 1;
    const int64_t OPEN = INT64_MAX;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t k = 0; k < n; k++) {
        int32_t i = order[k];
        if (i < 0 || i >= n) { bad = 1; break; }
        if (first || track[i] != cur) { sp = 0; cur = track[i]; first = 0; }
        int64_t t = ts[i];
        while (sp > 0 && stack_end[sp - 1] != OPEN && stack_end[sp - 1] <= t) sp--;
        int8_t ty = type[i];
        if (ty == 2) {
            Py_ssize_t j = sp - 1;
            while (j >= 0 && stack_end[j] != OPEN) j--;
            if (j < 0) { e2s[i] = -1; unmatched++; continue; }
            int32_t sl = stack[j];
            se[sl] = i; e2s[i] = sl; sp = j;
            continue;
        }
        int32_t sl = sid[i];
        if (sl < 0 || sl >= ns) { bad = 1; break; }
        dep[sl] = (int32_t)sp; par[sl] = sp ? stack[sp - 1] : -1;
        e2s[i] = sl;
        if (ty == 1) { stack[sp] = sl; stack_end[sp] = OPEN; sp++; }
        else if (ty == 4) {
            int64_t d = i < ndur ? dur[i] : 0;
            stack[sp] = sl; stack_end[sp] = t + (d > 0 ? d : 0); sp++;
        }
    }
    Py_END_ALLOW_THREADS
    if (bad) { PyErr_SetString(PyExc_ValueError, "match_slices: inconsistent input"); goto out; }
    PyObject *o_se = take_col((void **)&se, ns, 4), *o_dep = take_col((void **)&dep, ns, 4);
    PyObject *o_par = take_col((void **)&par, ns, 4), *o_e2s = take_col((void **)&e2s, n, 4);
    if (o_se && o_dep && o_par && o_e2s)
        res = Py_BuildValue("(NNNNL)", o_se, o_dep, o_par, o_e2s, unmatched);
    else { Py_XDECREF(o_se); Py_XDECREF(o_dep); Py_XDECREF(o_par); Py_XDECREF(o_e2s); }
out:
    free(se); free(par); free(e2s); free(dep); free(stack); free(stack_end);
    PyBuffer_Release(&bo); PyBuffer_Release(&bty); PyBuffer_Release(&btr); PyBuffer_Release(&bts);
    PyBuffer_Release(&bdu); PyBuffer_Release(&bsid);
    return res;
}

/* group_order(codes, ncodes, pre) -> int32 order: rows grouped by code (int32, 0..ncodes-1), stable
 * with respect to pre (an int32 row order) or to row order when pre is None. Counting sort. */
static PyObject *group_order(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer bc; Py_ssize_t nc; PyObject *pre_obj;
    if (!PyArg_ParseTuple(args, "y*nO", &bc, &nc, &pre_obj)) return NULL;
    Py_buffer bp; int has_pre = pre_obj != Py_None;
    if (has_pre && PyObject_GetBuffer(pre_obj, &bp, PyBUF_SIMPLE) < 0) { PyBuffer_Release(&bc); return NULL; }
    Py_ssize_t n = bc.len / 4;
    const int32_t *codes = bc.buf; const int32_t *pre = has_pre ? bp.buf : NULL;
    int64_t *cnt = calloc(nc + 1, 8);
    int32_t *out = malloc((n + 1) * 4);
    PyObject *res = NULL;
    int bad = 0;
    if (!cnt || !out) { PyErr_NoMemory(); goto done; }
    if (has_pre && bp.len / 4 != n) { PyErr_SetString(PyExc_ValueError, "group_order: lengths differ"); goto done; }
    for (Py_ssize_t i = 0; i < n; i++) { int32_t c = codes[i]; if (c < 0 || c >= nc) { bad = 1; break; } cnt[c + 1]++; }
    if (bad) { PyErr_SetString(PyExc_ValueError, "group_order: code out of range"); goto done; }
    for (Py_ssize_t c = 0; c < nc; c++) cnt[c + 1] += cnt[c];
    for (Py_ssize_t k = 0; k < n; k++) {
        int32_t i = pre ? pre[k] : (int32_t)k;
        if (i < 0 || i >= n) { PyErr_SetString(PyExc_ValueError, "group_order: bad row"); goto done; }
        out[cnt[codes[i]]++] = i;
    }
    res = take_col((void **)&out, n, 4);
done:
    free(cnt); free(out);
    PyBuffer_Release(&bc); if (has_pre) PyBuffer_Release(&bp);
    return res;
}

/* ------------------------------------------------------------- build_args */

static PyObject *arg_value(int8_t t, int64_t x, PyObject *strings, Py_ssize_t nstr, PyObject *objects, Py_ssize_t nobj) {
    switch (t) {
    case A_INT: return PyLong_FromLongLong(x);
    case A_UINT: case A_PTR: return PyLong_FromUnsignedLongLong((uint64_t)x);
    case A_DOUBLE: { double dd; memcpy(&dd, &x, 8); return PyFloat_FromDouble(dd); }
    case A_BOOL: return PyBool_FromLong(x != 0);
    case A_STR: case A_JSON: return (x >= 0 && x < nstr) ? Py_NewRef(PyList_GET_ITEM(strings, x)) : Py_NewRef(Py_None);
    case A_OBJ: return (x >= 0 && x < nobj) ? Py_NewRef(PyList_GET_ITEM(objects, x)) : Py_NewRef(Py_None);
    default: return Py_NewRef(Py_None);
    }
}

/* build_args(begin_rows, end_rows, ev_offsets, key, type, val, strings, objects) -> list of dict or None.
 * rows and offsets are int32.
 * A slice's args are its BEGIN event's entries then its END event's (end_rows[k] = -1: none); later keys win. */
static PyObject *build_args(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer bb, be, boff, bkey, bty, bval; PyObject *strings, *objects;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*O!O!", &bb, &be, &boff, &bkey, &bty, &bval,
                          &PyList_Type, &strings, &PyList_Type, &objects)) return NULL;
    const int32_t *brow = bb.buf, *erow = be.buf, *off = boff.buf; const int32_t *key = bkey.buf;
    const int8_t *ty = bty.buf; const int64_t *val = bval.buf;
    Py_ssize_t n = bb.len / 4, nstr = PyList_GET_SIZE(strings), nobj = PyList_GET_SIZE(objects);
    Py_ssize_t nev = boff.len / 4 - 1;
    PyObject *out = PyList_New(n);
    if (!out) goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        int32_t rows[2] = {brow[k], erow[k]};
        PyObject *dct = NULL;
        for (int h = 0; h < 2; h++) {
            int32_t r = rows[h];
            if (r < 0 || r >= nev) continue;
            for (int32_t j = off[r]; j < off[r + 1]; j++) {
                int32_t kc = key[j];
                if (kc < 0 || kc >= nstr) continue;
                if (!dct) { dct = PyDict_New(); if (!dct) { Py_CLEAR(out); goto done; } }
                PyObject *v = arg_value(ty[j], val[j], strings, nstr, objects, nobj);
                if (!v || PyDict_SetItem(dct, PyList_GET_ITEM(strings, kc), v) < 0) {
                    Py_XDECREF(v); Py_DECREF(dct); Py_CLEAR(out); goto done;
                }
                Py_DECREF(v);
            }
        }
        PyList_SET_ITEM(out, k, dct ? dct : Py_NewRef(Py_None));
    }
done:
    PyBuffer_Release(&bb); PyBuffer_Release(&be); PyBuffer_Release(&boff); PyBuffer_Release(&bkey);
    PyBuffer_Release(&bty); PyBuffer_Release(&bval);
    return out;
}

/* scan_packets(buf, pos=0) -> (rows, end): the complete Trace.packet entries of buf from pos, without
 * decoding them (TraceTail's index of a growing trace). rows: int64 quadruples (start, end, ts, flags)
 * as a Buf; start..end is the framed packet, ts its timestamp (field 8) or -1, flags 1 = track_event
 * (field 11), 2 = interned_data (field 12). end: where the last complete packet ends. ValueError on
 * bytes that are not Trace.packet framing. The pure-Python twin is prismkit.trace.tail._scan_py. */
static PyObject *scan_packets(PyObject *self, PyObject *args) {
    Py_buffer b;
    Py_ssize_t pos = 0;
    if (!PyArg_ParseTuple(args, "y*|n", &b, &pos)) return NULL;
    const uint8_t *base = b.buf, *end = base + b.len;
    size_t cap = 1024, n = 0;
    int64_t *rows = malloc(cap * 4 * sizeof(int64_t));
    const char *err = NULL;
    if (!rows) { PyBuffer_Release(&b); return PyErr_NoMemory(); }
    const uint8_t *p = base + (pos < 0 ? 0 : pos > b.len ? b.len : pos);
    Py_BEGIN_ALLOW_THREADS
    while (p < end) {
        const uint8_t *q = p;
        uint64_t tag, len;
        if (rd_varint(&q, end, &tag) != 0) break;
        if (tag != 0x0A) { err = "not a Trace.packet"; break; }
        int r = rd_varint(&q, end, &len);
        if (r == -1) break;
        if (r != 0 || len > (uint64_t)(end - q)) { if (r != 0) err = "bad packet length"; break; }
        const uint8_t *pe = q + len;
        int64_t ts = -1, flags = 0;
        while (q < pe) {
            uint64_t key, v;
            if (rd_varint(&q, pe, &key) != 0) { err = "bad field in a packet"; break; }
            int wt = (int)(key & 7);
            uint64_t field = key >> 3;
            if (wt == 0) {
                if (rd_varint(&q, pe, &v) != 0) { err = "bad varint in a packet"; break; }
                if (field == 8) ts = (int64_t)v;
            } else if (wt == 2) {
                if (rd_varint(&q, pe, &v) != 0 || v > (uint64_t)(pe - q)) { err = "bad length in a packet"; break; }
                if (field == 11) flags |= 1; else if (field == 12) flags |= 2;
                q += v;
            } else if (wt == 1) { q += 8; }
            else if (wt == 5) { q += 4; }
            else { err = "bad wire type in a packet"; break; }
        }
        if (err) break;
        if (q != pe) { err = "a field runs past its packet"; break; }
        if (n == cap) {
            int64_t *grown = realloc(rows, cap * 2 * 4 * sizeof(int64_t));
            if (!grown) { err = "out of memory"; break; }
            rows = grown; cap *= 2;
        }
        rows[4 * n] = p - base; rows[4 * n + 1] = pe - base; rows[4 * n + 2] = ts; rows[4 * n + 3] = flags;
        n++;
        p = pe;
    }
    Py_END_ALLOW_THREADS
    Py_ssize_t stop = p - base;
    PyBuffer_Release(&b);
    if (err) {
        free(rows);
        PyErr_Format(PyExc_ValueError, "%s at byte %zd", err, stop);
        return NULL;
    }
    PyObject *buf = make_buf(rows, (Py_ssize_t)(n * 4 * sizeof(int64_t)));
    if (!buf) return NULL;
    return Py_BuildValue("(Nn)", buf, stop);
}

static PyMethodDef module_methods[] = {
    {"match_slices", match_slices, METH_VARARGS, "Pair BEGIN/END events per track; see reader.py."},
    {"build_args", build_args, METH_VARARGS, "Build argument dicts for slice rows."},
    {"group_order", group_order, METH_VARARGS, "Stable counting sort of rows by small integer codes."},
    {"scan_packets", scan_packets, METH_VARARGS, "Index the complete packets of a trace buffer; see tail.py."},
    {NULL}
};
static struct PyModuleDef wiremodule = {PyModuleDef_HEAD_INIT, "_wire", "Native Perfetto trace decoding.", -1, module_methods};

PyMODINIT_FUNC PyInit__wire(void) {
    if (PyType_Ready(&BufType) < 0 || PyType_Ready(&DecoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&wiremodule);
    if (!m) return NULL;
    Py_INCREF(&DecoderType);
    if (PyModule_AddObject(m, "Decoder", (PyObject *)&DecoderType) < 0) { Py_DECREF(&DecoderType); Py_DECREF(m); return NULL; }
    Py_INCREF(&BufType);
    if (PyModule_AddObject(m, "Buf", (PyObject *)&BufType) < 0) { Py_DECREF(&BufType); Py_DECREF(m); return NULL; }
    PyModule_AddIntConstant(m, "ABI", 3);   /* bump with any change of the functions' contracts (_backend.ABI) */
    return m;
}
