/* Stand-in libnccl.so.2 (and librccl.so.1: RCCL exports the same API), with the
 * real C signatures. ncclUniqueId is a 128-byte struct passed BY VALUE: on
 * x86-64 it goes on the stack, so `rank` (after it) arrives in the third
 * integer register. Seven-argument collectives pass the stream on the stack. */
#include <string.h>
#include "standin.h"

typedef int ncclResult_t;
typedef struct { char internal[128]; } ncclUniqueId;
typedef struct ncclComm *ncclComm_t;
typedef int ncclDataType_t;
typedef int ncclRedOp_t;
typedef struct CUstream_st *cudaStream_t;

struct ncclComm { int rank, nranks; char id[16]; };

struct nccl_stats { uint64_t init, allreduce, allgather, reducescatter, broadcast, send, recv, group; };
static struct nccl_stats st;

API ncclResult_t ncclGetUniqueId(ncclUniqueId *uniqueId) {
    memset(uniqueId, 0, sizeof(*uniqueId));
    memcpy(uniqueId->internal, "standin-nccl-id", 15);
    return 0;
}

API ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId commId, int rank) {
    if (rank < 0 || rank >= nranks) return 4;  /* ncclInvalidArgument */
    struct ncclComm *c = calloc(1, sizeof(*c));
    if (!c) return 1;
    c->rank = rank;
    c->nranks = nranks;
    memcpy(c->id, commId.internal, sizeof(c->id));
    *comm = c;
    COUNT(st.init);
    return 0;
}

API ncclResult_t ncclCommDestroy(ncclComm_t comm) { free(comm); return 0; }

API ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    (void)sendbuff; (void)recvbuff; (void)count; (void)datatype; (void)op; (void)comm; (void)stream;
    COUNT(st.allreduce);
    return 0;
}

API ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount, ncclDataType_t datatype,
                               ncclComm_t comm, cudaStream_t stream) {
    (void)sendbuff; (void)recvbuff; (void)sendcount; (void)datatype; (void)comm; (void)stream;
    COUNT(st.allgather);
    return 0;
}

API ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount, ncclDataType_t datatype,
                                   ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    (void)sendbuff; (void)recvbuff; (void)recvcount; (void)datatype; (void)op; (void)comm; (void)stream;
    COUNT(st.reducescatter);
    return 0;
}

API ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count, ncclDataType_t datatype,
                               int root, ncclComm_t comm, cudaStream_t stream) {
    (void)sendbuff; (void)recvbuff; (void)count; (void)datatype; (void)root; (void)comm; (void)stream;
    COUNT(st.broadcast);
    return 0;
}

API ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
                          ncclComm_t comm, cudaStream_t stream) {
    (void)sendbuff; (void)count; (void)datatype; (void)peer; (void)comm; (void)stream;
    COUNT(st.send);
    return 0;
}

API ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
                          ncclComm_t comm, cudaStream_t stream) {
    (void)recvbuff; (void)count; (void)datatype; (void)peer; (void)comm; (void)stream;
    COUNT(st.recv);
    return 0;
}

API ncclResult_t ncclGroupStart(void) { COUNT(st.group); return 0; }
API ncclResult_t ncclGroupEnd(void) { return 0; }

API void standin_nccl_stats(struct nccl_stats *out) { *out = st; }
