/* Stand-in libcuda.so.1: the CUDA driver API entry points that JIT-compiled
 * kernels (Triton) and graph replays use, with the real C signatures. */
#include <string.h>
#include "standin.h"

typedef int CUresult;
typedef struct CUfunc_st *CUfunction;
typedef struct CUmod_st *CUmodule;
typedef struct CUstream_st *CUstream;
typedef struct CUgraphExec_st *CUgraphExec;
typedef struct CUlaunchAttribute_st CUlaunchAttribute;
typedef struct CUlaunchConfig_st {
    unsigned int gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
    CUstream hStream;
    CUlaunchAttribute *attrs;
    unsigned int numAttrs;
} CUlaunchConfig;

struct CUfunc_st { char name[128]; };

struct cuda_stats { uint64_t launches, launches_ex, graph_launches, stream_syncs, get_function; };
static struct cuda_stats st;

API CUresult cuInit(unsigned int flags) { (void)flags; return 0; }

API CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) {
    (void)hmod;
    struct CUfunc_st *f = calloc(1, sizeof(*f));
    if (!f) return 2;  /* CUDA_ERROR_OUT_OF_MEMORY */
    strncpy(f->name, name, sizeof(f->name) - 1);
    *hfunc = f;
    COUNT(st.get_function);
    return 0;
}

API CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                            unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                            unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra) {
    (void)f; (void)gridDimX; (void)gridDimY; (void)gridDimZ; (void)blockDimX; (void)blockDimY;
    (void)blockDimZ; (void)sharedMemBytes; (void)hStream; (void)kernelParams; (void)extra;
    COUNT(st.launches);
    return 0;
}

API CUresult cuLaunchKernelEx(const CUlaunchConfig *config, CUfunction f, void **kernelParams, void **extra) {
    (void)config; (void)f; (void)kernelParams; (void)extra;
    COUNT(st.launches_ex);
    return 0;
}

API CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream) {
    (void)hGraphExec; (void)hStream;
    COUNT(st.graph_launches);
    return 0;
}

API CUresult cuStreamSynchronize(CUstream hStream) {
    (void)hStream;
    COUNT(st.stream_syncs);
    standin_gpu_tail();
    return 0;
}

API void standin_cuda_stats(struct cuda_stats *out) { *out = st; }
