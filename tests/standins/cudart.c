/* Stand-in libcudart.so.12: the CUDA runtime entry points an inference engine
 * calls on its step path, with the real C signatures (x86-64 SysV ABI: dim3 is
 * passed by value in two registers each; sharedMem and stream go on the stack). */
#include "standin.h"

typedef int cudaError_t;
typedef struct { unsigned int x, y, z; } dim3;
typedef struct CUstream_st *cudaStream_t;
typedef struct CUevent_st *cudaEvent_t;
typedef struct CUgraphExec_st *cudaGraphExec_t;
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2,
                      cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };

struct cudart_stats { uint64_t launches, graph_launches, copies, bytes[5], stream_syncs, event_syncs, event_records; };
static struct cudart_stats st;

API cudaError_t cudaLaunchKernel(const void *func, dim3 gridDim, dim3 blockDim, void **args,
                                 size_t sharedMem, cudaStream_t stream) {
    (void)func; (void)gridDim; (void)blockDim; (void)args; (void)sharedMem; (void)stream;
    COUNT(st.launches);
    return 0;
}

API cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream) {
    (void)graphExec; (void)stream;
    COUNT(st.graph_launches);
    return 0;
}

API cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t count, enum cudaMemcpyKind kind,
                                cudaStream_t stream) {
    (void)dst; (void)src; (void)stream;
    COUNT(st.copies);
    if ((unsigned)kind < 5) standin_add(&st.bytes[kind], count);
    return 0;
}

API cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    (void)stream;
    COUNT(st.stream_syncs);
    standin_gpu_tail();
    return 0;
}

API cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    (void)event;
    COUNT(st.event_syncs);
    standin_gpu_tail();
    return 0;
}

API cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    (void)event; (void)stream;
    COUNT(st.event_records);
    return 0;
}

API cudaError_t cudaGetDeviceCount(int *count) { *count = 1; return 0; }

/* Not part of CUDA: what this stand-in saw (for the tests). */
API void standin_cudart_stats(struct cudart_stats *out) { *out = st; }
