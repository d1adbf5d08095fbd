// sched pack: the target's threads off the CPU, and why.
//
// One ring-buffer record per off-CPU interval of a target thread (switch-out to
// switch-in): preempted (still runnable when switched out) or blocked (asleep),
// who ran next on that CPU, and the run-queue wait (preempted: the whole
// interval; blocked: wakeup -> switch-in). Per-thread totals and, per other
// task, the time it ran on a CPU where a target thread was waiting to run are
// kept in maps and read by the sampler.
//
// Only tracepoint fields are read (the struct layouts come from the tracefs
// format files, see tracefs.py); the target is recognised by the tgid of the
// task being switched out (current == prev in sched_switch), and from then on
// by its tid being a key of sched_threads.
//
// Defined by pack.py: SCHED_MIN_OFFCPU_NS, SCHED_HAVE_{SWITCH,WAKEUP,WAKEUP_NEW}
// and the structs sched_{switch,wakeup,wakeup_new}_args.

#define SCHED_MAX_CPUS 1024
#define SCHED_PREEMPTED 1
#define SCHED_BLOCKED 2
#define SCHED_NEW 3             // created, not yet run (wakeup_new -> first switch-in)
#define SCHED_EXITING 0x30      // TASK_REPORT bits EXIT_DEAD | EXIT_ZOMBIE in prev_state

struct sched_event {
    u64 ts_off;
    u64 ts_on;
    u64 runq_ns;
    u32 tid;
    u32 by_pid;                 // what ran next on the CPU when the thread was switched out
    u32 cpu;                    // the CPU it was switched out on
    u32 reason;                 // SCHED_PREEMPTED | SCHED_BLOCKED
    char by_comm[16];
};

struct sched_thread {           // one per target thread: its state, then its totals
    u64 ts_off;
    u64 ts_on;
    u64 ts_wake;
    u32 by_pid;
    u32 cpu;
    u32 wait_cpu;               // the CPU whose waiting count this thread holds
    u8 off;                     // 1 while off-CPU
    u8 reason;
    u8 waiting;                 // 1 while counted in sched_cpus[wait_cpu].waiting
    u8 exited;
    u8 verified;                // seen switched out with tgid == TARGET_PID
    u8 _pad[7];
    char by_comm[16];
    u64 oncpu_ns;
    u64 preempted_ns;
    u64 blocked_ns;
    u64 runq_ns;
    u64 nivcsw;                 // involuntary switches (preempted)
    u64 nvcsw;                  // voluntary switches (blocked)
    u64 below_threshold;        // intervals shorter than SCHED_MIN_OFFCPU_NS not written
};

struct sched_cpu {
    u64 last_ts;                // last sched_switch on this CPU
    u64 wait_since;             // when `waiting` last went from 0 to 1
    s64 waiting;                // target threads waiting to run on this CPU
};

struct sched_preemptor {        // a task that held a CPU while a target thread waited for it
    u64 ns;
    u64 slices;
    u32 tgid;
    u32 _pad;
    char comm[16];
};

BPF_RINGBUF_OUTPUT(sched_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(sched_lost, u64, 1);
BPF_HASH(sched_threads, u32, struct sched_thread, 8192);
BPF_ARRAY(sched_cpus, struct sched_cpu, SCHED_MAX_CPUS);
BPF_HASH(sched_preemptors, u32, struct sched_preemptor, 4096);
BPF_HASH(sched_faults, u32, u64, 8192);
struct sched_wake {
    u64 pending;                // records submitted since the last forced wakeup (approximate: all CPUs update it)
};
BPF_ARRAY(sched_wake_state, struct sched_wake, 1);

// Wake the consumer only when about a quarter of the buffer is waiting: a wakeup per
// record would make the recorder itself preempt the target's threads once per record,
// each preemption producing the next record (measured: a self-sustaining 30k records/s
// loop on a 2-CPU host). Otherwise the engine drains every buffer at the first batch end
// after each poll interval (or on its timer when the server is idle).
#define SCHED_WAKEUP_RECORDS ((u64)RINGBUF_PAGES * 4096 / 4 / (sizeof(struct sched_event) + 8))
static __always_inline u64 sched_submit_flags(void) {
    int z = 0;
    struct sched_wake *w = sched_wake_state.lookup(&z);
    if (!w) return 0;
    w->pending += 1;
    if (w->pending >= SCHED_WAKEUP_RECORDS) {
        w->pending = 0;
        return BPF_RB_FORCE_WAKEUP;
    }
    return BPF_RB_NO_WAKEUP;
}

static __always_inline void sched_wait_begin(struct sched_thread *t, u32 cpu, u64 now) {
    if (t->waiting || cpu >= SCHED_MAX_CPUS) return;
    struct sched_cpu *cs = sched_cpus.lookup(&cpu);
    if (!cs) return;
    if (__sync_fetch_and_add(&cs->waiting, 1) == 0) cs->wait_since = now;
    t->waiting = 1;
    t->wait_cpu = cpu;
}

static __always_inline void sched_wait_end(struct sched_thread *t) {
    if (!t->waiting) return;
    u32 cpu = t->wait_cpu;
    struct sched_cpu *cs = sched_cpus.lookup(&cpu);
    if (cs) __sync_fetch_and_add(&cs->waiting, -1);
    t->waiting = 0;
}

#ifdef SCHED_HAVE_SWITCH
int sched_on_switch(struct sched_switch_args *args) {
    u64 now = bpf_ktime_get_ns();
    u32 cpu = bpf_get_smp_processor_id();
    u64 id = bpf_get_current_pid_tgid();   // current is still prev here
    u32 prev = (u32)args->prev_pid;
    u32 next = (u32)args->next_pid;

    // 1. Whoever held this CPU while target threads waited for it gets the time.
    struct sched_cpu *cs = sched_cpus.lookup(&cpu);
    if (cs) {
        if (cs->waiting > 0 && prev != 0) {
            u64 from = cs->last_ts > cs->wait_since ? cs->last_ts : cs->wait_since;
            if (from && now > from) {
                struct sched_preemptor zero = {};
                struct sched_preemptor *p = sched_preemptors.lookup_or_try_init(&prev, &zero);
                if (p) {
                    if (p->slices == 0) {
                        p->tgid = id >> 32;
                        __builtin_memcpy(p->comm, args->prev_comm, sizeof(p->comm));
                    }
                    __sync_fetch_and_add(&p->ns, now - from);
                    __sync_fetch_and_add(&p->slices, 1);
                }
            }
        }
        cs->last_ts = now;
    }

    // 2. A target thread leaves the CPU: an off-CPU interval begins.
    if ((id >> 32) == TARGET_PID && prev != 0) {
        struct sched_thread zero = {};
        struct sched_thread *t = sched_threads.lookup_or_try_init(&prev, &zero);
        if (t) {
            if (t->exited) {    // tid reused by a new thread
                __builtin_memset(t, 0, sizeof(*t));
            }
            t->verified = 1;
            long state = args->prev_state;
            if (t->ts_on && !t->off && now > t->ts_on) t->oncpu_ns += now - t->ts_on;
            sched_wait_end(t);
            if (state & SCHED_EXITING) {
                t->exited = 1;
                t->off = 0;
            } else {
                t->off = 1;
                t->ts_off = now;
                t->ts_wake = 0;
                t->cpu = cpu;
                t->by_pid = next;
                __builtin_memcpy(t->by_comm, args->next_comm, sizeof(t->by_comm));
                if ((state & 0xff) == 0) {      // 0 or TASK_REPORT_MAX: preempted, still runnable
                    t->reason = SCHED_PREEMPTED;
                    t->nivcsw += 1;
                    sched_wait_begin(t, cpu, now);
                } else {
                    t->reason = SCHED_BLOCKED;
                    t->nvcsw += 1;
                }
            }
        }
    }

    // 3. A target thread gets the CPU back: the interval ends.
    if (next == 0) return 0;
    struct sched_thread *t = sched_threads.lookup(&next);
    if (!t || t->exited) return 0;
    if (!t->off) {
        t->ts_on = now;
        return 0;
    }
    u64 dur = now > t->ts_off ? now - t->ts_off : 0;
    u64 runq = 0;
    u32 reason = t->reason;
    sched_wait_end(t);
    t->off = 0;
    t->ts_on = now;
    if (reason == SCHED_NEW) {
        t->runq_ns += dur;
        return 0;
    }
    if (reason == SCHED_PREEMPTED) {
        runq = dur;
        t->preempted_ns += dur;
    } else {
        if (t->ts_wake && now > t->ts_wake) runq = now - t->ts_wake;
        t->blocked_ns += dur;
    }
    t->runq_ns += runq;
    if (dur < SCHED_MIN_OFFCPU_NS) {
        // Short intervals are only counted, except a preemption by another process
        // (its own, lower limit: a neighbour taking the CPU in many short bursts adds up).
        u32 by = t->by_pid;
        if (reason != SCHED_PREEMPTED || by == 0 || sched_threads.lookup(&by) || dur < SCHED_MIN_PREEMPT_NS) {
            t->below_threshold += 1;
            return 0;
        }
    }
    struct sched_event *ev = sched_events.ringbuf_reserve(sizeof(struct sched_event));
    if (!ev) {
        int z = 0;
        u64 *lost = sched_lost.lookup(&z);
        if (lost) (*lost)++;
        return 0;
    }
    ev->ts_off = t->ts_off;
    ev->ts_on = now;
    ev->runq_ns = runq;
    ev->tid = next;
    ev->by_pid = t->by_pid;
    ev->cpu = t->cpu;
    ev->reason = reason;
    __builtin_memcpy(ev->by_comm, t->by_comm, sizeof(ev->by_comm));
    sched_events.ringbuf_submit(ev, sched_submit_flags());
    return 0;
}
#endif

#ifdef SCHED_HAVE_WAKEUP
// A blocked target thread becomes runnable: its run-queue wait begins.
int sched_on_wakeup(struct sched_wakeup_args *args) {
    u32 pid = (u32)args->pid;
    struct sched_thread *t = sched_threads.lookup(&pid);
    if (!t || !t->off || t->reason != SCHED_BLOCKED || t->ts_wake) return 0;
    u64 now = bpf_ktime_get_ns();
    t->ts_wake = now;
    sched_wait_begin(t, (u32)args->target_cpu, now);
    return 0;
}
#endif

#ifdef SCHED_HAVE_WAKEUP_NEW
// The target creates a thread: its wait for its first run is run-queue wait.
// (A child process of the target lands here too; it is never `verified`, as it
// is never switched out with the target's tgid, and the sampler ignores it.)
int sched_on_wakeup_new(struct sched_wakeup_new_args *args) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_PID) return 0;
    u32 pid = (u32)args->pid;
    u64 now = bpf_ktime_get_ns();
    struct sched_thread t = {};
    t.off = 1;
    t.reason = SCHED_NEW;
    t.ts_off = now;
    t.ts_wake = now;
    // The new thread may already run (and block) on another CPU while this runs:
    // never overwrite what its own switch-out recorded.
    if (sched_threads.insert(&pid, &t) != 0) return 0;
    struct sched_thread *n = sched_threads.lookup(&pid);
    if (n && n->reason == SCHED_NEW) sched_wait_begin(n, (u32)args->target_cpu, now);
    return 0;
}
#endif

// exceptions:page_fault_user (x86): one count per user page fault of a target thread.
int sched_on_page_fault(void *args) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    u64 zero = 0;
    u64 *n = sched_faults.lookup_or_try_init(&tid, &zero);
    if (n) __sync_fetch_and_add(n, 1);
    return 0;
}
