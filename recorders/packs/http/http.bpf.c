// HTTP pack: the target's socket syscalls on connections accepted from its
// listening socket(s). One record per accept, per read/write that moved bytes,
// per close/shutdown of a tracked connection. Sizes and times only: no payload
// byte leaves the kernel, except (opt-in, HTTP_CAPTURE_PATHS) the request
// target of a request's first read, cut at the first space, '?' or '#'.
//
// Syscall tracepoint records are read through the layout their format files
// give (common header, then __syscall_nr, then one 8-byte slot per argument
// from offset 16 on; sys_exit: ret at 16); pack.py checks those offsets on the
// running kernel before loading this program.

#define HTTP_PATH_LEN 64
#ifndef HTTP_DEFAULT_PORT
#define HTTP_DEFAULT_PORT 0   // port of a connection whose accept began before the recording
#endif

enum http_kind {
    HTTP_ACCEPT = 1,        // fd = new connection, aux = listening port
    HTTP_READ = 2,          // bytes > 0 read from a connection
    HTTP_WRITE = 3,         // bytes > 0 written to a connection
    HTTP_CLOSE = 4,         // close() of a tracked connection
    HTTP_SHUTDOWN = 5,      // shutdown() of a tracked connection (aux = how)
    HTTP_EOF = 6,           // read returned 0: the peer closed its side
};

enum http_sys {             // which syscall a thread is in (per-thread scratch)
    HTTP_SYS_ACCEPT = 1, HTTP_SYS_READ = 2, HTTP_SYS_WRITE = 3,
};

struct http_sys_enter {     // tracepoint syscalls:sys_enter_*
    u64 common;
    s32 nr;
    s32 pad;
    u64 args[6];
};

struct http_sys_exit {      // tracepoint syscalls:sys_exit_*
    u64 common;
    s32 nr;
    s32 pad;
    s64 ret;
};

struct http_event {
    u64 ts;                 // syscall exit (accept, read, write) or entry (close, shutdown)
    u64 ts_enter;           // syscall entry
    s64 bytes;              // bytes moved (read, write)
    u32 tid;
    u32 fd;
    u32 kind;
    u32 aux;                // ACCEPT: listening port; SHUTDOWN: how; READ: 1 = first read of a request
    char path[HTTP_PATH_LEN];  // only with HTTP_CAPTURE_PATHS, only on a request's first read
};

struct http_conn {
    u32 port;               // listening port it was accepted on
    u32 state;              // 0: idle (no request yet / response sent), 1: reading a request, 2: responding
};

struct http_call {          // a syscall in progress on a tracked fd
    u64 ts;
    u64 buf;                // read/recvfrom buffer (path capture)
    u32 fd;
    u32 sys;
};

BPF_RINGBUF_OUTPUT(http_events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(http_lost, u64, 1);
BPF_HASH(http_listen, u32, u32, 64);                 // listening fd -> port (filled by pack.py)
// LRU: a close we never see (close_range, exit) cannot fill the tables for good.
BPF_TABLE("lru_hash", u64, struct http_conn, http_conns, 65536);  // (tgid << 32 | fd) -> connection
BPF_TABLE("lru_hash", u32, struct http_call, http_calls, 4096);   // tid -> syscall in progress

static __always_inline void http_count_lost(void) {
    int zero = 0;
    u64 *lost = http_lost.lookup(&zero);
    if (lost) (*lost)++;
}

struct http_wake { u64 pending; };   // records since the last forced wakeup (approximate across CPUs)
BPF_ARRAY(http_wake_state, struct http_wake, 1);
// No wakeup per record: each would make the recorder preempt a server thread (one
// per streamed chunk). The engine drains the buffer every poll interval; a wakeup is
// forced only when about a quarter of the buffer is waiting, so nothing is lost.
#define HTTP_WAKEUP_RECORDS ((u64)RINGBUF_PAGES * 4096 / 4 / (sizeof(struct http_event) + 8))
static __always_inline u64 http_submit_flags(void) {
    int z = 0;
    struct http_wake *w = http_wake_state.lookup(&z);
    if (!w) return 0;
    w->pending += 1;
    if (w->pending >= HTTP_WAKEUP_RECORDS) {
        w->pending = 0;
        return BPF_RB_FORCE_WAKEUP;
    }
    return BPF_RB_NO_WAKEUP;
}

static __always_inline struct http_event *http_reserve(void) {
    struct http_event *ev = http_events.ringbuf_reserve(sizeof(struct http_event));
    if (!ev) {
        http_count_lost();
        return 0;
    }
    __builtin_memset(ev, 0, sizeof(*ev));
    return ev;
}

static __always_inline int http_enter(u32 fd, u64 buf, u32 sys) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    if (sys == HTTP_SYS_ACCEPT) {
        if (!http_listen.lookup(&fd)) return 0;
    } else {
        u64 key = (id & 0xffffffff00000000ULL) | fd;
        if (!http_conns.lookup(&key)) return 0;
    }
    u32 tid = (u32)id;
    struct http_call call = {};
    call.ts = bpf_ktime_get_ns();
    call.buf = buf;
    call.fd = fd;
    call.sys = sys;
    http_calls.update(&tid, &call);
    return 0;
}

#ifdef HTTP_CAPTURE_PATHS
// Keep only the request target of "METHOD /path?query HTTP/1.1": zero the
// method, the query, the version and everything after them (userspace strips
// the leading zeros). Anything that is not a request line (a method of
// capital letters, one space, a target starting with '/') is zeroed entirely.
static __always_inline void http_keep_path(char *p, s64 n) {
    int field = 0;      // 0: method, 1: target, 2: after the target
    int ok = 1;
    int tstart = -1;
    #pragma unroll
    for (int i = 0; i < HTTP_PATH_LEN; i++) {
        char c = p[i];
        if (i >= n) {
            if (field == 0) ok = 0;
            field = 2;
        }
        if (field == 0) {
            if (c == ' ' && i > 0) {
                field = 1;
                tstart = i + 1;
            } else if (c < 'A' || c > 'Z') {
                ok = 0;
                field = 2;
            }
            p[i] = 0;
        } else if (field == 1) {
            if (i == tstart && c != '/') {
                ok = 0;
                field = 2;
                p[i] = 0;
            } else if (c == ' ' || c == '?' || c == '#' || c == '\r' || c == '\n' || c == 0) {
                field = 2;
                p[i] = 0;
            }
        } else {
            p[i] = 0;
        }
    }
    if (field == 0) ok = 0;
    if (!ok) __builtin_memset(p, 0, HTTP_PATH_LEN);
}
#endif

static __always_inline int http_accepted(u64 id, u64 ts_enter, u32 listen_fd, s64 ret) {
    if (ret < 0) return 0;
    u32 *port = http_listen.lookup(&listen_fd);
    struct http_conn conn = {};
    conn.port = port ? *port : HTTP_DEFAULT_PORT;
    u64 key = (id & 0xffffffff00000000ULL) | (u32)ret;
    http_conns.update(&key, &conn);
    struct http_event *ev = http_reserve();
    if (!ev) return 0;
    ev->ts = bpf_ktime_get_ns();
    ev->ts_enter = ts_enter ? ts_enter : ev->ts;
    ev->tid = (u32)id;
    ev->fd = (u32)ret;
    ev->kind = HTTP_ACCEPT;
    ev->aux = conn.port;
    http_events.ringbuf_submit(ev, http_submit_flags());
    return 0;
}

// accept/accept4 returned. Without a recorded entry the call began before the
// recording did (the acceptor thread blocks in accept): the new socket still
// came from one of the target's listening sockets only if it accepts on
// nothing else, which pack.py tells us (HTTP_ACCEPT_ANY_UNSEEN).
static __always_inline int http_exit_accepting(s64 ret) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct http_call *call = http_calls.lookup(&tid);
    if (!call) {
#ifdef HTTP_ACCEPT_ANY_UNSEEN
        return http_accepted(id, 0, 0xffffffff, ret);
#else
        return 0;
#endif
    }
    struct http_call c = *call;
    http_calls.delete(&tid);
    if (c.sys != HTTP_SYS_ACCEPT) return 0;
    return http_accepted(id, c.ts, c.fd, ret);
}

static __always_inline int http_exit_io(s64 ret) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u32 tid = (u32)id;
    struct http_call *call = http_calls.lookup(&tid);
    if (!call) return 0;
    struct http_call c = *call;
    http_calls.delete(&tid);
    if (ret < 0 || c.sys == HTTP_SYS_ACCEPT) return 0;  // EAGAIN, EINTR, errors: nothing moved
    if (c.sys == HTTP_SYS_WRITE && ret == 0) return 0;
    u64 key = (id & 0xffffffff00000000ULL) | c.fd;
    struct http_conn *conn = http_conns.lookup(&key);
    if (!conn) return 0;
    u32 first = 0;
    if (c.sys == HTTP_SYS_READ) {
        if (ret > 0 && conn->state != 1) {
            first = 1;
            conn->state = 1;
        }
    } else {
        conn->state = 2;
    }
    struct http_event *ev = http_reserve();
    if (!ev) return 0;
    ev->ts = bpf_ktime_get_ns();
    ev->ts_enter = c.ts;
    ev->bytes = ret;
    ev->tid = tid;
    ev->fd = c.fd;
    ev->kind = c.sys == HTTP_SYS_READ ? (ret > 0 ? HTTP_READ : HTTP_EOF) : HTTP_WRITE;
    ev->aux = first;
#ifdef HTTP_CAPTURE_PATHS
    if (first && c.buf) {
        if (bpf_probe_read_user(ev->path, HTTP_PATH_LEN, (void *)c.buf) == 0)
            http_keep_path(ev->path, ret);
        else
            __builtin_memset(ev->path, 0, HTTP_PATH_LEN);
    }
#endif
    http_events.ringbuf_submit(ev, http_submit_flags());
    return 0;
}

static __always_inline int http_fd_gone(u32 fd, u32 kind, u32 how) {
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID) return 0;
    u64 key = (id & 0xffffffff00000000ULL) | fd;
    struct http_conn *conn = http_conns.lookup(&key);
    if (!conn) return 0;
    if (kind == HTTP_CLOSE) http_conns.delete(&key);
    else conn->state = 0;
    struct http_event *ev = http_reserve();
    if (!ev) return 0;
    ev->ts = bpf_ktime_get_ns();
    ev->ts_enter = ev->ts;
    ev->tid = (u32)id;
    ev->fd = fd;
    ev->kind = kind;
    ev->aux = how;
    http_events.ringbuf_submit(ev, http_submit_flags());
    return 0;
}

// MSG_PEEK reads leave the bytes in the socket: not a read of the request.
#define HTTP_MSG_PEEK 2

int http_enter_accept(struct http_sys_enter *a) { return http_enter((u32)a->args[0], 0, HTTP_SYS_ACCEPT); }
int http_enter_read(struct http_sys_enter *a) { return http_enter((u32)a->args[0], a->args[1], HTTP_SYS_READ); }
int http_enter_readv(struct http_sys_enter *a) { return http_enter((u32)a->args[0], 0, HTTP_SYS_READ); }
int http_enter_recvfrom(struct http_sys_enter *a) {
    if (a->args[3] & HTTP_MSG_PEEK) return 0;
    return http_enter((u32)a->args[0], a->args[1], HTTP_SYS_READ);
}
int http_enter_recvmsg(struct http_sys_enter *a) {
    if (a->args[2] & HTTP_MSG_PEEK) return 0;
    return http_enter((u32)a->args[0], 0, HTTP_SYS_READ);
}
int http_enter_write(struct http_sys_enter *a) { return http_enter((u32)a->args[0], 0, HTTP_SYS_WRITE); }
int http_exit_accept(struct http_sys_exit *a) { return http_exit_accepting(a->ret); }
int http_exit_call(struct http_sys_exit *a) { return http_exit_io(a->ret); }
int http_enter_close(struct http_sys_enter *a) { return http_fd_gone((u32)a->args[0], HTTP_CLOSE, 0); }
int http_enter_shutdown(struct http_sys_enter *a) {
    return http_fd_gone((u32)a->args[0], HTTP_SHUTDOWN, (u32)a->args[1]);
}
