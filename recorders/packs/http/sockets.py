"""The target's sockets from /proc: listening TCP ports and open connections.

/proc/PID/fd links name each socket's inode (`socket:[12345]`); /proc/net/tcp
and tcp6 list every TCP socket with its inode, local address and state
(0A = LISTEN, 01 = ESTABLISHED, 08 = CLOSE_WAIT); /proc/net/unix marks
listening UNIX sockets with the __SO_ACCEPTCON flag (0x10000).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

TCP_ESTABLISHED = 0x01
TCP_CLOSE_WAIT = 0x08
TCP_LISTEN = 0x0A
SO_ACCEPTCON = 0x10000


@dataclass(frozen=True)
class SocketInfo:
    fd: int
    inode: int
    local_port: int
    remote_port: int
    state: int


def socket_fds(pid: int) -> dict[int, int]:
    """Socket inode -> fd number, for the sockets PID has open."""
    out: dict[int, int] = {}
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.setdefault(int(link[8:-1]), int(name))
    return out


def _tcp_table(pid: int) -> list[tuple[int, int, int, int]]:
    """(inode, local port, remote port, state) for every TCP socket in PID's network namespace."""
    rows = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            try:
                lport = int(parts[1].rsplit(":", 1)[1], 16)
                rport = int(parts[2].rsplit(":", 1)[1], 16)
                rows.append((int(parts[9]), lport, rport, int(parts[3], 16)))
            except (ValueError, IndexError):
                continue
    return rows


def tcp_sockets(pid: int) -> list[SocketInfo]:
    """The TCP sockets PID holds open, with their fd numbers."""
    fds = socket_fds(pid)
    out = []
    for inode, lport, rport, state in _tcp_table(pid):
        fd = fds.get(inode)
        if fd is not None:
            out.append(SocketInfo(fd, inode, lport, rport, state))
    return sorted(out, key=lambda s: s.fd)


def listening_sockets(pid: int) -> list[SocketInfo]:
    return [s for s in tcp_sockets(pid) if s.state == TCP_LISTEN]


def served_connections(pid: int, ports: set[int]) -> list[SocketInfo]:
    """Open connections PID accepted on one of `ports` (client side of a local port excluded)."""
    return [s for s in tcp_sockets(pid)
            if s.state in (TCP_ESTABLISHED, TCP_CLOSE_WAIT) and s.local_port in ports]


def has_listening_unix_socket(pid: int) -> bool:
    fds = socket_fds(pid)
    try:
        with open(f"/proc/{pid}/net/unix") as f:
            lines = f.readlines()[1:]
    except OSError:
        return False
    for line in lines:
        parts = line.split()
        try:
            if int(parts[6]) in fds and int(parts[3], 16) & SO_ACCEPTCON:
                return True
        except (ValueError, IndexError):
            continue
    return False
