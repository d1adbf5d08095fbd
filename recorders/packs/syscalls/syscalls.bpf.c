// syscalls pack: count and time of every system call made by the target's
// threads, aggregated in the kernel. Nothing goes through a ring buffer: the
// sampler reads the maps (once a second, in one batch).
//
// Cost: every syscall on the host runs these probes while they are attached: +160 ns
// per call for enter + exit on raw tracepoints, +220 ns on classic ones (a getppid loop
// on this 2-core VM, kernel.bpf_stats_enabled=0; statistics on add ~140 ns). Per target syscall (the ggml thread pool alone makes ~100k futex calls/s
// under load): one hash lookup at entry, one hash lookup and one per-CPU array
// slot at exit, no map update or delete in the steady state.
//
// Untimed syscalls (SYSCALLS_UNTIMED(nr), default: futex): only counted, with no per-thread
// state. llama.cpp's ggml thread pool makes ~30k futex calls/s under load, 94% of the
// server's syscalls; timing each one cost ~280 ns of BPF on the compute threads'
// critical path, and their wait is the blocked off-CPU time the sched pack records.
//
// Defined by pack.py: SYSCALLS_HAVE_{ENTER,EXIT}, the structs sys_enter_args /
// sys_exit_args (from the tracefs format files), SYSCALLS_UNTIMED(nr).

#define SYS_SLOTS 512               // syscall numbers >= SYS_SLOTS - 1 share the last slot

struct sys_val {                    // per syscall number, per CPU
    u64 count;
    u64 total_ns;
    u64 max_ns;
    u64 errors;                     // returned a negative errno
};

struct sys_thread {                 // per target thread: the call in flight, and totals
    u64 ts;                         // entry time of the call in flight, 0 if none
    u64 nr;
    u64 count;
    u64 total_ns;
};

BPF_HASH(sys_threads, u32, struct sys_thread, 8192);
BPF_PERCPU_ARRAY(sys_stats, struct sys_val, SYS_SLOTS);

static __always_inline int sys_enter_common(u64 nr) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    if (SYSCALLS_UNTIMED(nr)) {
        u32 slot = nr < SYS_SLOTS - 1 ? (u32)nr : SYS_SLOTS - 1;
        struct sys_val *v = sys_stats.lookup(&slot);
        if (v) v->count += 1;           // per-CPU slot: no other writer
        return 0;                       // the thread's ts stays 0: its exit is ignored
    }
    u32 tid = (u32)id;
    u64 now = bpf_ktime_get_ns();
    struct sys_thread *t = sys_threads.lookup(&tid);
    if (t) {
        t->nr = nr;
        t->ts = now;
    } else {
        struct sys_thread n = {.ts = now, .nr = nr};
        sys_threads.update(&tid, &n);
    }
    return 0;
}

static __always_inline int sys_exit_common(long ret) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct sys_thread *t = sys_threads.lookup(&tid);
    if (!t || t->ts == 0) return 0;     // entered before the recording began
    u64 dur = bpf_ktime_get_ns() - t->ts;
    u64 nr = t->nr;
    t->ts = 0;
    t->count += 1;
    t->total_ns += dur;
    u32 slot = nr < SYS_SLOTS - 1 ? (u32)nr : SYS_SLOTS - 1;
    struct sys_val *v = sys_stats.lookup(&slot);
    if (!v) return 0;
    v->count += 1;                      // per-CPU slot: no other writer
    v->total_ns += dur;
    if (dur > v->max_ns) v->max_ns = dur;
    if (ret < 0) v->errors += 1;
    return 0;
}

// Raw tracepoints (preferred): the kernel hands over its own arguments, with no
// copy into a trace record first. sys_enter(struct pt_regs *regs, long id),
// sys_exit(struct pt_regs *regs, long ret): only the plain second argument is read.
int sys_raw_enter(struct bpf_raw_tracepoint_args *ctx) {
    return sys_enter_common((u64)ctx->args[1]);
}

int sys_raw_exit(struct bpf_raw_tracepoint_args *ctx) {
    return sys_exit_common((long)ctx->args[1]);
}

// Classic tracepoints: the fallback where raw tracepoints cannot attach.
#if defined(SYSCALLS_HAVE_ENTER) && defined(SYSCALLS_HAVE_EXIT)
int sys_on_enter(struct sys_enter_args *args) {
    return sys_enter_common((u64)args->id);
}

int sys_on_exit(struct sys_exit_args *args) {
    return sys_exit_common((long)args->ret);
}
#endif
