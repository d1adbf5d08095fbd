// NCCL / RCCL probe pack: collectives aggregated into the engine step of the
// calling thread (struct gpu_step in the GPU core), rank and world size from
// communicator creation.
//
// x86-64 SysV argument passing of the probed calls:
//   ncclAllReduce(sendbuff rdi, recvbuff rsi, count rdx, datatype ecx, op r8d, comm r9, stream [sp+8])
//   ncclReduceScatter(sendbuff, recvbuff, recvcount rdx, datatype ecx, op r8d, comm r9, stream [sp+8])
//   ncclBroadcast(sendbuff, recvbuff, count rdx, datatype ecx, root r8d, comm r9, stream [sp+8])
//   ncclAllGather(sendbuff, recvbuff, sendcount rdx, datatype ecx, comm r8, stream r9)
//   ncclSend / ncclRecv(buff rdi, count rsi, datatype edx, peer ecx, comm r8, stream r9)
//   ncclCommInitRank(ncclComm_t *comm rdi, int nranks esi, ncclUniqueId commId, int rank)
//     ncclUniqueId is a 128-byte struct passed by value, i.e. in memory on the
//     stack, so it takes no register: rank arrives in edx.
//   ncclCommInitRankConfig(comm rdi, nranks esi, commId (stack), rank edx, config rcx)

#define NCCL_ALLREDUCE 0
#define NCCL_ALLGATHER 1
#define NCCL_REDUCESCATTER 2
#define NCCL_BROADCAST 3
#define NCCL_SEND 4
#define NCCL_RECV 5

struct nccl_init_open {
    u64 commp;
    s32 nranks;
    s32 rank;
};

BPF_HASH(nccl_init_open, u32, struct nccl_init_open, 1024);

static __always_inline u32 nccl_dtype_size(s32 dtype) {
    switch (dtype) {
    case 0: case 1: return 1;      // ncclInt8, ncclUint8
    case 2: case 3: return 4;      // ncclInt32, ncclUint32
    case 4: case 5: return 8;      // ncclInt64, ncclUint64
    case 6: return 2;              // ncclFloat16
    case 7: return 4;              // ncclFloat32
    case 8: return 8;              // ncclFloat64
    case 9: return 2;              // ncclBfloat16
    case 10: case 11: return 1;    // ncclFloat8e4m3, ncclFloat8e5m2
    }
    return 0;
}

static __always_inline int nccl_account(u32 kind, u64 count, s32 dtype, s32 op, u64 comm, u64 stream) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u64 now = bpf_ktime_get_ns();
    struct gpu_step *s = gpu_acc_get((u32)id, now);
    if (!s) return 0;
    u32 total = 0;
    #pragma unroll
    for (int i = 0; i < GPU_COLL_KINDS; i++) total += s->n_coll[i];
    if (total) {
        if (s->coll_comm != comm) s->coll_mixed |= 1;
        if (s->coll_dtype != dtype) s->coll_mixed |= 2;
        if (op >= 0 && s->coll_op >= 0 && s->coll_op != op) s->coll_mixed |= 4;
        if (s->coll_stream != stream) s->coll_mixed |= 8;
    }
    if (kind < GPU_COLL_KINDS) s->n_coll[kind] += 1;
    s->coll_elems += count;
    s->coll_bytes += count * nccl_dtype_size(dtype);
    s->coll_comm = comm;
    s->coll_stream = stream;
    s->coll_dtype = dtype;
    if (op >= 0 || total == 0) s->coll_op = op;
    s->coll_enter = now;
    return 0;
}

static __always_inline u64 nccl_stack_arg(struct pt_regs *ctx, int n) {
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)(PT_REGS_SP(ctx) + 8 * n));
    return v;
}

int nccl_allreduce_enter(struct pt_regs *ctx) {
    return nccl_account(NCCL_ALLREDUCE, PT_REGS_PARM3(ctx), (s32)PT_REGS_PARM4(ctx), (s32)PT_REGS_PARM5(ctx),
                        PT_REGS_PARM6(ctx), nccl_stack_arg(ctx, 1));
}

int nccl_reducescatter_enter(struct pt_regs *ctx) {
    return nccl_account(NCCL_REDUCESCATTER, PT_REGS_PARM3(ctx), (s32)PT_REGS_PARM4(ctx), (s32)PT_REGS_PARM5(ctx),
                        PT_REGS_PARM6(ctx), nccl_stack_arg(ctx, 1));
}

int nccl_broadcast_enter(struct pt_regs *ctx) {
    return nccl_account(NCCL_BROADCAST, PT_REGS_PARM3(ctx), (s32)PT_REGS_PARM4(ctx), -1,
                        PT_REGS_PARM6(ctx), nccl_stack_arg(ctx, 1));
}

int nccl_allgather_enter(struct pt_regs *ctx) {
    return nccl_account(NCCL_ALLGATHER, PT_REGS_PARM3(ctx), (s32)PT_REGS_PARM4(ctx), -1,
                        PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx));
}

int nccl_send_enter(struct pt_regs *ctx) {
    return nccl_account(NCCL_SEND, PT_REGS_PARM2(ctx), (s32)PT_REGS_PARM3(ctx), -1,
                        PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx));
}

int nccl_recv_enter(struct pt_regs *ctx) {
    return nccl_account(NCCL_RECV, PT_REGS_PARM2(ctx), (s32)PT_REGS_PARM3(ctx), -1,
                        PT_REGS_PARM5(ctx), PT_REGS_PARM6(ctx));
}

// Host-side time in the collective call (enqueue, not the transfer: that runs on the GPU).
int nccl_coll_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct gpu_step *s = gpu_acc.lookup(&tid);
    if (!s || !s->coll_enter) return 0;
    s->coll_ns += bpf_ktime_get_ns() - s->coll_enter;
    s->coll_enter = 0;
    return 0;
}

int nccl_init_enter(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct nccl_init_open o = {};
    o.commp = PT_REGS_PARM1(ctx);
    o.nranks = (s32)PT_REGS_PARM2(ctx);
    o.rank = (s32)PT_REGS_PARM3(ctx);
    nccl_init_open.update(&tid, &o);
    return 0;
}

int nccl_init_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct nccl_init_open *o = nccl_init_open.lookup(&tid);
    if (!o) return 0;
    struct gpu_comm_rec *r = gpu_events.ringbuf_reserve(sizeof(struct gpu_comm_rec));
    if (!r) {
        gpu_count_lost();
        nccl_init_open.delete(&tid);
        return 0;
    }
    r->kind = GPU_REC_COMM;
    r->rank = o->rank;
    r->nranks = o->nranks;
    r->ret = (s32)PT_REGS_RC(ctx);
    r->comm = 0;
    bpf_probe_read_user(&r->comm, sizeof(r->comm), (void *)o->commp);
    r->ts = bpf_ktime_get_ns();
    gpu_events.ringbuf_submit(r, 0);
    nccl_init_open.delete(&tid);
    return 0;
}
