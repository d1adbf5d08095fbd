// syscalls pack: count and time of every system call made by the target's
// threads, aggregated in the kernel per (thread, syscall number). Nothing goes
// through a ring buffer: the sampler reads the map.
//
// Defined by pack.py: SYSCALLS_HAVE_{ENTER,EXIT} and the structs
// sys_enter_args / sys_exit_args (from the tracefs format files).

struct sys_key {
    u32 tid;
    u32 nr;
};

struct sys_val {
    u64 count;
    u64 total_ns;
    u64 max_ns;
    u64 errors;                 // returned a negative errno
};

struct sys_open {
    u64 ts;
    u64 nr;
};

BPF_HASH(sys_inflight, u32, struct sys_open, 8192);
BPF_HASH(sys_stats, struct sys_key, struct sys_val, 16384);
BPF_ARRAY(sys_dropped, u64, 1);   // exits not recorded because sys_stats was full

#if defined(SYSCALLS_HAVE_ENTER) && defined(SYSCALLS_HAVE_EXIT)
// Steady state costs three hash lookups per syscall and no update/delete: the
// per-thread in-flight slot is written in place and cleared by setting ts = 0.
int sys_on_enter(struct sys_enter_args *args) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    u64 now = bpf_ktime_get_ns();
    struct sys_open *o = sys_inflight.lookup(&tid);
    if (o) {
        o->nr = (u64)args->id;
        o->ts = now;
    } else {
        struct sys_open n = {.ts = now, .nr = (u64)args->id};
        sys_inflight.update(&tid, &n);
    }
    return 0;
}

int sys_on_exit(struct sys_exit_args *args) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct sys_open *o = sys_inflight.lookup(&tid);
    if (!o || o->ts == 0) return 0;   // entered before the recording began
    u64 dur = bpf_ktime_get_ns() - o->ts;
    struct sys_key key = {.tid = tid, .nr = (u32)o->nr};
    o->ts = 0;
    struct sys_val zero = {};
    struct sys_val *v = sys_stats.lookup_or_try_init(&key, &zero);
    if (!v) {
        int z = 0;
        u64 *d = sys_dropped.lookup(&z);
        if (d) __sync_fetch_and_add(d, 1);
        return 0;
    }
    // Only this thread updates its own key: plain adds are enough.
    v->count += 1;
    v->total_ns += dur;
    if (dur > v->max_ns) v->max_ns = dur;
    if (args->ret < 0) v->errors += 1;
    return 0;
}
#endif
