// Python context of an engine step, read in BPF from the live interpreter.
//
// Tail-called by the GPU core at every device-to-host copy (the copy that
// closes a step's launches), on the thread that issued it:
//   py_walk     finds the thread's PyThreadState (interpreter thread list,
//               matched on the native thread id; cached per thread), walks
//               the frame chain (code object of each frame, innermost first,
//               interpreter-internal shim frames skipped) into the step;
//   py_classify for each code object not seen before: reads its qualified
//               name (ring buffer record, so user space can name frames even
//               after the target exited), matches it against the configured
//               functions and finds the configured local variable's slot;
//   py_attr     per configured attribute: the innermost matching frame's
//               local, then one attribute per tail call (instance __dict__:
//               inline values / shared-key values / combined dict, per
//               version), then the int value or len() into the step.
// The pack generates the PY_* constants (offsets, addresses) for the target.

#define PY_WALK_MAX 32          // frames examined (the step keeps GPU_PY_FRAMES of them)
#define PY_MAX_SPECS GPU_PY_ATTRS
#define PY_MAX_PATH 4           // attributes after the local: local.a.b.c.d (a power of two: used as a mask)
#define PY_MAX_THREADS 128      // interpreter thread states scanned to find the calling thread
#define PY_MAX_KEYS 64          // dict entries scanned per attribute lookup
#define PY_MAX_LOCALS 64        // local names scanned per code object (once)
#define PY_CLASSIFY_BATCH 4     // code objects classified per tail call
#define PY_STR 64               // names compared: up to 63 bytes, ASCII
#define GPU_REC_PYCODE 3


struct py_str {                 // a wanted name, zero padded
    u32 len;
    u32 _pad;
    u64 w[PY_STR / 8];
};

struct py_spec {
    u32 qual;                   // index in py_strings: function qualified name (3.10: its last part)
    u32 local;                  // index in py_strings: local variable name
    u32 n_path;
    u32 mode;
    u32 path[PY_MAX_PATH];      // indexes in py_strings: attribute names
    u32 _pad;
};

struct py_code_info {
    s32 local[PY_MAX_SPECS];    // slot of spec i's local in this code's frame, -1: the code is not spec i's
};

struct py_scratch {
    u64 frame[PY_WALK_MAX];
    u64 code[PY_WALK_MAX];
    u32 n;
    u32 cursor;
    u32 spec;
    u32 step;
    u64 obj;
    u64 buf[PY_STR / 8];
};

struct py_code_rec {
    u32 kind;                   // GPU_REC_PYCODE
    u32 len;
    u64 code;
    s32 firstlineno;
    u32 _pad;
    char name[PY_STR];
};

BPF_ARRAY(py_strings, struct py_str, 16);
BPF_ARRAY(py_specs, struct py_spec, PY_MAX_SPECS);
BPF_PERCPU_ARRAY(py_scratch, struct py_scratch, 1);
BPF_HASH(py_tstate, u32, u64, 4096);                      // tid -> PyThreadState *
BPF_TABLE("lru_hash", u64, struct py_code_info, py_codes, 8192); // code object -> what it is to the specs
BPF_PROG_ARRAY(py_progs, 4);                               // 1: py_classify, 2: py_attr
BPF_PERCPU_ARRAY(py_stats, u64, 4);                        // 0 walks, 1 no thread state, 2 attrs read, 3 attrs failed

static __always_inline u64 py_read_u64(u64 addr) {
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline void py_stat(int i) {
    u64 *v = py_stats.lookup(&i);
    if (v) (*v)++;
}

// Is the str object at `s` equal to wanted string `want`? (compact ASCII only)
static __always_inline int py_str_eq(u64 s, struct py_str *want, struct py_scratch *sc) {
    if (!s || !want) return 0;
    s64 len = (s64)py_read_u64(s + PY_OFF_UNICODE_LENGTH);
    if (len != (s64)want->len || len <= 0 || len >= PY_STR) return 0;
    u32 state = 0;
    bpf_probe_read_user(&state, sizeof(state), (void *)(s + PY_OFF_UNICODE_STATE));
    if ((state & 0x60) != 0x60) return 0;  // compact (bit 5) and ascii (bit 6)
    #pragma unroll
    for (int i = 0; i < PY_STR / 8; i++) sc->buf[i] = 0;
    u32 n = (u32)len & (PY_STR - 1);
    if (bpf_probe_read_user(sc->buf, n, (void *)(s + PY_OFF_UNICODE_ASCII_DATA)) != 0) return 0;
    u64 diff = 0;
    #pragma unroll
    for (int i = 0; i < PY_STR / 8; i++) diff |= sc->buf[i] ^ want->w[i];
    return diff == 0;
}

#define PY_RETRY_EVERY 64         // a thread with no thread state is looked for again every 64th copy

static __always_inline u64 py_find_tstate(u32 tid) {
    u64 *cached = py_tstate.lookup(&tid);
    if (cached && (*cached & 1)) {  // negative entry: (misses << 1) | 1 (thread states are 8-aligned)
        u64 misses = *cached >> 1;
        *cached = ((misses + 1) << 1) | 1;
        if (misses % PY_RETRY_EVERY != 0) return 0;
    }
#if PY_MINOR >= 11
    if (cached && *cached && !(*cached & 1)) {
        u64 ntid = py_read_u64(*cached + PY_OFF_TSTATE_NATIVE_THREAD_ID);
        if ((u32)ntid == tid) return *cached;
    }
    u64 want = tid;
#else
    // 3.10 keeps only pthread_self(): the kernel tid is in glibc's struct pthread (offset found at attach).
    u64 want = tid;
    if (cached && *cached && !(*cached & 1)) {
        u32 t2 = 0;
        bpf_probe_read_user(&t2, sizeof(t2), (void *)(py_read_u64(*cached + PY_OFF_TSTATE_THREAD_ID) + PY_OFF_PTHREAD_TID));
        if (t2 == tid) return *cached;
    }
#endif
    u64 interp = py_read_u64(PY_RUNTIME_ADDR + PY_OFF_RUNTIME_INTERPRETERS_HEAD);
    if (!interp) return 0;
    u64 t = py_read_u64(interp + PY_OFF_INTERP_THREADS_HEAD);
    #pragma clang loop unroll(disable)
    for (int i = 0; i < PY_MAX_THREADS; i++) {
        if (!t) break;
#if PY_MINOR >= 11
        u64 id = py_read_u64(t + PY_OFF_TSTATE_NATIVE_THREAD_ID) & 0xffffffff;
#else
        u32 tid2 = 0;
        bpf_probe_read_user(&tid2, sizeof(tid2), (void *)(py_read_u64(t + PY_OFF_TSTATE_THREAD_ID) + PY_OFF_PTHREAD_TID));
        u64 id = tid2;
#endif
        if (id == want) {
            py_tstate.update(&tid, &t);
            return t;
        }
        t = py_read_u64(t + PY_OFF_TSTATE_NEXT);
    }
    if (!cached) {  // not a Python thread (yet): remember, so its copies skip the scan
        u64 neg = (1 << 1) | 1;
        py_tstate.update(&tid, &neg);
    }
    return 0;
}

int py_walk(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct gpu_step *s = gpu_acc.lookup(&tid);
    if (!s) return 0;
    int zero = 0;
    struct py_scratch *sc = py_scratch.lookup(&zero);
    if (!sc) return 0;
    py_stat(0);
    s->py_depth = 0;
    s->py_attr_ok = 0;
    s->py_flags = 0;
    sc->n = 0;
    u64 ts = py_find_tstate(tid);
    if (!ts) {
        py_stat(1);
        return 0;
    }
    s->py_flags |= 1;
#if PY_MINOR >= 13
    u64 frame = py_read_u64(ts + PY_OFF_TSTATE_CURRENT_FRAME);
#elif PY_MINOR >= 11
    u64 frame = py_read_u64(py_read_u64(ts + PY_OFF_TSTATE_CFRAME) + PY_OFF_CFRAME_CURRENT_FRAME);
#else
    u64 frame = py_read_u64(ts + PY_OFF_TSTATE_FRAME);
#endif
    u32 n = 0;
    #pragma clang loop unroll(disable)
    for (int i = 0; i < PY_WALK_MAX; i++) {
        if (!frame) break;
#if PY_MINOR >= 11
        u64 code = py_read_u64(frame + PY_OFF_IFRAME_CODE);
        u8 owner = 0;
        bpf_probe_read_user(&owner, 1, (void *)(frame + PY_OFF_IFRAME_OWNER));
        // A C-stack shim frame (3.12+) is kept as code 0: user space leaves it out of the stack.
        if (PY_FRAME_OWNED_BY_CSTACK >= 0 && owner == (u8)PY_FRAME_OWNED_BY_CSTACK) code = 0;
        u64 prev = py_read_u64(frame + PY_OFF_IFRAME_PREVIOUS);
#else
        u64 code = py_read_u64(frame + PY_OFF_FRAMEOBJ_F_CODE);
        u64 prev = py_read_u64(frame + PY_OFF_FRAMEOBJ_F_BACK);
#endif
        sc->frame[i & (PY_WALK_MAX - 1)] = frame;
        sc->code[i & (PY_WALK_MAX - 1)] = code;
        if (i < GPU_PY_FRAMES) s->py_code[i & (GPU_PY_FRAMES - 1)] = code;
        n = i + 1;
        frame = prev;
    }
    if (frame) s->py_flags |= 2;
    sc->n = n;
    s->py_depth = n < GPU_PY_FRAMES ? n : GPU_PY_FRAMES;
    if (n > GPU_PY_FRAMES) s->py_flags |= 2;
    sc->cursor = 0;
    sc->spec = 0;
    sc->step = 0;
    py_progs.call(ctx, 1);
    return 0;
}

static __always_inline void py_classify_one(u64 code, struct py_scratch *sc) {
    struct py_code_info info = {};
    #pragma unroll
    for (int i = 0; i < PY_MAX_SPECS; i++) info.local[i] = -1;
#if PY_MINOR >= 11
    u64 name = py_read_u64(code + PY_OFF_CODE_QUALNAME);
    u64 names = py_read_u64(code + PY_OFF_CODE_LOCALSPLUSNAMES);
#else
    u64 name = py_read_u64(code + PY_OFF_CODE_NAME);
    u64 names = py_read_u64(code + PY_OFF_CODE_VARNAMES);
#endif
    struct py_code_rec *r = gpu_events.ringbuf_reserve(sizeof(struct py_code_rec));
    if (r) {
        r->kind = GPU_REC_PYCODE;
        r->code = code;
        r->firstlineno = 0;
        bpf_probe_read_user(&r->firstlineno, sizeof(r->firstlineno), (void *)(code + PY_OFF_CODE_FIRSTLINENO));
        s64 len = (s64)py_read_u64(name + PY_OFF_UNICODE_LENGTH);
        if (len < 0) len = 0;
        if (len > PY_STR - 1) len = PY_STR - 1;
        r->len = (u32)len;
        __builtin_memset(r->name, 0, PY_STR);
        bpf_probe_read_user(r->name, (u32)len & (PY_STR - 1), (void *)(name + PY_OFF_UNICODE_ASCII_DATA));
        gpu_events.ringbuf_submit(r, 0);
    } else {
        gpu_count_lost();
    }
    #pragma clang loop unroll(disable)
    for (int i = 0; i < PY_NSPECS; i++) {
        u32 key = i;
        struct py_spec *spec = py_specs.lookup(&key);
        if (!spec) break;
        u32 qi = spec->qual;
        if (!py_str_eq(name, py_strings.lookup(&qi), sc)) continue;
        u32 li = spec->local;
        struct py_str *want = py_strings.lookup(&li);
        s64 size = (s64)py_read_u64(names + PY_OFF_VAROBJ_SIZE);
        #pragma clang loop unroll(disable)
        for (int j = 0; j < PY_MAX_LOCALS; j++) {
            if (j >= size) break;
            u64 nm = py_read_u64(names + PY_OFF_TUPLE_ITEMS + 8 * (u64)j);
            if (py_str_eq(nm, want, sc)) {
                if (i < PY_MAX_SPECS) info.local[i & (PY_MAX_SPECS - 1)] = j;
                break;
            }
        }
    }
    py_codes.update(&code, &info);
}

int py_classify(struct pt_regs *ctx) {
    int zero = 0;
    struct py_scratch *sc = py_scratch.lookup(&zero);
    if (!sc) return 0;
    #pragma clang loop unroll(disable)
    for (int k = 0; k < PY_CLASSIFY_BATCH; k++) {
        u32 c = sc->cursor;
        if (c >= sc->n) break;
        sc->cursor = c + 1;
        u64 code = sc->code[c & (PY_WALK_MAX - 1)];
        if (!code || py_codes.lookup(&code)) continue;
        py_classify_one(code, sc);
    }
    if (sc->cursor < sc->n) py_progs.call(ctx, 1);
    if (PY_NSPECS > 0) py_progs.call(ctx, 2);
    return 0;
}

// Index of the entry whose key equals `want` in a PyDictKeysObject (-1: none);
// *value_out gets the entry's value (combined tables).
static __always_inline s64 py_keys_find(u64 keys, struct py_str *want, struct py_scratch *sc, u64 *value_out) {
#if PY_MINOR >= 11
    u8 log2_index_bytes = 0, kind = 0;
    bpf_probe_read_user(&log2_index_bytes, 1, (void *)(keys + PY_OFF_KEYS_LOG2_INDEX_BYTES));
    bpf_probe_read_user(&kind, 1, (void *)(keys + PY_OFF_KEYS_KIND));
    s64 nentries = (s64)py_read_u64(keys + PY_OFF_KEYS_NENTRIES);
    u64 entries = keys + PY_OFF_KEYS_INDICES + (1ull << (log2_index_bytes & 63));
    u64 esize = kind == 0 ? 24 : 16;    // DICT_KEYS_GENERAL: {hash, key, value}; unicode/split: {key, value}
    u64 koff = kind == 0 ? 8 : 0;
#else
    u64 dk_size = py_read_u64(keys + PY_OFF_KEYS_SIZE);
    s64 nentries = (s64)py_read_u64(keys + PY_OFF_KEYS_NENTRIES);
    u64 ix = dk_size <= 0xff ? 1 : dk_size <= 0xffff ? 2 : dk_size <= 0xffffffffull ? 4 : 8;
    u64 entries = keys + PY_OFF_KEYS_INDICES + dk_size * ix;
    u64 esize = 24, koff = 8;
#endif
    #pragma clang loop unroll(disable)
    for (int i = 0; i < PY_MAX_KEYS; i++) {
        if (i >= nentries) break;
        u64 e = entries + (u64)i * esize + koff;
        u64 key = py_read_u64(e);
        if (py_str_eq(key, want, sc)) {
            *value_out = py_read_u64(e + 8);
            return i;
        }
    }
    return -1;
}

static __always_inline u64 py_dict_get(u64 dict, struct py_str *want, struct py_scratch *sc) {
    if (!dict) return 0;
    u64 keys = py_read_u64(dict + PY_OFF_DICT_KEYS);
    u64 values = py_read_u64(dict + PY_OFF_DICT_VALUES);
    u64 v = 0;
    s64 i = py_keys_find(keys, want, sc, &v);
    if (i < 0) return 0;
    if (values) return py_read_u64(values + PY_OFF_VALUES_ITEMS + 8 * (u64)i);  // split table
    return v;
}

// obj.<want> for an instance of a plain Python class (its __dict__ or inline values).
static __always_inline u64 py_getattr(u64 obj, struct py_str *want, struct py_scratch *sc) {
    u64 type = py_read_u64(obj + 8);
    if (!type) return 0;
    u64 flags = py_read_u64(type + PY_OFF_TYPE_FLAGS);
    u64 v = 0;
#if PY_MINOR >= 13
    if (flags & PY_TPFLAGS_INLINE_VALUES) {
        u64 values = obj + py_read_u64(type + PY_OFF_TYPE_BASICSIZE);
        u8 valid = 0;
        bpf_probe_read_user(&valid, 1, (void *)(values + PY_OFF_VALUES_VALID));
        if (valid) {
            u64 keys = py_read_u64(type + PY_OFF_HEAPTYPE_CACHED_KEYS);
            s64 i = py_keys_find(keys, want, sc, &v);
            return i < 0 ? 0 : py_read_u64(values + PY_OFF_VALUES_ITEMS + 8 * (u64)i);
        }
    }
    if (flags & PY_TPFLAGS_MANAGED_DICT) return py_dict_get(py_read_u64(obj + PY_OFF_OBJ_MANAGED_DICT), want, sc);
#elif PY_MINOR == 12
    if (flags & PY_TPFLAGS_MANAGED_DICT) {
        u64 dorv = py_read_u64(obj + PY_OFF_OBJ_MANAGED_DICT);
        if (dorv & 1) {  // values pointer, tagged
            u64 values = dorv + 1;
            u64 keys = py_read_u64(type + PY_OFF_HEAPTYPE_CACHED_KEYS);
            s64 i = py_keys_find(keys, want, sc, &v);
            return i < 0 ? 0 : py_read_u64(values + PY_OFF_VALUES_ITEMS + 8 * (u64)i);
        }
        return py_dict_get(dorv, want, sc);
    }
#elif PY_MINOR == 11
    if (flags & PY_TPFLAGS_MANAGED_DICT) {
        u64 values = py_read_u64(obj + PY_OFF_OBJ_VALUES_PTR);
        if (values) {
            u64 keys = py_read_u64(type + PY_OFF_HEAPTYPE_CACHED_KEYS);
            s64 i = py_keys_find(keys, want, sc, &v);
            return i < 0 ? 0 : py_read_u64(values + PY_OFF_VALUES_ITEMS + 8 * (u64)i);
        }
        return py_dict_get(py_read_u64(obj + PY_OFF_OBJ_MANAGED_DICT), want, sc);
    }
#endif
    s64 dictoffset = (s64)py_read_u64(type + PY_OFF_TYPE_DICTOFFSET);
    if (dictoffset > 0) return py_dict_get(py_read_u64(obj + dictoffset), want, sc);
    return 0;
}

int py_attr(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    int zero = 0;
    struct py_scratch *sc = py_scratch.lookup(&zero);
    if (!sc) return 0;
    u32 i = sc->spec;
    if (i >= PY_NSPECS || i >= PY_MAX_SPECS) return 0;
    struct py_spec *spec = py_specs.lookup(&i);
    struct gpu_step *s = gpu_acc.lookup(&tid);
    if (!spec || !s) return 0;
    if (sc->step == 0) {  // the local of the innermost frame running spec i's function
        sc->obj = 0;
        #pragma clang loop unroll(disable)
        for (int f = 0; f < PY_WALK_MAX; f++) {
            if (f >= sc->n) break;
            u64 code = sc->code[f & (PY_WALK_MAX - 1)];
            struct py_code_info *info = py_codes.lookup(&code);
            if (!info) continue;
            s32 slot = info->local[i & (PY_MAX_SPECS - 1)];
            if (slot < 0) continue;
            u64 frame = sc->frame[f & (PY_WALK_MAX - 1)];
#if PY_MINOR >= 11
            sc->obj = py_read_u64(frame + PY_OFF_IFRAME_LOCALSPLUS + 8 * (u64)slot);
#else
            sc->obj = py_read_u64(frame + PY_OFF_FRAMEOBJ_F_LOCALSPLUS + 8 * (u64)slot);
#endif
            break;
        }
        if (!sc->obj) goto next_spec;
    }
    if (sc->step < spec->n_path && sc->step < PY_MAX_PATH) {
        u32 ai = spec->path[sc->step & (PY_MAX_PATH - 1)];
        sc->obj = py_getattr(sc->obj, py_strings.lookup(&ai), sc);
        sc->step += 1;
        if (!sc->obj) goto next_spec;
        py_progs.call(ctx, 2);  // next attribute of the path (or the value)
        return 0;
    }
    s64 v = 0;
    if (pyobj_value(sc->obj, spec->mode, &v)) {
        s->py_attr[i & (GPU_PY_ATTRS - 1)] = v;
        s->py_attr_ok |= 1u << (i & 31);
        py_stat(2);
    } else {
        py_stat(3);
    }
    sc->spec = i + 1;
    sc->step = 0;
    py_progs.call(ctx, 2);
    return 0;
next_spec:
    py_stat(3);
    sc->spec = i + 1;
    sc->step = 0;
    py_progs.call(ctx, 2);
    return 0;
}
