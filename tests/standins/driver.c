/* A stand-in inference engine: the GPU API call pattern of vLLM v1 and SGLang
 * engine steps, against the stand-in libraries (no GPU needed).
 *
 *   gpu_driver[_hip] --mode vllm|sglang --steps N [options]     (see usage())
 *
 * It prints {"ready": pid} and waits for a line on stdin before it starts, so
 * a recorder can attach to the already running process first; at the end it
 * prints one JSON object with exactly what every step did (the tests compare
 * the recording against it) and exits.
 *
 * vLLM v1 (GPUModelRunner.execute_model): H2D input copies; decode = one CUDA
 * graph replay per step (collectives are captured inside the graph), prefill =
 * eager launches, layer by layer, with two all-reduces per layer under tensor
 * parallelism; then the logits all-gather and sampler kernels; then the
 * sampled token ids (batch * int64) are copied device-to-host, an event is
 * recorded and synchronized (or the stream is synchronized: --sync stream).
 * SGLang overlap loop (event_loop_overlap): the same per-step launches, but
 * step k's D2H copy and event record are followed by the launch of step k+1,
 * and only then does the scheduler synchronize step k's event.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct { unsigned int x, y, z; } dim3;
typedef struct { char internal[128]; } ncclUniqueId;
typedef void *handle_t;

#ifdef PLAT_HIP
#define PLATFORM "hip"
int hipLaunchKernel(const void *, dim3, dim3, void **, size_t, handle_t);
int hipGraphLaunch(handle_t, handle_t);
int hipMemcpyAsync(void *, const void *, size_t, int, handle_t);
int hipStreamSynchronize(handle_t);
int hipEventSynchronize(handle_t);
int hipEventRecord(handle_t, handle_t);
int hipModuleGetFunction(handle_t *, handle_t, const char *);
int hipModuleLaunchKernel(handle_t, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, handle_t,
                          void **, void **);
#define rtLaunchKernel hipLaunchKernel
#define rtGraphLaunch hipGraphLaunch
#define rtMemcpyAsync hipMemcpyAsync
#define rtStreamSynchronize hipStreamSynchronize
#define rtEventSynchronize hipEventSynchronize
#define rtEventRecord hipEventRecord
#define drvGetFunction(f, m, n) hipModuleGetFunction(f, m, n)
#define drvLaunchKernel hipModuleLaunchKernel
#define HAVE_LAUNCH_EX 0
#else
#define PLATFORM "cuda"
int cudaLaunchKernel(const void *, dim3, dim3, void **, size_t, handle_t);
int cudaGraphLaunch(handle_t, handle_t);
int cudaMemcpyAsync(void *, const void *, size_t, int, handle_t);
int cudaStreamSynchronize(handle_t);
int cudaEventSynchronize(handle_t);
int cudaEventRecord(handle_t, handle_t);
int cuModuleGetFunction(handle_t *, handle_t, const char *);
int cuLaunchKernel(handle_t, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, handle_t,
                   void **, void **);
typedef struct {
    unsigned int gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
    handle_t hStream;
    void *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;
int cuLaunchKernelEx(const CUlaunchConfig *, handle_t, void **, void **);
int cuGraphLaunch(handle_t, handle_t);
int cuStreamSynchronize(handle_t);
#define rtLaunchKernel cudaLaunchKernel
#define rtGraphLaunch cudaGraphLaunch
#define rtMemcpyAsync cudaMemcpyAsync
#define rtStreamSynchronize cudaStreamSynchronize
#define rtEventSynchronize cudaEventSynchronize
#define rtEventRecord cudaEventRecord
#define drvGetFunction(f, m, n) cuModuleGetFunction(f, m, n)
#define drvLaunchKernel cuLaunchKernel
#define HAVE_LAUNCH_EX 1
#endif

int ncclGetUniqueId(ncclUniqueId *);
int ncclCommInitRank(handle_t *, int, ncclUniqueId, int);
int ncclAllReduce(const void *, void *, size_t, int, int, handle_t, handle_t);
int ncclAllGather(const void *, void *, size_t, int, handle_t, handle_t);

extern void *standin_kernel_stubs[];  /* libstandin_kernels.so: paged_attention_v2, silu_and_mul, topk_topp, rms_norm */

enum { H2H = 0, H2D = 1, D2H = 2, D2D = 3 };
enum { NCCL_BF16 = 9, NCCL_SUM = 0 };
#define HIDDEN 4096
#define VOCAB 32000
#define STREAM ((handle_t)0x5A000)        /* compute stream */
#define NCCL_STREAM ((handle_t)0x5B000)   /* stream passed to the collectives */

/* Kernel host stubs in this executable (static: .symtab only, like a stripped
 * .dynsym would not show them). Distinct bodies so no two share an address. */
#define KSTUB(name, n) static __attribute__((noinline, used)) void name(void) { __asm__ volatile(".rept " #n "\n nop\n .endr" ::: "memory"); }
KSTUB(qkv_gemm_kernel, 1)
KSTUB(rotary_embedding_kernel, 2)
KSTUB(flash_attn_fwd_kernel, 3)
KSTUB(o_proj_gemm_kernel, 4)
KSTUB(gate_up_gemm_kernel, 5)
KSTUB(down_proj_gemm_kernel, 6)
KSTUB(residual_add_kernel, 7)
KSTUB(lm_head_gemm_kernel, 8)
KSTUB(softmax_kernel, 9)
KSTUB(argmax_kernel, 10)
KSTUB(gather_tokens_kernel, 11)

struct kernel { const char *name; const void *stub; uint64_t count; };
static struct kernel kernels[16];
static int n_kernels;

static int kernel_id(const char *name, const void *stub) {
    kernels[n_kernels].name = name;
    kernels[n_kernels].stub = stub;
    return n_kernels++;
}

struct cfg {
    const char *mode;
    int steps, prefill_every, layers, kernels_per_layer, sampler_kernels, graphs_per_decode, triton_per_layer;
    int max_batch, prompt_len, tp, rank, stream_sync, eager_decode, bench, skip_final_sync;
};

struct step {
    const char *phase;
    uint64_t launches, drv_launches, graph_launches, h2d, d2h, d2d, n_tokens, allreduce, allgather, nccl_bytes;
    uint64_t nccl_elems;
};

static struct step *steps;
static int layer_seq[10], sampler_seq[4], k_final_norm, k_lm_head;
static handle_t triton_fn[2], triton_ex_fn;
static const char *triton_names[3] = {"triton_fused_rms_rope_kernel", "triton_fused_moe_kernel",
                                      "triton_logits_softcap_kernel"};
static uint64_t triton_counts[3];
static handle_t comm;
static char buf_a[64], buf_b[64];

static void launch(struct step *s, int k) {
    static dim3 grid = {128, 1, 1}, block = {256, 1, 1};
    rtLaunchKernel(kernels[k].stub, grid, block, NULL, 0, STREAM);
    kernels[k].count++;
    s->launches++;
}

static void copy(struct step *s, size_t n, int kind) {
    rtMemcpyAsync(buf_a, buf_b, n, kind, STREAM);
    if (kind == H2D) s->h2d += n;
    else if (kind == D2H) s->d2h += n;
    else if (kind == D2D) s->d2d += n;
}

static void allreduce(const struct cfg *c, struct step *s, size_t count) {
    if (c->tp <= 1) return;
    ncclAllReduce(buf_a, buf_b, count, NCCL_BF16, NCCL_SUM, comm, NCCL_STREAM);
    s->allreduce++;
    s->nccl_bytes += count * 2;
    s->nccl_elems += count;
}

static void allgather(const struct cfg *c, struct step *s, size_t count) {
    if (c->tp <= 1) return;
    ncclAllGather(buf_a, buf_b, count, NCCL_BF16, comm, NCCL_STREAM);
    s->allgather++;
    s->nccl_bytes += count * 2;
    s->nccl_elems += count;
}

static handle_t graph_for(int bs) {
    int bucket = 1;
    while (bucket < bs) bucket <<= 1;
    return (handle_t)(uintptr_t)(0x6000 + bucket);
}

/* Everything one engine step launches, up to and including the D2H copy of the sampled tokens. */
static void launch_step(const struct cfg *c, int k) {
    struct step *s = &steps[k];
    int prefill = (k % c->prefill_every) == 0;
    int bs = 1 + (k * 5) % c->max_batch;
    uint64_t n_tok = prefill ? (uint64_t)bs * c->prompt_len : (uint64_t)bs;
    s->phase = prefill ? "prefill" : "decode";
    s->n_tokens = bs;
    /* _prepare_inputs: input ids, positions, slot mapping, sequence lengths */
    copy(s, n_tok * 4, H2D);
    copy(s, n_tok * 8, H2D);
    copy(s, n_tok * 8, H2D);
    copy(s, (size_t)bs * 4, H2D);
    if (prefill || c->eager_decode) {
        for (int l = 0; l < c->layers; l++) {
            for (int i = 0; i < c->kernels_per_layer; i++) {
                launch(s, layer_seq[i % 10]);
                if (i % 10 == 4) allreduce(c, s, n_tok * HIDDEN);   /* after o_proj */
            }
            allreduce(c, s, n_tok * HIDDEN);                        /* after down_proj */
            for (int j = 0; j < c->triton_per_layer; j++) {
                drvLaunchKernel(triton_fn[j % 2], 64, 1, 1, 128, 1, 1, 0, STREAM, NULL, NULL);
                triton_counts[j % 2]++;
                s->drv_launches++;
            }
        }
        if (prefill) copy(s, n_tok * 256, D2D);  /* KV cache write-back */
#if HAVE_LAUNCH_EX
        if (c->triton_per_layer) {
            CUlaunchConfig cfg = {64, 1, 1, 128, 1, 1, 0, STREAM, NULL, 0};
            cuLaunchKernelEx(&cfg, triton_ex_fn, NULL, NULL);
            triton_counts[2]++;
            s->drv_launches++;
        }
#endif
    } else {
        for (int g = 0; g < c->graphs_per_decode; g++) {
            rtGraphLaunch(graph_for(bs), STREAM);
            s->graph_launches++;
        }
    }
    /* compute_logits: final norm + lm_head (eager), vocab-parallel all-gather */
    launch(s, k_final_norm);
    launch(s, k_lm_head);
    allgather(c, s, (size_t)bs * VOCAB / (c->tp > 1 ? c->tp : 1));
    for (int i = 0; i < c->sampler_kernels; i++) launch(s, sampler_seq[i % 4]);
    /* sampled token ids, int64 per sequence, to the host */
    copy(s, (size_t)bs * 8, D2H);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void usage(void) {
    fprintf(stderr, "usage: gpu_driver --mode vllm|sglang --steps N [--prefill-every K] [--layers L]\n"
                    "  [--kernels-per-layer K] [--sampler-kernels S] [--graphs-per-decode G] [--triton-per-layer T]\n"
                    "  [--max-batch B] [--prompt-len P] [--tp W] [--rank R] [--sync event|stream] [--eager-decode]\n"
                    "  [--skip-final-sync]\n"
                    "  [--no-wait] | --bench N (ns per call of each API)\n");
    exit(2);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void bench_call(int which, dim3 g) {
    switch (which) {
    case 0: rtLaunchKernel(kernels[0].stub, g, g, NULL, 0, STREAM); break;
    case 1: rtGraphLaunch(graph_for(1), STREAM); break;
    case 2: rtMemcpyAsync(buf_a, buf_b, 8, H2D, STREAM); break;
    case 3: drvLaunchKernel(triton_fn[0], 1, 1, 1, 1, 1, 1, 0, STREAM, NULL, NULL); break;
    case 4: rtEventRecord((handle_t)0xE0000, STREAM); break;
    case 5: rtEventSynchronize((handle_t)0xE0000); break;
    case 6: ncclAllReduce(buf_a, buf_b, 1024, NCCL_BF16, NCCL_SUM, comm, NCCL_STREAM); break;
    case 7:
        rtMemcpyAsync(buf_a, buf_b, 8, D2H, STREAM);
        rtEventRecord((handle_t)0xE0000, STREAM);
        rtEventSynchronize((handle_t)0xE0000);
        break;
    }
}

/* ns per call of each probed API: the median over chunks of 200 calls (robust to preemption
 * on a busy machine); run with and without a recorder attached. */
static void bench(int n) {
    dim3 g = {1, 1, 1};
    const char *names[] = {"launch", "graph_launch", "memcpy_h2d", "drv_launch", "event_record", "event_sync",
                           "allreduce", "step_d2h_record_sync"};
    enum { CHUNK = 200 };
    int chunks = n / CHUNK > 0 ? n / CHUNK : 1;
    uint64_t *t = calloc(chunks, sizeof(*t));
    printf("{\"bench\": {");
    for (int c = 0; c < 8; c++) {
        for (int i = 0; i < CHUNK; i++) bench_call(c, g);  /* warm up */
        for (int k = 0; k < chunks; k++) {
            uint64_t t0 = now_ns();
            for (int i = 0; i < CHUNK; i++) bench_call(c, g);
            t[k] = now_ns() - t0;
        }
        qsort(t, chunks, sizeof(*t), cmp_u64);
        printf("%s\"%s\": %.1f", c ? ", " : "", names[c], (double)t[chunks / 2] / CHUNK);
    }
    printf("}, \"calls\": %d}\n", chunks * CHUNK);
    free(t);
}

int main(int argc, char **argv) {
    struct cfg c = {"vllm", 20, 4, 4, 10, 4, 1, 0, 8, 16, 1, 0, 0, 0, 0, 0};
    int wait = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define OPT(flag, field) else if (!strcmp(a, flag) && v) { c.field = atoi(v); i++; }
        if (!strcmp(a, "--mode") && v) { c.mode = v; i++; }
        OPT("--steps", steps) OPT("--prefill-every", prefill_every) OPT("--layers", layers)
        OPT("--kernels-per-layer", kernels_per_layer) OPT("--sampler-kernels", sampler_kernels)
        OPT("--graphs-per-decode", graphs_per_decode) OPT("--triton-per-layer", triton_per_layer)
        OPT("--max-batch", max_batch) OPT("--prompt-len", prompt_len) OPT("--tp", tp) OPT("--rank", rank)
        OPT("--bench", bench)
        else if (!strcmp(a, "--sync") && v) { c.stream_sync = !strcmp(v, "stream"); i++; }
        else if (!strcmp(a, "--eager-decode")) c.eager_decode = 1;
        else if (!strcmp(a, "--skip-final-sync")) c.skip_final_sync = 1;
        else if (!strcmp(a, "--no-wait")) wait = 0;
        else usage();
    }
    if (strcmp(c.mode, "vllm") && strcmp(c.mode, "sglang")) usage();
    if (c.steps < 1 || c.prefill_every < 1 || c.max_batch < 1 || c.tp < 1 || c.rank >= c.tp) usage();
    steps = calloc(c.steps, sizeof(*steps));

    int k_rms = kernel_id("_ZN4vllm15rms_norm_kernelEv", standin_kernel_stubs[3]);
    int seq[10] = {k_rms, kernel_id("qkv_gemm_kernel", qkv_gemm_kernel),
                   kernel_id("rotary_embedding_kernel", rotary_embedding_kernel),
                   kernel_id("flash_attn_fwd_kernel", flash_attn_fwd_kernel),
                   kernel_id("o_proj_gemm_kernel", o_proj_gemm_kernel), k_rms,
                   kernel_id("gate_up_gemm_kernel", gate_up_gemm_kernel),
                   kernel_id("silu_and_mul_kernel", standin_kernel_stubs[1]),
                   kernel_id("down_proj_gemm_kernel", down_proj_gemm_kernel),
                   kernel_id("residual_add_kernel", residual_add_kernel)};
    memcpy(layer_seq, seq, sizeof(seq));
    k_final_norm = k_rms;
    k_lm_head = kernel_id("lm_head_gemm_kernel", lm_head_gemm_kernel);
    sampler_seq[0] = kernel_id("softmax_kernel", softmax_kernel);
    sampler_seq[1] = kernel_id("topk_topp_sampler_kernel", standin_kernel_stubs[2]);
    sampler_seq[2] = kernel_id("argmax_kernel", argmax_kernel);
    sampler_seq[3] = kernel_id("gather_tokens_kernel", gather_tokens_kernel);

    printf("{\"ready\": %d}\n", (int)getpid());
    fflush(stdout);
    if (wait) {
        char line[64];
        if (!fgets(line, sizeof(line), stdin)) return 1;
    }
    /* Start-up work an attached recorder sees: communicator, JIT kernels. */
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    if (c.tp > 1 && ncclCommInitRank(&comm, c.tp, id, c.rank) != 0) return 1;
    drvGetFunction(&triton_fn[0], NULL, triton_names[0]);
    drvGetFunction(&triton_fn[1], NULL, triton_names[1]);
    drvGetFunction(&triton_ex_fn, NULL, triton_names[2]);
    if (c.bench) {
        bench(c.bench);
        return 0;
    }

    uint64_t t0 = now_ns();
    handle_t event = (handle_t)0xE0000;
    if (!strcmp(c.mode, "vllm")) {
        for (int k = 0; k < c.steps; k++) {
            launch_step(&c, k);
            if (c.stream_sync) {
                rtStreamSynchronize(STREAM);
            } else {
                rtEventRecord(event, STREAM);
                rtEventSynchronize(event);
            }
        }
    } else {
        /* SGLang overlap: launch step k, then resolve step k-1 (its event sync). */
        for (int k = 0; k < c.steps; k++) {
            launch_step(&c, k);
            rtEventRecord((handle_t)(uintptr_t)(0xE1000 + 16 * k), STREAM);
            if (k > 0) rtEventSynchronize((handle_t)(uintptr_t)(0xE1000 + 16 * (k - 1)));
        }
        /* the process may exit with the last step's result never waited for */
        if (!c.skip_final_sync) rtEventSynchronize((handle_t)(uintptr_t)(0xE1000 + 16 * (c.steps - 1)));
    }
    uint64_t loop_ns = now_ns() - t0;

    printf("{\"platform\": \"%s\", \"mode\": \"%s\", \"pid\": %d, \"loop_ns\": %llu, \"tp\": %d, \"rank\": %d, "
           "\"comm\": %llu, \"stream\": %llu, \"nccl_stream\": %llu, \"dtype\": %d, \"op\": %d, \"steps\": [",
           PLATFORM, c.mode, (int)getpid(), (unsigned long long)loop_ns, c.tp, c.rank,
           (unsigned long long)(uintptr_t)comm, (unsigned long long)(uintptr_t)STREAM,
           (unsigned long long)(uintptr_t)NCCL_STREAM, NCCL_BF16, NCCL_SUM);
    for (int k = 0; k < c.steps; k++) {
        struct step *s = &steps[k];
        printf("%s{\"phase\": \"%s\", \"n_launches\": %llu, \"n_drv_launches\": %llu, \"n_graph_launches\": %llu, "
               "\"bytes_h2d\": %llu, \"bytes_d2h\": %llu, \"bytes_d2d\": %llu, \"n_tokens\": %llu, "
               "\"n_allreduce\": %llu, \"n_allgather\": %llu, \"nccl_bytes\": %llu, \"nccl_elems\": %llu}",
               k ? ", " : "", s->phase, (unsigned long long)s->launches, (unsigned long long)s->drv_launches,
               (unsigned long long)s->graph_launches, (unsigned long long)s->h2d, (unsigned long long)s->d2h,
               (unsigned long long)s->d2d, (unsigned long long)s->n_tokens, (unsigned long long)s->allreduce,
               (unsigned long long)s->allgather, (unsigned long long)s->nccl_bytes,
               (unsigned long long)s->nccl_elems);
    }
    printf("], \"kernels\": {");
    int first = 1;
    for (int i = 0; i < n_kernels; i++) {
        if (!kernels[i].count) continue;
        printf("%s\"%s\": %llu", first ? "" : ", ", kernels[i].name, (unsigned long long)kernels[i].count);
        first = 0;
    }
    printf("}, \"drv_kernels\": {");
    first = 1;
    for (int i = 0; i < 3; i++) {
        if (!triton_counts[i]) continue;
        printf("%s\"%s\": %llu", first ? "" : ", ", triton_names[i], (unsigned long long)triton_counts[i]);
        first = 0;
    }
    printf("}}\n");
    fflush(stdout);
    return 0;
}
