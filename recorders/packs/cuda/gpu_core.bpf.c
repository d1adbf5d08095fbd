// GPU engine-step core, shared by the cuda, hip, nccl and python packs (the
// engine concatenates every pack's text into one program: the guard keeps a
// single copy). It accumulates, per thread and in the kernel, what the host
// asks of the GPU during one engine step, and writes ONE record per step.
//
// What an engine step is (both loops the tests emulate):
//   * launches, graph replays, copies and collectives accumulate on the
//     calling thread from its first GPU call after the previous step;
//   * a device-to-host copy (the sampled token ids) closes the step's launches
//     ("seal"): the next event record on that thread parks the step under that
//     event handle, and the step ends when some thread synchronizes that event
//     (vLLM: copy, record, sync in a row; SGLang's overlap loop: copy, record,
//     launch the next step, then sync the previous step's event);
//   * without an event record, the next stream/event synchronization on the
//     thread after the copy ends the step (copy then cudaStreamSynchronize).
// Other synchronizations inside a step only add to its sync time. When the
// next step has already started on the thread by the time a step's sync
// returns (overlap), the step's slice ends where the next one began
// (GPU_F_CLIPPED) and ts_done keeps the sync's return.
#ifndef PRISM_GPU_CORE
#define PRISM_GPU_CORE 1

#define GPU_PY_FRAMES 16
#define GPU_PY_ATTRS 4
#define GPU_COLL_KINDS 6        // allreduce, allgather, reducescatter, broadcast, send, recv

#define GPU_REC_STEP 0
#define GPU_REC_FUNCTION 1      // cuModuleGetFunction / hipModuleGetFunction: handle -> name
#define GPU_REC_COMM 2          // ncclCommInitRank: comm -> rank, nranks

#define GPU_F_SEALED 1          // parked under an event handle by an event record
#define GPU_F_CLIPPED 2         // slice ends where the next step began (see above)
#define GPU_F_NO_SYNC 4         // written without a synchronization (event re-recorded / flushed)
#define GPU_F_STREAM_SYNC 8     // ended by a stream synchronization

#define GPU_API_RT 1            // cudaLaunchKernel / hipLaunchKernel: key = host stub address
#define GPU_API_DRV 2           // cuLaunchKernel[Ex] / hipModuleLaunchKernel: key = function handle

struct gpu_step {
    u32 kind;                   // GPU_REC_STEP
    u32 tid;                    // the launching thread
    u32 sync_tid;               // the thread whose synchronization ended the step
    u32 flags;
    u64 ts_start;               // first GPU call of the step
    u64 ts_seal;                // the device-to-host copy that closed its launches
    u64 ts_end;                 // end of the slice (ts_done, or clipped)
    u64 ts_done;                // the ending synchronization returned
    u64 ts_next;                // first GPU call of the next step on the thread (0: none before ts_done)
    u64 bytes_h2d, bytes_d2h, bytes_d2d, bytes_other;
    u64 last_d2h_bytes;         // size of the closing copy: batch * sizeof(int64) sampled tokens
    u64 sync_ns;                // time waited in all synchronizations of the step
    u64 tail_ns;                // time waited in the ending one: the GPU tail
    u64 graph;                  // last graph exec launched
    u64 stream;                 // stream of the closing copy
    u64 event;                  // event recorded after it (0: none)
    u32 n_launches;             // runtime API launches
    u32 n_drv_launches;         // driver API launches
    u32 n_graph_launches;
    u32 n_copies;
    u32 n_d2h;
    u32 n_syncs;
    u32 n_event_records;
    u32 n_drv_graph_launches;   // cuGraphLaunch (kept apart: the runtime may call it for cudaGraphLaunch)
    // collectives (nccl pack)
    u64 coll_bytes, coll_elems, coll_ns, coll_enter, coll_comm, coll_stream;
    u32 n_coll[GPU_COLL_KINDS];
    s32 coll_dtype, coll_op;
    u32 coll_mixed;             // bit 0: several comms, 1: dtypes, 2: ops, 3: streams
    u32 _pad1;
    // Python context (python pack): code objects on the stack at the closing copy
    u64 py_code[GPU_PY_FRAMES];
    s64 py_attr[GPU_PY_ATTRS];
    u32 py_depth;
    u32 py_attr_ok;             // bit i: attribute i was read
    u32 py_flags;               // bit 0: thread state found, 1: stack deeper than GPU_PY_FRAMES
    u32 _pad2;
};

struct gpu_fn_rec {
    u32 kind;                   // GPU_REC_FUNCTION
    u32 tid;
    u64 handle;
    char name[112];
};

struct gpu_comm_rec {
    u32 kind;                   // GPU_REC_COMM
    s32 rank;
    s32 nranks;
    s32 ret;
    u64 comm;
    u64 ts;
};

struct gpu_kernel_key {
    u64 addr;
    u32 api;
    u32 _pad;
};

struct gpu_sync_open {
    u64 ts;
    u64 handle;
    u32 is_event;
    u32 _pad;
};

struct gpu_getfn_open {
    u64 out;                    // CUfunction * (filled when the call returns)
    u64 name;                   // const char *
};

BPF_RINGBUF_OUTPUT(gpu_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(gpu_lost, u64, 1);
BPF_PERCPU_ARRAY(gpu_zero, struct gpu_step, 1);         // never written: the zero step
BPF_HASH(gpu_acc, u32, struct gpu_step, 4096);           // tid -> the step being accumulated
BPF_HASH(gpu_sealed, u64, struct gpu_step, 1024);        // event handle -> sealed step awaiting its sync
BPF_HASH(gpu_last_sealed, u32, u64, 4096);               // tid -> event of its last sealed step
BPF_HASH(gpu_sync_open, u32, struct gpu_sync_open, 4096);
BPF_HASH(gpu_getfn_open, u32, struct gpu_getfn_open, 1024);
BPF_HASH(gpu_kernels, struct gpu_kernel_key, u64, 16384); // launches per kernel over the recording
BPF_PROG_ARRAY(gpu_progs, 4);                            // 0: Python stack walk at the closing copy

static __always_inline void gpu_count_lost(void) {
    int zero = 0;
    u64 *lost = gpu_lost.lookup(&zero);
    if (lost) (*lost)++;
}

// The step being accumulated on this thread (created on its first GPU call).
static __always_inline struct gpu_step *gpu_acc_get(u32 tid, u64 now) {
    int zero = 0;
    struct gpu_step *z = gpu_zero.lookup(&zero);
    if (!z) return 0;
    struct gpu_step *s = gpu_acc.lookup_or_try_init(&tid, z);
    if (!s) return 0;
    if (s->ts_start == 0) {
        s->ts_start = now;
        s->tid = tid;
        // The previous step of this thread, if still waiting for its sync, learns where the next began.
        u64 *ev = gpu_last_sealed.lookup(&tid);
        if (ev) {
            struct gpu_step *prev = gpu_sealed.lookup(ev);
            if (prev && prev->tid == tid && prev->ts_next == 0) prev->ts_next = now;
            gpu_last_sealed.delete(&tid);
        }
    }
    return s;
}

static __always_inline void gpu_emit(struct gpu_step *s, u64 now, u64 wait, u32 sync_tid, u32 flags) {
    struct gpu_step *e = gpu_events.ringbuf_reserve(sizeof(struct gpu_step));
    if (!e) {
        gpu_count_lost();
        return;
    }
    __builtin_memcpy(e, s, sizeof(struct gpu_step));
    e->kind = GPU_REC_STEP;
    e->flags |= flags;
    e->sync_tid = sync_tid;
    e->ts_done = now;
    e->ts_end = now;
    e->tail_ns = wait;
    if (!(flags & GPU_F_NO_SYNC)) {
        e->sync_ns += wait;
        e->n_syncs += 1;
    }
    if (e->ts_next && e->ts_next < now) {
        e->ts_end = e->ts_next;
        e->flags |= GPU_F_CLIPPED;
    }
    gpu_events.ringbuf_submit(e, 0);
}

#define GPU_TGID_CHECK(id) if (((id) >> 32) != TARGET_PID) return 0

static __always_inline void gpu_count_kernel(u64 addr, u32 api) {
    struct gpu_kernel_key key = {};
    key.addr = addr;
    key.api = api;
    u64 one = 1;
    u64 *n = gpu_kernels.lookup(&key);
    if (n) __sync_fetch_and_add(n, 1);
    else gpu_kernels.update(&key, &one);
}

// cudaLaunchKernel(const void *func, dim3 grid, dim3 block, void **args, size_t shmem, cudaStream_t)
// hipLaunchKernel (same): func is the kernel's host stub, named by the ELF symbol at that address.
int gpu_launch_rt(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    struct gpu_step *s = gpu_acc_get((u32)id, bpf_ktime_get_ns());
    if (!s) return 0;
    s->n_launches += 1;
    gpu_count_kernel(PT_REGS_PARM1(ctx), GPU_API_RT);
    return 0;
}

// cuLaunchKernel(CUfunction f, ...) / hipModuleLaunchKernel(hipFunction_t f, ...)
int gpu_launch_drv(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    struct gpu_step *s = gpu_acc_get((u32)id, bpf_ktime_get_ns());
    if (!s) return 0;
    s->n_drv_launches += 1;
    gpu_count_kernel(PT_REGS_PARM1(ctx), GPU_API_DRV);
    return 0;
}

// cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **params, void **extra)
int gpu_launch_drv_ex(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    struct gpu_step *s = gpu_acc_get((u32)id, bpf_ktime_get_ns());
    if (!s) return 0;
    s->n_drv_launches += 1;
    gpu_count_kernel(PT_REGS_PARM2(ctx), GPU_API_DRV);
    return 0;
}

// cudaGraphLaunch / hipGraphLaunch (graphExec, stream)
int gpu_graph_launch(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    struct gpu_step *s = gpu_acc_get((u32)id, bpf_ktime_get_ns());
    if (!s) return 0;
    s->n_graph_launches += 1;
    s->graph = PT_REGS_PARM1(ctx);
    return 0;
}

// cuGraphLaunch (hGraphExec, hStream)
int gpu_graph_launch_drv(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    struct gpu_step *s = gpu_acc_get((u32)id, bpf_ktime_get_ns());
    if (!s) return 0;
    s->n_drv_graph_launches += 1;
    s->graph = PT_REGS_PARM1(ctx);
    return 0;
}

// cudaMemcpyAsync / hipMemcpyAsync (void *dst, const void *src, size_t count, kind, stream)
// kind: 0 host-to-host, 1 host-to-device, 2 device-to-host, 3 device-to-device, 4 default (inferred).
int gpu_memcpy_async(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    u64 now = bpf_ktime_get_ns();
    struct gpu_step *s = gpu_acc_get((u32)id, now);
    if (!s) return 0;
    u64 count = PT_REGS_PARM3(ctx);
    u32 kind = (u32)PT_REGS_PARM4(ctx);
    s->n_copies += 1;
    if (kind == 1) {
        s->bytes_h2d += count;
    } else if (kind == 2) {
        s->bytes_d2h += count;
        s->last_d2h_bytes = count;
        s->n_d2h += 1;
        s->ts_seal = now;
        s->stream = PT_REGS_PARM5(ctx);
        gpu_progs.call(ctx, 0);  // the Python pack's stack walk, when loaded (returns here otherwise)
    } else if (kind == 3) {
        s->bytes_d2d += count;
    } else {
        s->bytes_other += count;
    }
    return 0;
}

// cudaEventRecord / hipEventRecord (event, stream): after the closing copy, park the step under the event.
int gpu_event_record(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    u32 tid = (u32)id;
    struct gpu_step *s = gpu_acc.lookup(&tid);
    if (!s) return 0;
    s->n_event_records += 1;
    if (s->n_d2h == 0) return 0;
    u64 event = PT_REGS_PARM1(ctx);
    u64 now = bpf_ktime_get_ns();
    struct gpu_step *old = gpu_sealed.lookup(&event);
    if (old) {  // the same event recorded again before anyone waited on it: write the old step as is
        gpu_emit(old, now, 0, 0, GPU_F_NO_SYNC);
        gpu_sealed.delete(&event);
    }
    s->event = event;
    s->flags |= GPU_F_SEALED;
    if (gpu_sealed.update(&event, s) != 0) {
        gpu_emit(s, now, 0, 0, GPU_F_NO_SYNC);  // too many steps waiting: write this one now
    } else {
        gpu_last_sealed.update(&tid, &event);
    }
    gpu_acc.delete(&tid);
    return 0;
}

static __always_inline int gpu_sync_enter(struct pt_regs *ctx, u32 is_event) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    u32 tid = (u32)id;
    struct gpu_sync_open o = {};
    o.ts = bpf_ktime_get_ns();
    o.handle = PT_REGS_PARM1(ctx);
    o.is_event = is_event;
    gpu_sync_open.update(&tid, &o);
    return 0;
}

// cudaEventSynchronize / hipEventSynchronize (event)
int gpu_evsync_enter(struct pt_regs *ctx) { return gpu_sync_enter(ctx, 1); }
// cudaStreamSynchronize / cuStreamSynchronize / hipStreamSynchronize (stream)
int gpu_stsync_enter(struct pt_regs *ctx) { return gpu_sync_enter(ctx, 0); }

int gpu_sync_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    u32 tid = (u32)id;
    struct gpu_sync_open *o = gpu_sync_open.lookup(&tid);
    if (!o) return 0;
    u64 now = bpf_ktime_get_ns();
    u64 t0 = o->ts;
    u64 wait = now - t0;
    u64 handle = o->handle;
    u32 is_event = o->is_event;
    gpu_sync_open.delete(&tid);
    if (is_event) {
        struct gpu_step *sealed = gpu_sealed.lookup(&handle);
        if (sealed) {
            u32 owner = sealed->tid;
            gpu_emit(sealed, now, wait, tid, 0);
            gpu_sealed.delete(&handle);
            u64 *last = gpu_last_sealed.lookup(&owner);
            if (last && *last == handle) gpu_last_sealed.delete(&owner);
            return 0;
        }
    }
    struct gpu_step *s = gpu_acc_get(tid, t0);
    if (!s) return 0;
    if (s->n_d2h > 0) {  // copy then synchronize, no event in between: the step ends here
        gpu_emit(s, now, wait, tid, is_event ? 0 : GPU_F_STREAM_SYNC);
        gpu_acc.delete(&tid);
        return 0;
    }
    s->sync_ns += wait;  // a synchronization inside the step
    s->n_syncs += 1;
    return 0;
}

// cuModuleGetFunction / hipModuleGetFunction (CUfunction *out, CUmodule, const char *name)
int gpu_getfn_enter(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    u32 tid = (u32)id;
    struct gpu_getfn_open o = {};
    o.out = PT_REGS_PARM1(ctx);
    o.name = PT_REGS_PARM3(ctx);
    gpu_getfn_open.update(&tid, &o);
    return 0;
}

int gpu_getfn_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    GPU_TGID_CHECK(id);
    u32 tid = (u32)id;
    struct gpu_getfn_open *o = gpu_getfn_open.lookup(&tid);
    if (!o) return 0;
    u64 out = o->out, name = o->name;
    gpu_getfn_open.delete(&tid);
    if (PT_REGS_RC(ctx) != 0) return 0;
    struct gpu_fn_rec *r = gpu_events.ringbuf_reserve(sizeof(struct gpu_fn_rec));
    if (!r) {
        gpu_count_lost();
        return 0;
    }
    r->kind = GPU_REC_FUNCTION;
    r->tid = tid;
    r->handle = 0;
    bpf_probe_read_user(&r->handle, sizeof(r->handle), (void *)out);
    if (bpf_probe_read_user_str(r->name, sizeof(r->name), (void *)name) < 0) r->name[0] = 0;
    gpu_events.ringbuf_submit(r, 0);
    return 0;
}

#endif  // PRISM_GPU_CORE
