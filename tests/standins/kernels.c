/* Stand-in libstandin_kernels.so: host-side kernel stubs living in a shared
 * library, as PyTorch's and vLLM's kernels live in libtorch_cuda.so / _C.so.
 * cudaLaunchKernel's first argument is the address of such a stub; the
 * recorder names the kernel from that address via the target's maps and the
 * library's symbols. One stub has a C++ mangled name, as real ones do. */
#define STUB(name) __attribute__((visibility("default"), noinline, used)) void name(void) { __asm__ volatile("" ::: "memory"); }

STUB(paged_attention_v2_kernel)
STUB(silu_and_mul_kernel)
STUB(topk_topp_sampler_kernel)
__attribute__((visibility("default"), noinline, used)) void rms_norm_stub(void) __asm__("_ZN4vllm15rms_norm_kernelEv");
void rms_norm_stub(void) { __asm__ volatile("nop" ::: "memory"); }

/* The driver asks for the stubs' addresses through this table. */
__attribute__((visibility("default"))) void *standin_kernel_stubs[] = {
    (void *)paged_attention_v2_kernel, (void *)silu_and_mul_kernel, (void *)topk_topp_sampler_kernel,
    (void *)rms_norm_stub,
};
