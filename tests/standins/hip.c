/* Stand-in libamdhip64.so.6 (ROCm HIP runtime): the same shape as the CUDA
 * runtime (dim3 by value; hipMemcpyKind has CUDA's values), plus the module
 * (driver-style) launch that Triton on ROCm uses. */
#include <string.h>
#include "standin.h"

typedef int hipError_t;
typedef struct { unsigned int x, y, z; } dim3;
typedef struct ihipStream_t *hipStream_t;
typedef struct ihipEvent_t *hipEvent_t;
typedef struct hipGraphExec *hipGraphExec_t;
typedef struct ihipModuleSymbol_t *hipFunction_t;
typedef struct ihipModule_t *hipModule_t;
typedef enum { hipMemcpyHostToHost = 0, hipMemcpyHostToDevice = 1, hipMemcpyDeviceToHost = 2,
               hipMemcpyDeviceToDevice = 3, hipMemcpyDefault = 4 } hipMemcpyKind;

struct ihipModuleSymbol_t { char name[128]; };

struct hip_stats { uint64_t launches, module_launches, graph_launches, copies, bytes[5], stream_syncs, event_syncs,
                   event_records; };
static struct hip_stats st;

API hipError_t hipLaunchKernel(const void *function_address, dim3 numBlocks, dim3 dimBlocks, void **args,
                               size_t sharedMemBytes, hipStream_t stream) {
    (void)function_address; (void)numBlocks; (void)dimBlocks; (void)args; (void)sharedMemBytes; (void)stream;
    COUNT(st.launches);
    return 0;
}

API hipError_t hipModuleGetFunction(hipFunction_t *function, hipModule_t module, const char *kname) {
    (void)module;
    struct ihipModuleSymbol_t *f = calloc(1, sizeof(*f));
    if (!f) return 2;
    strncpy(f->name, kname, sizeof(f->name) - 1);
    *function = f;
    return 0;
}

API hipError_t hipModuleLaunchKernel(hipFunction_t f, unsigned int gridDimX, unsigned int gridDimY,
                                     unsigned int gridDimZ, unsigned int blockDimX, unsigned int blockDimY,
                                     unsigned int blockDimZ, unsigned int sharedMemBytes, hipStream_t stream,
                                     void **kernelParams, void **extra) {
    (void)f; (void)gridDimX; (void)gridDimY; (void)gridDimZ; (void)blockDimX; (void)blockDimY; (void)blockDimZ;
    (void)sharedMemBytes; (void)stream; (void)kernelParams; (void)extra;
    COUNT(st.module_launches);
    return 0;
}

API hipError_t hipGraphLaunch(hipGraphExec_t graphExec, hipStream_t stream) {
    (void)graphExec; (void)stream;
    COUNT(st.graph_launches);
    return 0;
}

API hipError_t hipMemcpyAsync(void *dst, const void *src, size_t sizeBytes, hipMemcpyKind kind, hipStream_t stream) {
    (void)dst; (void)src; (void)stream;
    COUNT(st.copies);
    if ((unsigned)kind < 5) standin_add(&st.bytes[kind], sizeBytes);
    return 0;
}

API hipError_t hipStreamSynchronize(hipStream_t stream) {
    (void)stream;
    COUNT(st.stream_syncs);
    standin_gpu_tail();
    return 0;
}

API hipError_t hipEventSynchronize(hipEvent_t event) {
    (void)event;
    COUNT(st.event_syncs);
    standin_gpu_tail();
    return 0;
}

API hipError_t hipEventRecord(hipEvent_t event, hipStream_t stream) {
    (void)event; (void)stream;
    COUNT(st.event_records);
    return 0;
}

API void standin_hip_stats(struct hip_stats *out) { *out = st; }
