// llama.cpp probe pack: one record per llama_decode call (a batch), with its
// workload attributes computed in the kernel, plus one record per inner stage
// call (graph compute, sampling, tokenization, detokenization). Stage calls
// shorter than LLAMA_MIN_STAGE_NS are not written one by one: each thread sums
// them per stage, and its next llama_decode record carries the sums (those since
// the previous decode returned, and those inside the call).
//
// x86-64 ABI detail: llama_decode(struct llama_context *, struct llama_batch)
// takes the 56-byte llama_batch BY VALUE; the SysV ABI passes it in memory, so
// at function entry it sits on the stack just above the return address:
// batch = *(struct llama_batch *)(sp + 8).

#define LLAMA_CHUNK 256         // tokens one tail-called program inspects (keeps the verifier happy)
#define LLAMA_MAX_CHUNKS 32     // at most 32 tail calls: 8192 tokens; more are counted as truncated
#define LLAMA_MAX_SEQ 64        // sequence ids tracked per batch (ids are folded modulo this)
#define LLAMA_SLOTS 8           // stage ids 1..7 (pack.py's STAGES)

struct llama_batch_abi {        // struct llama_batch, x86-64 layout
    s32 n_tokens;
    s32 _pad;
    u64 token;                  // llama_token *
    u64 embd;                   // float *
    u64 pos;                    // llama_pos *
    u64 n_seq_id;               // int32_t *
    u64 seq_id;                 // llama_seq_id **
    u64 logits;                 // int8_t *
};

struct llama_event {
    u64 ts_start;
    u64 ts_end;
    u32 tid;
    u32 kind;                   // 0 = batch (llama_decode), else a stage id (see pack.py)
    s32 n_tokens;
    s32 n_seqs;
    s32 n_prefill_tokens;
    s32 n_decode_tokens;
    s64 kv_tokens;              // sum over sequences of their context length after this batch
    s32 n_outputs;
    s32 ret;
    u32 truncated;              // tokens beyond the inspected maximum
    u32 seq_mask_lo;            // bit i set: sequence id i (< 32) is in the batch
    u32 prefill_mask_lo;        // bit i set: sequence id i (< 32) brings more than one token
    u32 wake;                   // the batch's shape key (llama_shape_key); bit 31: it woke the consumer
    u64 gap_short_end;          // end of the last short stage call in the gap (0: none)
    u32 gap_short_ns[LLAMA_SLOTS];  // per stage id: short calls since this thread's previous decode returned
    u32 short_ns[LLAMA_SLOTS];      // per stage id: short calls inside this llama_decode
};

struct llama_stage_event {      // one stage call at least LLAMA_MIN_STAGE_NS long
    u64 ts_start;
    u64 ts_end;
    u32 tid;
    u32 kind;                   // stage id
};

// Per thread of the target: its open stage calls and the short calls no batch has taken yet.
struct llama_thread {
    u64 open_ts[LLAMA_SLOTS];   // entry time of the open call of each stage id (0: none)
    u64 short_ns[LLAMA_SLOTS];  // short calls not nested in another stage call, per stage id
    u64 short_end;              // end of the last of them
};

struct llama_seq_scratch {     // per-CPU scratch: the BPF stack is only 512 bytes
    u32 count[LLAMA_MAX_SEQ];
    s32 maxpos[LLAMA_MAX_SEQ];
    struct llama_batch_abi b;
    s32 n;                      // tokens to inspect
    s32 cursor;                 // next token index
    struct llama_event ev;
};

BPF_RINGBUF_OUTPUT(llama_events, RINGBUF_PAGES);  // batches; 256 pages (1 MiB) by default
// Stages have a buffer of their own: the batch buffer is read by the recorder's live
// thread (one wakeup per batch when someone watches live), the stages by its polling
// thread every drain, so a live wakeup handles one record instead of a dozen.
BPF_RINGBUF_OUTPUT(llama_stage_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(llama_stage_lost, u64, 1);
BPF_PERCPU_ARRAY(llama_scratch, struct llama_seq_scratch, 1);
BPF_PERCPU_ARRAY(llama_lost, u64, 1);
BPF_HASH(llama_open_batch, u32, struct llama_event, 1024);
BPF_TABLE("lru_hash", u32, struct llama_thread, llama_threads, 4096);  // tid -> its stage state
struct llama_short { u64 count; u64 ns; };
// Stage calls shorter than LLAMA_MIN_STAGE_NS (defined by pack.py), per stage id: counted
// and timed here, not written one by one (llama_synchronize and common_token_to_piece
// take 1-2 us, a few calls per sequence per batch: most of the stage records).
BPF_PERCPU_ARRAY(llama_short_stages, struct llama_short, LLAMA_SLOTS);
BPF_PROG_ARRAY(llama_progs, 2);                  // 0: llama_tokens_chunk, 1: llama_batch_fold
struct llama_wake {
    u32 mode;                   // 0: wake only after min_gap_ns; 1: at every batch end (someone watches
                                // batches live); 2: at batches that may be slow (see llama_wake_floor)
    u32 _pad;
    u64 min_gap_ns;             // else wake at the first batch end this long after the last wakeup
    u64 last;                   // last forced wakeup
};
BPF_ARRAY(llama_wake, struct llama_wake, 1);     // set by pack.py (set_live, LiveWake)
// Mode 2: shape key -> the shortest duration (ns) at which a batch of that shape may be slower
// than expected, set by the online detector from its model; a batch at least this long, or of
// a shape with no entry yet, wakes the consumer, the others wait for the next wakeup.
BPF_HASH(llama_wake_floor, u32, u64, 65536);

// A coarse key of a batch's workload: tokens (exact below 64, then per 64), sequences (up
// to 63) and context (per 64 tokens). Batches with one key have nearly the same expected
// latency; the detector keeps the lowest floor it has seen per key.
static __always_inline u32 llama_shape_key(const struct llama_event *e) {
    u32 n = e->n_tokens > 0 ? (u32)e->n_tokens : 0;
    u32 tok = n < 64 ? n : 64 + (n >> 6);
    if (tok > 255) tok = 255;
    u32 seqs = e->n_seqs > 0 ? (u32)e->n_seqs : 0;
    if (seqs > 63) seqs = 63;
    u64 kv = e->kv_tokens > 0 ? (u64)e->kv_tokens >> 6 : 0;
    if (kv > 4095) kv = 4095;
    return tok | (seqs << 8) | ((u32)kv << 14);
}

// Move a thread's short-call sums into a batch record (and clear them).
static __always_inline void llama_take_short(u32 tid, u32 *ns, u64 *end) {
    struct llama_thread *t = llama_threads.lookup(&tid);
    if (!t) return;
    #pragma clang loop unroll(full)
    for (int k = 0; k < LLAMA_SLOTS; k++) {
        ns[k] = t->short_ns[k] > 0xffffffffULL ? 0xffffffffU : (u32)t->short_ns[k];
        t->short_ns[k] = 0;
    }
    if (end) *end = t->short_end;
    t->short_end = 0;
}

static __always_inline void llama_count_lost(void) {
    int zero = 0;
    u64 *lost = llama_lost.lookup(&zero);
    if (lost) (*lost)++;
}

int llama_decode_enter(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    int zero = 0;
    struct llama_seq_scratch *s = llama_scratch.lookup(&zero);
    if (!s) return 0;
    __builtin_memset(&s->ev, 0, sizeof(s->ev));
    struct llama_event *e = &s->ev;
    e->ts_start = bpf_ktime_get_ns();
    e->tid = tid;
    llama_take_short(tid, e->gap_short_ns, &e->gap_short_end);
    if (bpf_probe_read_user(&s->b, sizeof(s->b), (void *)(PT_REGS_SP(ctx) + 8)) != 0) {
        e->n_tokens = -1;
        llama_open_batch.update(&tid, e);
        return 0;
    }
    e->n_tokens = s->b.n_tokens;
    if (s->b.pos == 0 || s->b.seq_id == 0) {
        // Positions/sequences left to llama.cpp (llama_batch_get_one): one sequence.
        e->n_seqs = 1;
        if (s->b.n_tokens > 1) e->n_prefill_tokens = s->b.n_tokens; else e->n_decode_tokens = s->b.n_tokens;
        e->kv_tokens = -1;
        llama_open_batch.update(&tid, e);
        return 0;
    }
    #pragma clang loop unroll(disable)
    for (int k = 0; k < LLAMA_MAX_SEQ; k++) { s->count[k] = 0; s->maxpos[k] = -1; }
    int n = s->b.n_tokens;
    if (n < 0) n = 0;
    if (n > LLAMA_CHUNK * LLAMA_MAX_CHUNKS) {
        e->truncated = n - LLAMA_CHUNK * LLAMA_MAX_CHUNKS;
        n = LLAMA_CHUNK * LLAMA_MAX_CHUNKS;
    }
    s->n = n;
    s->cursor = 0;
    llama_progs.call(ctx, 0);
    // Only reached if the tail call failed: record the batch without attributes.
    llama_open_batch.update(&tid, e);
    return 0;
}

// Tokens [cursor, cursor + LLAMA_CHUNK): read each token's position, first
// sequence id and output flag; count tokens and the highest position per sequence.
int llama_tokens_chunk(struct pt_regs *ctx) {
    int zero = 0;
    struct llama_seq_scratch *s = llama_scratch.lookup(&zero);
    if (!s) return 0;
    int base = s->cursor;
    #pragma clang loop unroll(disable)
    for (int j = 0; j < LLAMA_CHUNK; j++) {
        int i = base + j;
        if (i >= s->n) break;
        s32 p = 0;
        u64 sp = 0;
        s32 sid = 0;
        s8 out = 0;
        bpf_probe_read_user(&p, sizeof(p), (void *)(s->b.pos + 4 * (u64)i));
        bpf_probe_read_user(&sp, sizeof(sp), (void *)(s->b.seq_id + 8 * (u64)i));
        bpf_probe_read_user(&sid, sizeof(sid), (void *)sp);
        if (s->b.logits) {
            bpf_probe_read_user(&out, sizeof(out), (void *)(s->b.logits + (u64)i));
            if (out) s->ev.n_outputs += 1;
        }
        u32 k = ((u32)sid) & (LLAMA_MAX_SEQ - 1);
        s->count[k] += 1;
        if (p > s->maxpos[k]) s->maxpos[k] = p;
    }
    s->cursor = base + LLAMA_CHUNK;
    if (s->cursor < s->n)
        llama_progs.call(ctx, 0);
    llama_progs.call(ctx, 1);
    return 0;
}

// Fold the per-sequence counts into the batch attributes and park the batch
// until llama_decode returns.
int llama_batch_fold(struct pt_regs *ctx) {
    int zero = 0;
    struct llama_seq_scratch *s = llama_scratch.lookup(&zero);
    if (!s) return 0;
    struct llama_event *e = &s->ev;
    #pragma clang loop unroll(disable)
    for (int k = 0; k < LLAMA_MAX_SEQ; k++) {
        u32 c = s->count[k];
        if (c == 0) continue;
        e->n_seqs += 1;
        if (c == 1) e->n_decode_tokens += 1; else e->n_prefill_tokens += c;
        e->kv_tokens += (s64)s->maxpos[k] + 1;
        if (k < 32) e->seq_mask_lo |= (1u << k);
        if (k < 32 && c > 1) e->prefill_mask_lo |= (1u << k);
    }
    u32 tid = e->tid;
    llama_open_batch.update(&tid, e);
    return 0;
}

int llama_decode_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct llama_event *open = llama_open_batch.lookup(&tid);
    if (!open) return 0;
    struct llama_event *ev = llama_events.ringbuf_reserve(sizeof(struct llama_event));
    if (!ev) {
        llama_count_lost();
        llama_open_batch.delete(&tid);
        return 0;
    }
    __builtin_memcpy(ev, open, sizeof(*ev));
    ev->ts_end = bpf_ktime_get_ns();
    ev->ret = (s32)PT_REGS_RC(ctx);
    llama_take_short(tid, ev->short_ns, 0);
    // A finished batch is what an online detector waits for: wake the consumer now (mode 1),
    // or only when the batch may be slower than expected (mode 2: the others are read at the
    // next wakeup, in order). Besides, wake it at the first batch end min_gap_ns after the last
    // wakeup: the recorder then drains every buffer while the engine samples and sends tokens
    // on one thread (a wakeup mid-batch preempts one of its lockstep compute threads and
    // stalls the other).
    int zero = 0;
    u64 flags = BPF_RB_NO_WAKEUP;
    u32 key = llama_shape_key(ev);
    struct llama_wake *w = llama_wake.lookup(&zero);
    if (w) {
        int wake = w->mode == 1;
        if (w->mode == 2) {
            u64 *floor = llama_wake_floor.lookup(&key);
            wake = !floor || ev->ts_end - ev->ts_start >= *floor;
        }
        if (wake || (w->min_gap_ns && ev->ts_end - w->last >= w->min_gap_ns)) {
            w->last = ev->ts_end;
            flags = BPF_RB_FORCE_WAKEUP;
            key |= 0x80000000U;
        }
    }
    ev->wake = key;
    llama_events.ringbuf_submit(ev, flags);
    llama_open_batch.delete(&tid);
    return 0;
}

static __always_inline int llama_stage_enter(u32 stage) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct llama_thread *t = llama_threads.lookup(&tid);
    if (!t) {
        struct llama_thread fresh = {};
        llama_threads.update(&tid, &fresh);
        t = llama_threads.lookup(&tid);
        if (!t) return 0;
    }
    t->open_ts[stage & (LLAMA_SLOTS - 1)] = bpf_ktime_get_ns();
    return 0;
}

static __always_inline int llama_stage_return(u32 stage) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct llama_thread *t = llama_threads.lookup(&tid);
    if (!t) return 0;
    u32 slot = stage & (LLAMA_SLOTS - 1);
    u64 start = t->open_ts[slot];
    if (!start) return 0;
    t->open_ts[slot] = 0;
    u64 now = bpf_ktime_get_ns();
    if (now - start < LLAMA_MIN_STAGE_NS) {
        struct llama_short *sh = llama_short_stages.lookup(&slot);
        if (sh) {
            sh->count += 1;             // per-CPU slot: no other writer
            sh->ns += now - start;
        }
        // A call nested in another stage call is part of that call's time already.
        int nested = 0;
        #pragma clang loop unroll(full)
        for (int k = 0; k < LLAMA_SLOTS; k++)
            if (t->open_ts[k]) nested = 1;
        if (!nested) {
            t->short_ns[slot] += now - start;
            t->short_end = now;
        }
        return 0;
    }
    struct llama_stage_event *ev = llama_stage_events.ringbuf_reserve(sizeof(struct llama_stage_event));
    if (!ev) {
        int zero = 0;
        u64 *lost = llama_stage_lost.lookup(&zero);
        if (lost) (*lost)++;
        return 0;
    }
    ev->ts_start = start;
    ev->ts_end = now;
    ev->tid = tid;
    ev->kind = stage;
    // No wakeup: the recorder drains stages every poll interval (200 ms); 1 MiB holds
    // minutes of them.
    llama_stage_events.ringbuf_submit(ev, BPF_RB_NO_WAKEUP);
    return 0;
}

// One entry/return pair per stage id; pack.py generates the list (LLAMA_STAGE_PROGRAMS).
#define LLAMA_STAGE(N) \
    int llama_stage_enter_##N(struct pt_regs *ctx) { return llama_stage_enter(N); } \
    int llama_stage_return_##N(struct pt_regs *ctx) { return llama_stage_return(N); }
LLAMA_STAGE_PROGRAMS
