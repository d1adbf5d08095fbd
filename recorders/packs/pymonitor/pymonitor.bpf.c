// Exact Python function boundaries from sys.monitoring (3.12+), probed natively.
//
// inject.py registers the C type `slice` as the sys.monitoring callback of the
// chosen code objects, so each PY_START/PY_RESUME calls slice(code, offset) and
// each PY_RETURN/PY_YIELD/PY_UNWIND calls slice(code, offset, value); both go
// type_call -> slice_new(type, args, kwargs). pm_callback, a uprobe on slice_new,
// reads the args tuple: 2 items is a begin, 3 an end; item 0 is the code object,
// kept only when it is one of the chosen ones (pm_codes, filled by the pack).
// Any other slice(...) call in the process costs the probe and one hash lookup.
//
// At a begin, up to PM_MAX_ATTRS configured values are read from the function's
// frame (the thread's current frame: the callback runs no Python code): an
// argument's int value or len() (list, tuple, dict, str).

#define PM_MAX_ATTRS 4
#define PM_MAX_THREADS 128
#define PM_BEGIN 0
#define PM_END 1

struct pm_code {
    u32 n_attrs;
    u32 _pad;
    s32 slot[PM_MAX_ATTRS];     // localsplus index of the argument
    u32 mode[PM_MAX_ATTRS];
};

struct pm_event {
    u64 ts;
    u64 code;
    u32 tid;
    u32 kind;                   // PM_BEGIN / PM_END
    u32 attr_ok;                // bit i: attr[i] was read
    u32 n_args;
    s64 attr[PM_MAX_ATTRS];
};

BPF_HASH(pm_codes, u64, struct pm_code, 256);
BPF_HASH(pm_tstate, u32, u64, 4096);        // tid -> PyThreadState *
BPF_RINGBUF_OUTPUT(pm_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(pm_lost, u64, 1);
BPF_PERCPU_ARRAY(pm_stats, u64, 2);         // 0: slice() calls probed, 1: events of chosen functions

static __always_inline u64 pm_u64(u64 addr) {
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline void pm_stat(int i) {
    u64 *v = pm_stats.lookup(&i);
    if (v) (*v)++;
}

static __always_inline u64 pm_find_tstate(u32 tid) {
    u64 *cached = pm_tstate.lookup(&tid);
    if (cached && *cached && (u32)pm_u64(*cached + PY_OFF_TSTATE_NATIVE_THREAD_ID) == tid) return *cached;
    u64 interp = pm_u64(PY_RUNTIME_ADDR + PY_OFF_RUNTIME_INTERPRETERS_HEAD);
    u64 t = interp ? pm_u64(interp + PY_OFF_INTERP_THREADS_HEAD) : 0;
    #pragma clang loop unroll(disable)
    for (int i = 0; i < PM_MAX_THREADS; i++) {
        if (!t) break;
        if ((u32)pm_u64(t + PY_OFF_TSTATE_NATIVE_THREAD_ID) == tid) {
            pm_tstate.update(&tid, &t);
            return t;
        }
        t = pm_u64(t + PY_OFF_TSTATE_NEXT);
    }
    return 0;
}

int pm_callback(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    pm_stat(0);
    u64 args = PT_REGS_PARM2(ctx);      // slice_new(PyTypeObject *, PyObject *args, PyObject *kwargs)
    u64 n = pm_u64(args + PY_OFF_VAROBJ_SIZE);
    if (n != 2 && n != 3) return 0;
    u64 code = pm_u64(args + PY_OFF_TUPLE_ITEMS);
    struct pm_code *c = pm_codes.lookup(&code);
    if (!c) return 0;
    pm_stat(1);
    struct pm_event *e = pm_events.ringbuf_reserve(sizeof(struct pm_event));
    if (!e) {
        int zero = 0;
        u64 *lost = pm_lost.lookup(&zero);
        if (lost) (*lost)++;
        return 0;
    }
    e->ts = bpf_ktime_get_ns();
    e->code = code;
    e->tid = (u32)id;
    e->kind = n == 2 ? PM_BEGIN : PM_END;
    e->attr_ok = 0;
    e->n_args = (u32)n;
    #pragma unroll
    for (int i = 0; i < PM_MAX_ATTRS; i++) e->attr[i] = 0;
    if (n == 2 && c->n_attrs) {
        u64 ts = pm_find_tstate((u32)id);
#if PY_MINOR >= 13
        u64 frame = ts ? pm_u64(ts + PY_OFF_TSTATE_CURRENT_FRAME) : 0;
#else
        u64 frame = ts ? pm_u64(pm_u64(ts + PY_OFF_TSTATE_CFRAME) + PY_OFF_CFRAME_CURRENT_FRAME) : 0;
#endif
        if (frame && pm_u64(frame + PY_OFF_IFRAME_CODE) == code) {
            #pragma unroll
            for (int i = 0; i < PM_MAX_ATTRS; i++) {
                if (i >= c->n_attrs) break;
                s32 slot = c->slot[i];
                if (slot < 0 || slot > 255) continue;
                s64 v = 0;
                u64 obj = pm_u64(frame + PY_OFF_IFRAME_LOCALSPLUS + 8 * (u64)slot);
                if (obj && pyobj_value(obj, c->mode[i], &v)) {
                    e->attr[i] = v;
                    e->attr_ok |= 1u << i;
                }
            }
        }
    }
    pm_events.ringbuf_submit(e, 0);
    return 0;
}
