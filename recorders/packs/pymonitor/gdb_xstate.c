/* LD_PRELOAD shim for gdb < 14 on CPUs with AMX (Sapphire Rapids and later).
 *
 * gdb 13 reads and writes the x86 extended register state (PTRACE_GETREGSET /
 * PTRACE_SETREGSET, NT_X86_XSTATE) with a fixed 2696-byte buffer. Linux refuses
 * a write that is not exactly its whole XSAVE size (11008 bytes with AMX tile
 * data) with EFAULT, so gdb cannot call a function in the target
 * ("Couldn't write extended state status: Bad address") and leaves the
 * interrupted system call's registers behind.
 *
 * This shim completes such a short write: it reads the whole state, lays gdb's
 * bytes over its start (the standard XSAVE layout puts every component gdb
 * knows before the AMX ones) and writes the whole buffer. Every other ptrace
 * call passes through unchanged.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <elf.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

typedef long (*ptrace_fn)(int, pid_t, void *, void *);

long ptrace(enum __ptrace_request request, ...)
{
    static ptrace_fn real;
    static unsigned char whole[64 * 1024];
    va_list ap;
    va_start(ap, request);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);
    if (!real)
        real = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");
    if (request == PTRACE_SETREGSET && (unsigned long)addr == NT_X86_XSTATE && data) {
        struct iovec *iov = data;
        struct iovec all = {whole, sizeof whole};
        if (real(PTRACE_GETREGSET, pid, addr, &all) == -1)
            return -1;
        if (iov->iov_len < all.iov_len) {
            memcpy(whole, iov->iov_base, iov->iov_len);
            return real(PTRACE_SETREGSET, pid, addr, &all);
        }
    }
    return real(request, pid, addr, data);
}
