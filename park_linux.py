"""park backend for Linux: find TCP listeners, and close / recreate them inside a stopped process.

Discovery reads /proc/net/tcp{,6}, /proc/PID/fd and fdinfo, and NETLINK_SOCK_DIAG (backlog, accept queue).
Socket options are read from a pidfd_getfd(2) duplicate that is closed again before anything changes.
Every thread of every holder is stopped with PTRACE_SEIZE + PTRACE_INTERRUPT before a listener is touched;
system calls are then run by one thread in place of a system call of its own (PTRACE_SYSCALL to its next
syscall-entry stop), with a SIGSTOP queued for it whenever its registers are not its own: a tracer killed at
any moment leaves every thread running with its own registers, or the process stopped, never running
injected code; a journal (written before the first change) lets the next resume undo what was left.
No code is written into the target and no signal mask changed; the only memory written is a small scratch
area below a stack pointer (on resume), put back after each batch. A parked process is held in ptrace
stops by park's keeper, never by SIGSTOP: its shell sees no stopped job.
What differs between architectures (registers, system call numbers and instruction, restart rules) is in
park_linux_x86_64.py and park_linux_aarch64.py; this engine imports the one for this machine, as `arch`.
This module imports only the standard library and never imports park.
"""

import ctypes
import errno
import json
import os
import select
import signal
import socket
import struct
import time

if os.uname().machine == "aarch64":
    import park_linux_aarch64 as arch
else:
    import park_linux_x86_64 as arch

# ---------------------------------------------------------------------------------------------------------
# Constants (names as in the kernel headers they come from)

# include/uapi/linux/ptrace.h
PTRACE_PEEKTEXT = 1
PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_EVENT_STOP = 128
PTRACE_O_TRACESYSGOOD = 1
PTRACE_O_SUSPEND_SECCOMP = 1 << 21
SYSCALL_STOP = signal.SIGTRAP | 0x80  # WSTOPSIG of a syscall stop under PTRACE_O_TRACESYSGOOD (ptrace(2))
WALL = 0x40000000  # __WALL, include/uapi/linux/wait.h (renamed: a class body would mangle __WALL)

_NAMES = {getattr(arch, "NR_" + n): n for n in ("close", "dup3", "socket", "bind", "listen", "setsockopt", "fcntl",
                                                "epoll_ctl", "connect", "recvmsg")}
SYSCALL_DEADLINE = 3.0  # seconds an injected call may take; none of park's calls ever blocks when all is well
SEEK_SECONDS = 0.2  # how long the chosen thread may run user code before it makes a system call of its own

O_NONBLOCK = 0o4000  # include/uapi/asm-generic/fcntl.h
O_CLOEXEC = 0o2000000
F_SETFD = 2
FD_CLOEXEC = 1
EPOLL_CTL_ADD = 1  # include/uapi/linux/eventpoll.h
EPOLLIN = 0x001
EPOLLOUT = 0x004
EPOLLEXCLUSIVE = 1 << 28
EPOLLET = 1 << 31
KCMP_FILE = 0  # include/uapi/linux/kcmp.h
SOCK_STREAM = 1
AF_UNIX = 1
SO_PEERCRED = 17
SCM_RIGHTS = 1  # include/linux/socket.h
MSG_CMSG_CLOEXEC = 0x40000000
IPPROTO_TCP = 6
SOL_SOCKET = 1
SO_REUSEADDR = 2
SO_ATTACH_FILTER = 26  # include/uapi/asm-generic/socket.h
SO_DETACH_FILTER = 27
SO_GET_FILTER = SO_ATTACH_FILTER

# include/uapi/linux/sock_diag.h, inet_diag.h, netlink.h
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
SOCK_DESTROY = 21
NLM_F_ACK = 4
TCP_SYN_RECV = 3  # include/net/tcp_states.h
TCP_TIME_WAIT = 6
NLM_F_REQUEST = 1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10  # include/net/tcp_states.h
INET_DIAG_CGROUP_ID = 21  # include/uapi/linux/inet_diag.h
TCP_BOUND_INACTIVE = 13  # bound, not listening: a sock_diag pseudo-state (Linux >= 6.9)

# Socket options a server may set on its listener, as (level, name, number, kind). kind: "int", "buf"
# (the kernel doubles what was set, socket(7)), "linger" (struct linger), "str" (a NUL-terminated name).
OPTIONS = (
    (1, "SO_REUSEADDR", 2, "int"),
    (1, "SO_REUSEPORT", 15, "int"),
    (1, "SO_KEEPALIVE", 9, "int"),
    (1, "SO_SNDBUF", 7, "buf"),
    (1, "SO_RCVBUF", 8, "buf"),
    (1, "SO_LINGER", 13, "linger"),
    (1, "SO_BINDTODEVICE", 25, "str"),
    (1, "SO_PRIORITY", 12, "int"),
    (1, "SO_MARK", 36, "int"),
    (1, "SO_RCVLOWAT", 18, "int"),
    (1, "SO_OOBINLINE", 10, "int"),
    (1, "SO_DONTROUTE", 5, "int"),
    (6, "TCP_NODELAY", 1, "int"),
    (6, "TCP_MAXSEG", 2, "int"),
    (6, "TCP_CORK", 3, "int"),
    (6, "TCP_KEEPIDLE", 4, "int"),
    (6, "TCP_KEEPINTVL", 5, "int"),
    (6, "TCP_KEEPCNT", 6, "int"),
    (6, "TCP_SYNCNT", 7, "int"),
    (6, "TCP_LINGER2", 8, "int"),
    (6, "TCP_DEFER_ACCEPT", 9, "int"),
    (6, "TCP_WINDOW_CLAMP", 10, "int"),
    (6, "TCP_CONGESTION", 13, "str"),
    (6, "TCP_USER_TIMEOUT", 18, "int"),
    (6, "TCP_FASTOPEN", 23, "int"),
    (6, "TCP_NOTSENT_LOWAT", 25, "int"),
    (0, "IP_TOS", 1, "int"),
    (0, "IP_TTL", 2, "int"),
    (0, "IP_FREEBIND", 15, "int"),
    (0, "IP_TRANSPARENT", 19, "int"),
    (41, "IPV6_UNICAST_HOPS", 16, "int"),
    (41, "IPV6_V6ONLY", 26, "int"),
    (41, "IPV6_TCLASS", 67, "int"),
    (41, "IPV6_TRANSPARENT", 75, "int"),
    (41, "IPV6_FREEBIND", 78, "int"),
)
_ALWAYS_KEPT = ("SO_REUSEADDR", "IPV6_V6ONLY")
_IP_ONLY = {0: socket.AF_INET, 41: socket.AF_INET6}


class Error(Exception):
    """A failure to report to the user: one line, plus the exact fix when there is one."""

    def __init__(self, message, fix=None, errno=None, parked=False, attach=False, missed=()):
        super().__init__(message)
        self.missed = list(missed)  # park: holders discovery did not find (found since): ask again everywhere
        self.fix = fix
        self.errno = errno
        self.parked = parked  # the target was left parked (or without its listener), with its state
        self.attach = attach  # the kernel refused to let park trace the target (PTRACE_SEIZE, pidfd_getfd)
        self.tracer = None  # park(): the Tracer that still holds a target left parked
        self.time_wait = None  # resume: why the TIME_WAIT entries blocking the bind stayed (an errno)


# ---------------------------------------------------------------------------------------------------------
# ctypes: one table of prototypes, applied once

class iovec(ctypes.Structure):
    """include/uapi/linux/uio.h"""
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
for _name, _res, _args in (
    ("ptrace", ctypes.c_long, (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)),
    ("process_vm_readv", ctypes.c_ssize_t,
     (ctypes.c_int, ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.c_ulong)),
    ("process_vm_writev", ctypes.c_ssize_t,
     (ctypes.c_int, ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.POINTER(iovec), ctypes.c_ulong, ctypes.c_ulong)),
    ("syscall", ctypes.c_long, (ctypes.c_long, ctypes.c_long, ctypes.c_long, ctypes.c_long)),
    ("getsockopt", ctypes.c_int,
     (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32))),
):
    _fn = getattr(_libc, _name)
    _fn.restype, _fn.argtypes = _res, _args


def _check(result, what):
    """Raise OSError with the numeric errno when a libc call returned -1."""
    if result == -1:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))
    return result


def _ptrace(request, tid, addr=0, data=0):
    return _check(_libc.ptrace(request, tid, addr, data), "ptrace")


# ---------------------------------------------------------------------------------------------------------
# Discovery

def _hex_addr(text, family):
    """Address in /proc/net/tcp{,6} (host-order 32-bit words in hex) to its printable form."""
    raw = bytes.fromhex(text)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, raw)


def parse_net_tcp(text, family, port=None, states=("0A",)):
    """Parse /proc/net/tcp{,6} text into (inode, host, port, state) rows, filtered by port and state."""
    rows = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10 or f[3] not in states:
            continue
        host, _, hport = f[1].partition(":")
        lport = int(hport, 16)
        if port is not None and lport != port:
            continue
        rows.append((int(f[9]), _hex_addr(host, family), lport, f[3]))
    return rows


def _read(path):
    with open(path) as f:
        return f.read()


def _tcp_rows(port, state=TCP_LISTEN):
    """(family, inode, host, port, cgroup) of every TCP listener (on port, unless None); with state=TCP_BOUND_INACTIVE,
    of every socket bound without listening (found only by sock_diag, on Linux >= 6.9).

    NETLINK_SOCK_DIAG is used first: reading /proc/net/tcp walks every connection and took ~5 ms here."""
    rows = []
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
            for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
                size = 4 if family == socket.AF_INET else 16
                for sockid, _, _, ino, cgroup in _diag_dump(nl, family, 1 << state, seq):
                    sport = struct.unpack_from("!H", sockid, 0)[0]
                    if port is None or sport == port:
                        rows.append((family, ino, socket.inet_ntop(family, sockid[4:4 + size]), sport, cgroup))
        return rows
    except OSError:
        if state != TCP_LISTEN:
            return rows  # /proc/net/tcp does not list sockets that are only bound
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            text = _read("/proc/net/" + name)
        except OSError:
            continue
        rows += [(family,) + r[:3] + (0,) for r in parse_net_tcp(text, family, port)]
    return rows


def _proc_fds(pid):
    """{fd: link} for every fd of pid, or {} when it cannot be read."""
    base = "/proc/%d/fd/" % pid
    out = {}
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for n in names:
        try:
            out[int(n)] = os.readlink(base + n)
        except OSError:
            pass
    return out


def pids():
    """Every process id on the machine."""
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def fds(pid):
    """{fd: what it is} for pid, as /proc/PID/fd shows it ("socket:[N]", "anon_inode:[eventpoll]", a path)."""
    return _proc_fds(pid)


def fd_path(pid, fd):
    """A path that opens what pid has at fd (for its owner, or root)."""
    return "/proc/%d/fd/%d" % (pid, fd)


def listeners(port, everywhere=False):
    """Every TCP listener on port: [{inode, family, host, port, listening, holders: {pid: [fd, ...]}}].

    With them come the sockets that their holders keep bound to the port without listening (listening is
    False): granian's master keeps one, and while it is open a plain bind of the port fails.

    Holders are looked for among the processes of the cgroup each socket was made in (sock_diag names it;
    systemd gives each app and terminal its own), and among all processes only when that cgroup cannot be
    read or a listener has no holder there, or with everywhere=True. A holder outside that cgroup (moved
    since, or handed the socket) is missed that way, which park notices: the listener then stays open after
    park closed it in every holder found, and park asks again with everywhere=True."""
    found, cgroups = {}, set()
    for family, inode, host, lport, cgroup in _tcp_rows(port):
        if inode:
            found[inode] = {"inode": inode, "family": family, "host": host, "port": lport, "listening": True,
                            "holders": {}}
            cgroups.add(cgroup)
    if not found:
        return []
    for family, inode, host, lport, cgroup in (_tcp_rows(port, TCP_BOUND_INACTIVE) if port else []):
        if inode and inode not in found:
            found[inode] = {"inode": inode, "family": family, "host": host, "port": lport, "listening": False,
                            "holders": {}}
            cgroups.add(cgroup)
    near = None if everywhere else _cgroup_procs(cgroups)
    _find_holders(found, near if near is not None else pids())
    if near is not None and any(l["listening"] and not l["holders"] for l in found.values()):
        _find_holders(found, sorted(set(pids()) - set(near)))
    serving = {pid for l in found.values() if l["listening"] for pid in l["holders"]}
    for inode, l in list(found.items()):
        if not l["listening"] and not serving & set(l["holders"]):
            del found[inode]  # another program's socket that merely shares the port (SO_REUSEPORT)
    for l in found.values():
        for fds in l["holders"].values():
            fds.sort()
    # Bound-only sockets first: resume binds them before the listeners, as they were made.
    return sorted(found.values(), key=lambda l: (l["listening"], l["family"], l["host"]))


def _find_holders(found, candidates):
    """Add to each socket of found (by inode) the fds of candidates (pids) that hold it."""
    wanted = {"socket:[%d]" % i: i for i in found}
    me = os.getpid()
    for pid in candidates:
        if pid == me:
            continue
        try:
            d = os.open("/proc/%d/fd" % pid, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue  # gone, a kernel thread's, or another user's
        try:
            for n in os.listdir(d):
                try:
                    inode = wanted.get(os.readlink(n, dir_fd=d))
                except OSError:
                    continue
                if inode is not None:
                    found[inode]["holders"].setdefault(pid, []).append(int(n))
        finally:
            os.close(d)


def _cgroup_procs(ids):
    """The pids in the cgroups v2 of these ids (a cgroup's id is its directory's inode number), or None when
    one cannot be told: no id (before Linux 5.8), no cgroup2 mount, or a cgroup not found."""
    if not ids or 0 in ids:
        return None
    root = None
    try:
        for line in _read("/proc/self/mountinfo").splitlines():
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                root = left.split()[4].replace("\\040", " ")
                break
    except OSError:
        return None
    if root is None:
        return None
    want, dirs, todo = set(ids), [], [root]
    try:
        if os.stat(root).st_ino in want:
            want.discard(os.stat(root).st_ino)
            dirs.append(root)
        while want and todo:
            with os.scandir(todo.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        if e.inode() in want:
                            want.discard(e.inode())
                            dirs.append(e.path)
                        todo.append(e.path)
        if want:
            return None
        return sorted({int(p) for d in dirs for p in _read(os.path.join(d, "cgroup.procs")).split()})
    except (OSError, ValueError):
        return None


def ports_listening():
    """{port: [pid, ...]} of every TCP listener, for `list` and suggestions (only pids we can see)."""
    by_inode = {}
    for family, inode, host, lport, _ in _tcp_rows(None):
        by_inode[inode] = lport
    out = {}
    wanted = {"socket:[%d]" % i: p for i, p in by_inode.items()}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        for link in _proc_fds(int(name)).values():
            p = wanted.get(link)
            if p is not None:
                out.setdefault(p, set()).add(int(name))
    return {p: sorted(v) for p, v in out.items()}


def process(pid):
    """What park needs to know about pid, or None if there is no such process."""
    try:
        stat = _read("/proc/%d/stat" % pid)
        status = _read("/proc/%d/status" % pid)
    except (OSError, ValueError):
        return None
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    f = stat[stat.rindex(")") + 2:].split()
    fields = dict(l.split(":", 1) for l in status.splitlines() if ":" in l)
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            argv = [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        argv = []
    return {
        "pid": pid,
        "name": comm,
        "argv": argv,
        "state": f[0],
        "ppid": int(f[1]),
        "kernel": bool(int(f[6]) & 0x00200000),  # PF_KTHREAD, include/linux/sched.h
        "start": int(f[19]),
        "uid": int(fields.get("Uid", "-1").split()[1] if "Uid" in fields else -1),
        "tracer": int(fields.get("TracerPid", "0").strip() or 0),
        "seccomp": int(fields.get("Seccomp", "0").strip() or 0),
        "threads": int(fields.get("Threads", "1").strip() or 1),
    }


def stopped(info):
    """True when the process is stopped (by a signal, or in a ptrace stop)."""
    return info["state"] in ("T", "t")


def held(info, keeper):
    """True when park's keeper (a pid, or None) holds this process: on Linux, it is its tracer."""
    return keeper is not None and info["tracer"] == keeper


def parse_fdinfo_epoll(text):
    """The registrations in an eventpoll fd's fdinfo: [(tfd, events, data, inode)] (inode -1 if not shown)."""
    out = []
    for line in text.splitlines():
        if not line.startswith("tfd:"):
            continue
        f = line.split()
        # "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x" (fs/eventpoll.c ep_show_fdinfo)
        ino = -1
        for tok in f:
            if tok.startswith("ino:"):
                ino = int(tok[4:], 16)
        out.append((int(f[1]), int(f[3], 16), int(f[5], 16), ino))
    return out


def parse_fdinfo_flags(text):
    for line in text.splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8)
    return 0


def _sock_diag(families):
    """{inode: (accept queue length, backlog)} of every TCP listener, from NETLINK_SOCK_DIAG."""
    out = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        for seq, family in enumerate(sorted(families), 1):
            for _, rq, wq, ino, _ in _diag_dump(nl, family, 1 << TCP_LISTEN, seq):
                out[ino] = (rq, wq)
    return out


def _diag_dump(nl, family, states, seq):
    """Yield (raw inet_diag_sockid, rqueue, wqueue, inode, cgroup) of every TCP socket of family in states;
    cgroup: the id of the cgroup v2 the socket was made in (INET_DIAG_CGROUP_ID, Linux >= 5.8), else 0."""
    req = struct.pack("=BBBBI48x", family, IPPROTO_TCP, 0, 0, states)
    nl.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + req)
    while True:
        data = nl.recv(65536)
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if kind == NLMSG_DONE or kind == NLMSG_ERROR or length < 16:
                return
            # struct inet_diag_msg: family, state, timer, retrans, inet_diag_sockid (48 bytes), expires,
            # rqueue, wqueue, uid, inode
            sockid = data[off + 20:off + 68]
            rq, wq, _, ino = struct.unpack_from("=IIII", data, off + 72)
            cgroup, at = 0, off + 88  # the attributes follow the 72-byte inet_diag_msg
            while at + 4 <= off + length:
                alen, atype = struct.unpack_from("=HH", data, at)
                if alen < 4:
                    break
                if atype == INET_DIAG_CGROUP_ID and alen >= 12:
                    cgroup = struct.unpack_from("=Q", data, at + 4)[0]
                at += (alen + 3) & ~3
            yield sockid, rq, wq, ino, cgroup
            off += (length + 3) & ~3


def time_wait(listener):
    """The TIME_WAIT connections that keep a listener's address from being bound again."""
    family, host, port = listener["family"], listener["address"][0], listener["address"][1]
    want = socket.inet_pton(family, host)
    wildcard = want == bytes(len(want))
    found = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        for sockid, _, _, _, _ in _diag_dump(nl, family, 1 << TCP_TIME_WAIT, 1):
            sport = struct.unpack_from("!H", sockid, 0)[0]
            src = sockid[4:4 + len(want)]
            if sport == port and (wildcard or src == want):
                found.append((family, sockid))
    return found


def clear_time_wait(entries):
    """Destroy TIME_WAIT entries with SOCK_DESTROY; returns how many went. Raises OSError: EPERM without
    CAP_NET_ADMIN, EOPNOTSUPP before Linux 6.0 (tcp_abort learnt TIME_WAIT there)."""
    gone = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        for seq, (family, sockid) in enumerate(entries, 1):
            req = struct.pack("=BBBBI", family, IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
            nl.send(struct.pack("=IHHII", 16 + len(req), SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + req)
            data = nl.recv(65536)
            if len(data) >= 20 and struct.unpack_from("=H", data, 4)[0] == NLMSG_ERROR:
                err = -struct.unpack_from("=i", data, 16)[0]
                if err in (errno.EPERM, errno.EACCES, errno.EOPNOTSUPP):
                    raise OSError(err, os.strerror(err))
                if err == 0:
                    gone += 1
    return gone


def _pidfd_getfd(pid, fd):
    """A duplicate of another process's fd (pidfd_getfd(2)); the caller must close it."""
    pidfd = _check(_libc.syscall(arch.NR_pidfd_open, pid, 0, 0), "pidfd_open")  # os.pidfd_open is not in every 3.9
    try:
        return _check(_libc.syscall(arch.NR_pidfd_getfd, pidfd, fd, 0), "pidfd_getfd")
    finally:
        os.close(pidfd)


def _read_option(sock, level, num, kind):
    if kind in ("int", "buf"):
        return sock.getsockopt(level, num)
    if kind == "linger":
        return sock.getsockopt(level, num, 8).hex()
    return sock.getsockopt(level, num, 16).split(b"\0", 1)[0].decode("latin-1")


def _options(sock, family):
    """The options worth restoring: those that differ from a fresh socket's, plus SO_REUSEADDR and V6ONLY."""
    fresh = socket.socket(family, socket.SOCK_STREAM)
    kept = []
    try:
        for level, name, num, kind in OPTIONS:
            if _IP_ONLY.get(level, family) != family:
                continue
            try:
                value = _read_option(sock, level, num, kind)
            except OSError:
                continue
            try:
                default = _read_option(fresh, level, num, kind)
            except OSError:
                default = None
            if value != default or name in _ALWAYS_KEPT:
                kept.append([level, name, num, kind, value])
    finally:
        fresh.close()
    return kept


def _filter_attached(fd):
    """True when a classic BPF socket filter is attached (SO_GET_FILTER with length 0 returns its size)."""
    n = ctypes.c_uint32(0)
    if _libc.getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, None, ctypes.byref(n)) != 0:
        return False
    return n.value > 0


def inspect(listener, force=False):
    """Fill in a listener from listeners() with everything resume needs; raise Error if it cannot be restored."""
    holders = listener["holders"]
    pid0 = min(holders)
    fd0 = holders[pid0][0]
    try:
        dup = _dup(pid0, fd0)
    except OSError as e:
        # pidfd_getfd asks the kernel the same question as PTRACE_SEIZE (may park attach to it?), so Yama's
        # EPERM comes here first and gets the same message.
        raise Error("cannot read the listener of pid %d (%s)" % (pid0, e.strerror), errno=e.errno,
                    attach=e.errno == errno.EPERM)
    sock = socket.socket(fileno=dup)
    try:
        name = sock.getsockname()
        family = sock.family
        options = _options(sock, family)
        filtered = _filter_attached(dup)
    finally:
        sock.close()  # must be gone before the injected close(), or the port stays bound
    if filtered and not force:
        raise Error("the listener on :%d has a BPF socket filter attached, which park cannot restore" % name[1],
                    fix="park %d --force  (resume will recreate the listener without the filter)" % name[1])
    out = dict(listener)
    out["family"] = int(family)
    out["address"] = list(name)
    out["options"] = options
    out["holders"] = [_holder_view(pid, holders[pid], listener["inode"], name[1], force)
                      for pid in sorted(holders)]
    out["nonblock"] = out["holders"][0]["fds"][0]["nonblock"]
    queue, backlog = queue_lengths([listener["inode"]], {family}).get(listener["inode"], (0, None))
    if not out.get("listening", True):
        backlog = 0  # bound only: resume binds it again without listen()
    elif backlog is None:
        try:
            backlog = int(_read("/proc/sys/net/core/somaxconn"))
        except (OSError, ValueError):
            backlog = 4096
    out["backlog"] = backlog
    return out


def _holder_view(pid, fds_, inode, port, force):
    """One holder's fds of the socket (with their flags) and its epoll registrations of it."""
    links = _proc_fds(pid)
    busy = None if force else ring_pending(pid, links, inode)
    if busy:
        raise Error("pid %d has %s, which can hold the listener open out of park's sight; nothing was changed"
                    % (pid, busy), fix="park %d --force  (only if you know the ring does not use the listener)"
                    % port)
    fds = []
    for fd in fds_:
        try:
            flags = parse_fdinfo_flags(_read("/proc/%d/fdinfo/%d" % (pid, fd)))
        except OSError:
            raise Error("pid %d exited while park looked at it" % pid)
        fds.append({"fd": fd, "cloexec": bool(flags & O_CLOEXEC), "nonblock": bool(flags & O_NONBLOCK)})
    regs = []
    for epfd, link in sorted(links.items()):
        if link != "anon_inode:[eventpoll]":
            continue
        try:
            text = _read("/proc/%d/fdinfo/%d" % (pid, epfd))
        except OSError:
            continue
        for tfd, events, data, ino in parse_fdinfo_epoll(text):
            if ino != inode:
                continue
            if tfd not in fds_:
                if not force:
                    raise Error("pid %d watches the listener in epoll under fd %d, which is closed; park cannot "
                                "restore that registration" % (pid, tfd),
                                fix="park %d --force  (that registration will not come back)" % port)
                continue  # --force: left out, as the fix says
            regs.append({"epfd": epfd, "tfd": tfd, "events": events, "data": data})
    return {"pid": pid, "fds": fds, "epoll": regs}


def parse_fdinfo_ring(text):
    """What an io_uring's fdinfo (io_uring/fdinfo.c) says is under way: (unsubmitted SQEs, [ops in its poll
    list], [names of its registered files])."""
    fields, polls, files, section = {}, [], [], None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("PollList", "CqOverflowList", "UserFiles", "UserBufs"):
            section = key
        if not line.startswith((" ", "\t")):
            fields[key] = value.strip()
        if section == "PollList" and line.startswith(" ") and "op=" in line:
            polls.append(int(line.split("op=")[1].split(",")[0]))
        elif section == "UserFiles" and line.startswith(" "):
            files.append(line.split(":", 1)[1].strip())
    try:
        unsubmitted = (int(fields.get("SqTail", "0")) - int(fields.get("SqHead", "0"))) & 0xFFFFFFFF
    except ValueError:
        unsubmitted = 0
    return unsubmitted, polls, files


_URING_OPS = {13: "accept", 6: "poll"}  # IORING_OP_*, include/uapi/linux/io_uring.h


def ring_pending(pid, links, inode):
    """Why an io_uring of pid could hold the listener (a request in flight keeps its own reference to the
    file, so closing the fd leaves the port listening), or None. libuv (uvloop) keeps a ring only to batch
    epoll_ctl, with nothing in flight: that is parked. Busy io-wq workers (iou-wrk threads not idle in
    io_wq_worker) count as in flight too."""
    for fd, link in sorted(links.items()):
        if link != "anon_inode:[io_uring]":
            continue
        try:
            unsubmitted, polls, files = parse_fdinfo_ring(_read("/proc/%d/fdinfo/%d" % (pid, fd)))
        except OSError:
            continue
        if "socket:[%d]" % inode in files:
            return "the listener registered as a fixed file in its io_uring (fd %d)" % fd
        if polls:
            ops = sorted({_URING_OPS.get(op, "op %d" % op) for op in polls})
            return "an io_uring request in flight (fd %d: %s)" % (fd, ", ".join(ops))
        if unsubmitted:
            return "%d io_uring request%s not yet submitted (fd %d)" % (unsubmitted, "s" * (unsubmitted > 1), fd)
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    for tid in tids:
        try:
            comm = _read("/proc/%d/task/%s/comm" % (pid, tid)).strip()
            wchan = _read("/proc/%d/task/%s/wchan" % (pid, tid)).strip()
        except OSError:
            continue
        if comm.startswith("iou-wrk") and wchan not in ("io_wq_worker", "0", ""):
            return "an io_uring worker busy in %s (thread %s)" % (wchan, tid)
    return None


def _verify(plan, pids):
    """Once every thread is stopped: the listeners are exactly as recorded (fds, flags, epoll) and no process
    outside pids (a child forked meanwhile) holds one. Anything else is an Error: nothing has changed yet."""
    for l in plan:
        want = "socket:[%d]" % l["inode"]
        for h in l["holders"]:
            links = _proc_fds(h["pid"])
            if any(links.get(f["fd"]) != want for f in h["fds"]):
                raise Error("pid %d changed its listener while park worked; nothing was changed" % h["pid"],
                            fix="park %d  (again)" % l["port"])
            now = _holder_view(h["pid"], [f["fd"] for f in h["fds"]], l["inode"], l["port"], True)
            if now != h:
                raise Error("pid %d changed its listener's flags or epoll registration while park worked; "
                            "nothing was changed" % h["pid"], fix="park %d  (again)" % l["port"])
    wanted = {"socket:[%d]" % l["inode"] for l in plan}
    for pid in pids:
        for kid in _children(pid):
            if kid not in pids and wanted & set(_proc_fds(kid).values()):
                raise Error("pid %d (a child of %d) shares the listener; nothing was changed" % (kid, pid),
                            fix="park %d  (again)" % plan[0]["port"], errno=errno.EBUSY, missed=[kid])


def _children(pid):
    kids = []
    try:
        # One file per thread, read while every thread is held: os.open/os.read, not a buffered text file.
        task = os.open("/proc/%d/task" % pid, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for tid in os.listdir(task):
                fd = os.open(tid + "/children", os.O_RDONLY, dir_fd=task)
                try:
                    data = chunk = os.read(fd, 1 << 16)
                    while len(chunk) == 1 << 16:  # a seq_file: a short read is its end
                        chunk = os.read(fd, 1 << 16)
                        data += chunk
                    kids += [int(k) for k in data.split()]
                finally:
                    os.close(fd)
        finally:
            os.close(task)
    except (OSError, ValueError):
        pass
    return kids


def _enter_again(regs):
    """From the registers at a syscall-entry stop: the same thread about to enter that call again (on the
    instruction, its number where the instruction takes it, and no call in progress, so that no restart rule
    applies). Its first argument is where it was at entry."""
    back = regs.copy()
    back.pc, back.number, back.nr = regs.pc - len(arch.INSN), regs.nr, -1
    return back


def _call(regs, nr, args):
    """regs at a syscall-entry stop, changed to enter call nr with args instead (number set too: it is the
    thread's own register again when it is given back, and how _recover recognises the call)."""
    out = regs.copy()
    out.nr = out.number = nr
    for name, value in zip(arch.Regs.ARGS, args):
        setattr(out, name, value & (2 ** 64 - 1))
    return out


def _enter_at(regs, site, nr):
    """regs, changed to execute the system call instruction at site for call nr, outside any call."""
    out = regs.copy()
    out.pc, out.number, out.nr = site, nr, -1
    return out


def _scratch_base(regs):
    """Below the red zone (x86_64 has one) and well below anything the interrupted code may use."""
    return (regs.sp - arch.RED_ZONE - 2048) & ~0xF


SCRATCH_SIZE = 1024
JOURNAL = True  # park.py passes resume(journal=..., recover=...) and park(journal=...)
JOURNAL_REGS = len(arch.Regs._fields_)  # the registers a journal entry gives back to a thread


def queue_lengths(inodes, families):
    """{inode: (accept queue length, backlog)}; {} when sock_diag is not available."""
    try:
        diag = _sock_diag(families)
    except OSError:
        return {}
    return {i: diag[i] for i in inodes if i in diag}


# ---------------------------------------------------------------------------------------------------------
# Stopping threads and running system calls inside them

POLL_PAUSE = 0.00005  # the first sleep of a poll loop that found nothing 200 times in a row


def _idle(polls, pause):
    """One wait of a poll loop that found nothing, the polls-th in a row: a stop takes microseconds, so the
    first 200 only yield the CPU, later ones sleep, from POLL_PAUSE doubling to 5 ms. Returns the next pause."""
    if polls < 200:
        os.sched_yield()
        return pause
    time.sleep(pause)
    return min(pause * 2, 0.005)


def _next_status(tid, timeout, late):
    """tid's next wait status (0 once it is gone), polled without blocking (see _idle) so that a thread
    that never stops cannot hang park. Past `timeout` seconds, late() is called, and raises."""
    deadline = time.monotonic() + timeout
    polls, pause = 0, POLL_PAUSE
    while True:
        try:
            got, status = os.waitpid(tid, WALL | os.WNOHANG)
        except ChildProcessError:
            return 0
        if got:
            return status
        if time.monotonic() > deadline:
            late()
        polls += 1
        pause = _idle(polls, pause)


_VDSO = []


def _find_insn(data):
    """Offset of the system call instruction (arch.INSN, at its alignment) in data, or -1."""
    at = data.find(arch.INSN)
    while at >= 0 and at % arch.INSN_ALIGN:
        at = data.find(arch.INSN, at + 1)
    return at


def _is_insn(word):
    """True when word (8 bytes read at an address, little-endian) starts with the system call instruction."""
    return word is not None and word & ((1 << 8 * len(arch.INSN)) - 1) == int.from_bytes(arch.INSN, "little")


def _vdso_syscall_offset():
    """Offset of a system call instruction in this kernel's vdso; the image is the same in every process."""
    if _VDSO:
        return _VDSO[0]
    _VDSO.append(None)
    for line in _read("/proc/self/maps").splitlines():
        if line.endswith("[vdso]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            at = _find_insn(ctypes.string_at(lo, hi - lo))
            _VDSO[0] = at if at >= 0 else None
    return _VDSO[0]


def _vdso_base(pid):
    """Where the vdso is mapped in pid: AT_SYSINFO_EHDR (33) in /proc/PID/auxv (include/uapi/linux/auxvec.h)."""
    try:
        with open("/proc/%d/auxv" % pid, "rb") as f:
            data = f.read()
    except OSError:
        return None
    for key, value in struct.iter_unpack("=QQ", data[:len(data) // 16 * 16]):
        if key == 33:
            return value
    return None


class _Proc:
    """One traced process: its stopped threads and the injection state of the thread chosen to run syscalls.

    at says where that thread is: "event" (a plain ptrace stop), "entry" (its own syscall-entry stop, its own
    registers), "injected" (at that entry stop with an injected call's registers), "exit" (the injected call's
    exit stop) or "delivery" (the signal-delivery stop of park's SIGSTOP, its own registers again)."""

    def __init__(self, pid):
        self.pid = pid
        self.tids = []
        self.group = False  # it was stopped by job control (SIGSTOP, Ctrl+Z) when park stopped it
        self.tid = None
        self.entry = None  # the registers at its own syscall-entry stop
        self.back = None  # its own registers between injected calls: that syscall, to be entered again
        self.synth = None  # fallback only: the registers that enter the vdso's syscall instruction
        self.site = None  # the address of the syscall instruction it runs
        self.at = None
        self.queued = False  # park's SIGSTOP is queued for the thread
        self.taken = []  # signals the thread got meanwhile, kept from it and sent again afterwards
        self.scratch = None
        self.scratch_orig = None
        self.used = 0
        self.listening = []  # threads job control stopped, waiting in PTRACE_LISTEN for SIGCONT


class _Late(Exception):
    pass


class Tracer:
    """Stops every thread of a set of processes and runs system calls in them; release() undoes it all.

    journal: an fd (a file opened for appending) where, before the first change, the registers each injected
    thread must end with are written (one JSON line per process), and after every call that makes an fd,
    that fd; resume(recover=...) reads them back after a park that was killed. Not fsynced: what a killed
    park wrote stays in the page cache for the next park to read, and a crash of the machine, which fsync
    would guard against, ends the processes the journal is for (an fsync cost ~1.1 ms of held time here)."""

    def __init__(self, suspend_seccomp=False, journal=None):
        self.procs = {}
        self.options = PTRACE_O_TRACESYSGOOD | (PTRACE_O_SUSPEND_SECCOMP if suspend_seccomp else 0)
        self.stopped_at = None
        self.held = 0.0
        self.journal = journal
        # Signals the chosen thread takes before the first change are delivered (see _signal_stop). resume()
        # keeps them where the kernel has already decided a restart at the stop (arch.REWOUND): sent again
        # when the threads are let go, they meet the thread inside its own call's signal code (see _rerun).
        self.deliver = True

    # -- stopping --
    def stop(self, pids):
        """Stop every thread of pids (rescanning until no new thread appears)."""
        if self.stopped_at is None:
            self.stopped_at = time.perf_counter()
        ptrace = _libc.ptrace
        for pid in pids:
            p = self.procs.setdefault(pid, _Proc(pid))
            for _ in range(20):
                if p.tids and self._thread_count(pid) == len(p.tids):
                    # Those it holds stopped are all it has (and, stopped, they make no new one): no need to
                    # list them again. A stopped thread cannot go alone: only the whole process can die.
                    break
                try:
                    tids = {int(t) for t in os.listdir("/proc/%d/task" % pid)}
                except OSError:
                    raise Error("pid %d exited" % pid)
                new = sorted(tids.difference(p.tids))
                if not new:
                    break
                # Seize them all, then interrupt them all, then collect the stops: each thread is on its way
                # to its stop while the next ones are interrupted, so most stops are there at the first look.
                seized = [tid for tid in new if self._seize(pid, tid)]
                p.tids += seized
                for tid in seized:
                    ptrace(PTRACE_INTERRUPT, tid, None, None)  # a thread gone meanwhile shows as gone below
                for tid, sig in self._wait_stopped(seized).items():
                    if not sig:
                        p.tids.remove(tid)
                    elif sig != signal.SIGTRAP:
                        p.group = True  # the event stop of a group-stopped task reports its stop signal
            else:
                raise Error("pid %d keeps creating threads; try again" % pid)
            if not p.tids:
                raise Error("pid %d exited" % pid)

    def _thread_count(self, pid):
        """How many threads pid has now (num_threads in /proc/PID/stat, the same set as /proc/PID/task); None
        if it cannot be read."""
        try:
            fd = os.open("/proc/%d/stat" % pid, os.O_RDONLY)
            try:
                return int(os.read(fd, 4096).rsplit(b")", 1)[1].split()[17])
            finally:
                os.close(fd)
        except (OSError, ValueError, IndexError):
            return None

    def _seize(self, pid, tid):
        """PTRACE_SEIZE one thread; False if it is gone."""
        if _libc.ptrace(PTRACE_SEIZE, tid, None, self.options) == 0:
            return True
        e = ctypes.get_errno()
        if e == errno.ESRCH:
            return False
        if self.options & PTRACE_O_SUSPEND_SECCOMP and e in (errno.EPERM, errno.EINVAL):
            # PTRACE_O_SUSPEND_SECCOMP needs CAP_SYS_ADMIN and CONFIG_CHECKPOINT_RESTORE: go on without it.
            self.options &= ~PTRACE_O_SUSPEND_SECCOMP
            return self._seize(pid, tid)
        raise Error("cannot stop pid %d (ptrace: %s)" % (pid, os.strerror(e)), errno=e, attach=True)

    def _wait_stopped(self, tids, timeout=3.0):
        """Wait until each of tids (interrupted already) is in a ptrace event stop; returns {tid: its stop
        signal (SIGTRAP, or the stop signal of a group-stopped task), 0 if it exited}. Signals that arrive
        first are delivered. Every pass looks at each thread not stopped yet without blocking (one waitpid
        each), and only a pass that found nothing yields the CPU (later ones back off to 5 ms), so that a
        thread that never stops cannot hang park: one that has not stopped after timeout (uninterruptible
        sleep: NFS, FUSE, vfork) is an Error."""
        out = {}
        waiting = list(tids)
        end = time.monotonic() + timeout  # one deadline, also across signal-delivery-stops on the way
        idle, pause = 0, POLL_PAUSE
        waitpid, flags = os.waitpid, WALL | os.WNOHANG
        while waiting:
            left = []
            for tid in waiting:
                try:
                    got, status = waitpid(tid, flags)
                except ChildProcessError:
                    got, status = tid, 0
                if not got:
                    left.append(tid)
                elif not os.WIFSTOPPED(status):
                    out[tid] = 0
                elif status >> 16 == PTRACE_EVENT_STOP:
                    out[tid] = os.WSTOPSIG(status)
                else:
                    # A signal-delivery-stop (or a syscall stop): let the thread have its signal (as CRIU
                    # does), interrupted again first: any trap clears a pending PTRACE_INTERRUPT
                    # (kernel/signal.c ptrace_stop), and it would run on instead of stopping.
                    sig = os.WSTOPSIG(status)
                    _libc.ptrace(PTRACE_INTERRUPT, tid, None, None)
                    if _libc.ptrace(PTRACE_CONT, tid, None, 0 if sig == SYSCALL_STOP else sig) == -1:
                        out[tid] = 0
                    else:
                        left.append(tid)
            if len(left) < len(waiting):
                idle, pause = 0, POLL_PAUSE
            elif time.monotonic() > end:
                raise Error("thread %d does not stop (it may be in an uninterruptible wait); nothing was "
                            "changed" % left[0], fix="try again in a moment")
            else:
                idle += 1
                pause = _idle(idle, pause)
            waiting = left
        return out

    # -- injecting --
    # A call is run by the chosen thread itself, in place of a system call of its own: PTRACE_SYSCALL takes it
    # to its next syscall-entry stop (regs E, its system call instruction at S, just before E.pc), and each call
    # then goes: tgkill(SIGSTOP); E with the call's number and arguments; PTRACE_SYSCALL to the exit stop (the
    # result); R, its own registers (those it was stopped with, if it was stopped in the call it entered again,
    # so that the kernel restarts it or returns EINTR to a handler as after SIGSTOP/SIGCONT; else E entering
    # the call again: pc = S, no call in progress); PTRACE_SYSCALL to the delivery stop of that SIGSTOP, which the
    # next PTRACE_SYSCALL discards. So whenever the thread holds registers that are not its own, a SIGSTOP is
    # queued: if park dies then, the process stops (kernel/signal.c do_signal_stop) instead of running
    # injected registers, and the journal says how to put it back. Injected calls run with that SIGSTOP
    # pending: one that would sleep returns EINTR at once (none of park's does, when all is well). Signals
    # the thread gets meanwhile are kept from it and sent again afterwards; a SIGCONT sent meanwhile drops
    # park's SIGSTOP (kernel/signal.c prepare_signal). Nothing single-steps and no signal mask is changed.
    def choose(self, p):
        """(tid, regs) of the thread to inject into: the first, leader first, that sits in a system call (it
        enters it again at once); only if none is in a syscall is the leader taken, to run to its next one."""
        first = None
        for tid in ([p.pid] if p.pid in p.tids else []) + sorted(t for t in p.tids if t != p.pid):
            try:
                regs = self._regs(tid)
            except OSError:
                continue
            if regs.nr >= 0 or (arch.REWOUND and _is_insn(self._peek(tid, regs.pc))):
                return tid, regs
            first = first or (tid, regs)
        if first is None:
            raise Error("cannot read the registers of pid %d" % p.pid)
        return first

    def _ready(self):
        """Before the first injected call: take the chosen thread of every process to a syscall-entry stop,
        and journal what each must be given back."""
        todo = [p for p in self.procs.values() if p.tid is None]
        if not todo:
            return
        for p in todo:
            self._prepare(p)
        for p in todo:
            self._journal_proc(p)

    def _journal_proc(self, p):
        self._note({"pid": p.pid, "tid": p.tid, "site": p.site, "group": p.group,
                    "back": [getattr(p.back, n) for n, _ in arch.Regs._fields_],
                    "scratch": [p.scratch, p.scratch_orig.hex()] if p.scratch_orig else None})

    def _note(self, entry):
        if self.journal is not None:
            try:
                os.write(self.journal, (json.dumps(entry, sort_keys=True) + "\n").encode())
            except OSError:
                pass

    def _prepare(self, p):
        tid, regs = self.choose(p)
        if not arch.native(regs):
            raise Error("pid %d is not a 64-bit process; park handles %s processes only" % (p.pid, arch.NAME))
        p.tid, p.at, p.queued, p.synth, p.back = tid, "event", False, None, None
        origin = arch.interrupted(regs)  # a thread stopped in a call it will restart keeps these as its own
        if origin is not None and origin.ret != regs.ret:
            arch.set_regs(_ptrace, tid, origin)
        _failpoint("pause", "seek")
        try:
            self._run_to_entry(p, SEEK_SECONDS, None)
        except _Late:
            # No system call of its own in time (a thread busy in user code): it enters the vdso's `syscall`
            # instead, its own registers kept to come back to. Until it reaches that entry stop (a few
            # microseconds, once per call) a park killed there would leave it running the vdso's code.
            self._interrupt_to_event(p)
            regs = self._regs(tid)
            p.synth = _enter_at(regs, self._gadget(p.pid, tid), arch.NR_getpid)
            p.site, p.back = p.synth.pc, regs
            self._run_to_entry(p, SYSCALL_DEADLINE)
        if origin is not None and p.synth is None and p.entry.pc == origin.pc and \
                p.entry.nr in (origin.nr, arch.NR_restart_syscall):
            p.back = origin  # it entered that call again
        base = _scratch_base(p.back)
        p.scratch_orig = self._read_mem(p.pid, base, SCRATCH_SIZE)
        p.scratch = base if p.scratch_orig is not None else None
        p.used = 0

    def _run_to_entry(self, p, timeout, late=False):
        """From an event or delivery stop, let the thread run to a syscall-entry stop of its own `syscall`
        instruction (an `int 0x80` entry is let through); sets p.entry and, for its own call, p.back.
        late=None: past timeout, raise _Late."""
        end = time.monotonic() + timeout
        late = self._stuck(p, "enter a system call") if late is False else late
        sig = 0
        while True:
            if p.synth is not None:
                arch.set_regs(_ptrace, p.tid, p.synth)
            _ptrace(PTRACE_SYSCALL, p.tid, 0, sig)
            sig = 0
            status = self._wait(p, end, late)
            if os.WSTOPSIG(status) != SYSCALL_STOP:
                if status >> 16 != PTRACE_EVENT_STOP:
                    sig = self._signal_stop(p, status, deliver=self.deliver and p.at == "event" and p.synth is None)
                continue
            regs = self._regs(p.tid)
            if p.synth is not None:
                p.entry, p.at = regs, "entry"
                return
            if self._take_entry(p, regs):
                return
            _ptrace(PTRACE_SYSCALL, p.tid, 0, 0)  # int 0x80 (or sysenter): to its exit stop, then on
            self._wait(p, end, late)

    def _take_entry(self, p, regs):
        """At a syscall-entry stop of the thread's own: True (and p set up) if it entered by arch.INSN (on
        x86_64 `syscall`, not int 0x80)."""
        site = regs.pc - len(arch.INSN)
        if (p.site != site or p.synth is not None) and not _is_insn(self._peek(p.tid, site)):
            return False
        if p.back is None or p.synth is not None or p.site != site:
            # Its own registers, about to enter this call (a handler run first then enters it afterwards).
            p.back = _enter_again(regs)
        p.entry, p.at, p.synth, p.site = regs, "entry", None, site
        return True

    def _wait(self, p, end, late=None):
        def raise_late():
            raise _Late()
        status = _next_status(p.tid, max(0.0, end - time.monotonic()), late or raise_late)
        if not os.WIFSTOPPED(status):
            raise Error("pid %d died while park was working on it" % p.pid)
        return status

    def _signal_stop(self, p, status, deliver):
        """A signal-delivery stop of the chosen thread: park's own SIGSTOP is discarded; another signal is
        delivered before the first change (deliver=True), else kept and sent again when park is done, so that
        no handler runs between two injected calls. Returns the signal to resume with."""
        sig = os.WSTOPSIG(status)
        if sig == signal.SIGSTOP and p.queued:
            p.queued = False
            return 0
        if deliver:
            return sig
        p.taken.append(sig)
        return 0

    def _interrupt_to_event(self, p):
        """Stop the running thread in a plain event stop (a syscall it makes meanwhile runs, as its own). Any
        other stop on the way (its syscall's entry, a signal) clears the pending PTRACE_INTERRUPT
        (kernel/signal.c ptrace_stop): it is interrupted again there, or it would run on, or sleep in that
        call, and never stop."""
        _ptrace(PTRACE_INTERRUPT, p.tid)
        end = time.monotonic() + SYSCALL_DEADLINE
        while True:
            status = self._wait(p, end, self._stuck(p, "stop"))
            if status >> 16 == PTRACE_EVENT_STOP:
                p.at = "event"
                return
            sig = 0 if os.WSTOPSIG(status) == SYSCALL_STOP else self._signal_stop(p, status, deliver=self.deliver)
            _ptrace(PTRACE_INTERRUPT, p.tid)
            _ptrace(PTRACE_SYSCALL, p.tid, 0, sig)

    def _stuck(self, p, what):
        def late():
            raise Error("thread %d of pid %d did not %s" % (p.tid, p.pid, what))
        return late

    def _gadget(self, pid, tid):
        off = _vdso_syscall_offset()
        if off is not None:
            base = _vdso_base(pid)
            if base and _is_insn(self._peek(tid, base + off)):
                return base + off
        maps = _read("/proc/%d/maps" % pid).splitlines()
        # No vdso (vdso=0): look for the instruction in the process's own executable mappings.
        try:
            with open("/proc/%d/mem" % pid, "rb", buffering=0) as mem:
                for line in maps:
                    f = line.split()
                    if len(f) < 2 or "x" not in f[1] or line.endswith("[vsyscall]"):
                        continue
                    lo, hi = (int(x, 16) for x in f[0].split("-"))
                    mem.seek(lo)
                    at = _find_insn(mem.read(min(hi - lo, 1 << 20)))
                    if at >= 0:
                        return lo + at
        except OSError:
            pass
        raise Error("found no syscall instruction in pid %d" % pid)

    def _peek(self, tid, addr):
        ctypes.set_errno(0)
        v = _libc.ptrace(PTRACE_PEEKTEXT, tid, addr, 0)
        if v == -1 and ctypes.get_errno():
            return None
        return v & (2 ** 64 - 1)

    def syscall(self, pid, nr, *args):
        """Run one system call in pid; return its result, or raise OSError with the target's errno. A call
        that has not returned after SYSCALL_DEADLINE is interrupted, and is an Error naming it."""
        self._ready()
        p = self.procs[pid]
        name = _NAMES.get(nr, "system call %d" % nr)
        hang = _failpoint("hang", name)
        if hang:  # test hook: a call that never returns until park interrupts it (no SIGSTOP queued)
            nr, args = arch.NR_hang, (0, 0, 0, 0)
        if p.at != "entry":
            _failpoint("pause", "delivery")
            self._run_to_entry(p, SYSCALL_DEADLINE)
        _failpoint("pause", "entry")
        if not hang:
            self._queue_stop(p)
            _failpoint("pause", "queued")
        arch.set_regs(_ptrace, p.tid, _call(p.entry, nr, args))
        p.at = "injected"
        _failpoint("pause", "injected")
        _ptrace(PTRACE_SYSCALL, p.tid, 0, 0)
        _failpoint("pause", "running")
        status = self._wait(p, time.monotonic() + SYSCALL_DEADLINE, self._late_call(p, name))
        if os.WSTOPSIG(status) != SYSCALL_STOP:
            raise Error("pid %d did not run the injected %s()" % (pid, name))
        p.at = "exit"
        result = self._regs(p.tid).ret
        _failpoint("pause", "exit")
        if result >= 0 and nr in (arch.NR_socket, arch.NR_dup3):
            self._made(p, result)
        elif result >= 0 and nr == arch.NR_recvmsg:
            got = self._received_fd(p, args[1])
            if got is not None:
                self._made(p, got)
        self._back(p)
        if hang and result in arch.RESTARTS:
            self._hung(p, name)
        if -4096 < result < 0:
            if result in arch.RESTARTS:
                result = -errno.EINTR
            raise OSError(-result, os.strerror(-result))
        return result

    def _queue_stop(self, p):
        if not p.queued:
            _check(_libc.syscall(arch.NR_tgkill, p.pid, p.tid, signal.SIGSTOP), "tgkill")
            p.queued = True

    def _made(self, p, fd):
        """Journal an fd that an injected call made, before the thread gets its own registers back."""
        if self.journal is not None:
            try:
                link = os.readlink("/proc/%d/fd/%d" % (p.pid, fd))
            except OSError:
                link = None
            self._note({"pid": p.pid, "fd": fd, "link": link})

    def _received_fd(self, p, msg):
        """The fd an injected recvmsg() got with SCM_RIGHTS: msg_control of its struct msghdr, then the cmsg."""
        head = self._read_mem(p.pid, msg, 56)
        if head is None:
            return None
        control, length = struct.unpack_from("=QQ", head, 32)
        cmsg = self._read_mem(p.pid, control, 24) if length >= 24 else None
        if cmsg is None:
            return None
        clen, level, kind, fd = struct.unpack("=QiiI4x", cmsg)
        return fd if level == SOL_SOCKET and kind == SCM_RIGHTS and clen >= 20 else None

    def _back(self, p):
        """From the exit stop: the thread's own registers back, then on to the delivery stop of park's SIGSTOP
        (or, when none is queued, to an event stop or its own syscall-entry stop)."""
        arch.set_regs(_ptrace, p.tid, p.back)
        _failpoint("pause", "restored")
        _ptrace(PTRACE_SYSCALL, p.tid, 0, 0)
        _failpoint("pause", "back")
        end = time.monotonic() + SYSCALL_DEADLINE
        while True:
            status = self._wait(p, end, self._stuck(p, "come back from an injected call"))
            sig = os.WSTOPSIG(status)
            if sig == SYSCALL_STOP:
                # No SIGSTOP was left (none queued, or a SIGCONT dropped it): it entered a syscall of its own.
                p.queued = False
                synth = p.synth
                if self._take_entry(p, self._regs(p.tid)):
                    if synth is not None:
                        self._journal_proc(p)  # from now on it uses its own syscall instruction
                    return
                _ptrace(PTRACE_SYSCALL, p.tid, 0, 0)  # int 0x80: to its exit stop, then on
                self._wait(p, end, self._stuck(p, "come back from an injected call"))
                _ptrace(PTRACE_SYSCALL, p.tid, 0, 0)
                continue
            if status >> 16 == PTRACE_EVENT_STOP:
                if not p.queued:
                    p.at = "event"
                    return
                _ptrace(PTRACE_SYSCALL, p.tid, 0, 0)
                continue
            was = p.queued
            resume = self._signal_stop(p, status, deliver=False)
            if was and not p.queued:
                p.at = "delivery"
                return
            _ptrace(PTRACE_SYSCALL, p.tid, 0, resume)

    def _regs(self, tid):
        return arch.get_regs(_ptrace, tid)

    def _late_call(self, p, name):
        """Past the deadline: interrupt the call (a sleeping call returns at once, to its exit stop)."""
        def late():
            try:
                _ptrace(PTRACE_INTERRUPT, p.tid)
                status = self._wait(p, time.monotonic() + 1.0, self._stuck(p, "return"))
                if os.WSTOPSIG(status) == SYSCALL_STOP:
                    p.at = "exit"
                    self._back(p)
            except (OSError, Error):
                pass
            self._hung(p, name)
        return late

    def _hung(self, p, name):
        raise Error("the injected %s() in pid %d did not return within %g s; park interrupted it"
                    % (name, p.pid, SYSCALL_DEADLINE), fix="look at what pid %d is doing "
                    "(cat /proc/%d/task/%d/stack), then try again" % (p.pid, p.pid, p.tid))

    def scratch(self, pid, data, reset=False):
        """Copy data into the target's scratch area and return its address there (valid until release).
        reset=True starts a new sequence, reusing the area from its start."""
        self._ready()
        p = self.procs[pid]
        if p.scratch is None:
            raise Error("cannot use the stack of pid %d for scratch memory" % pid)
        if reset:
            p.used = 0
        if p.used + len(data) > SCRATCH_SIZE:
            raise Error("scratch memory exhausted in pid %d" % pid)
        addr = p.scratch + p.used
        self._write_mem(pid, addr, data)
        p.used += (len(data) + 15) & ~15
        return addr

    def probe_scratch(self, pid):
        """True when the scratch area that resume will use in pid is readable and writable now."""
        p = self.procs[pid]
        _, regs = self.choose(p)
        base = _scratch_base(regs)
        data = self._read_mem(pid, base, SCRATCH_SIZE)
        if data is None:
            return False
        try:
            self._write_mem(pid, base, data)  # the same bytes: only proves the page is writable
        except Error:
            return False
        return True

    def read_scratch(self, pid, addr, size):
        data = self._read_mem(pid, addr, size)
        if data is None:
            raise Error("cannot read scratch memory in pid %d" % pid)
        return data

    def _read_mem(self, pid, addr, size):
        buf = ctypes.create_string_buffer(size)
        local = iovec(ctypes.cast(buf, ctypes.c_void_p), size)
        remote = iovec(addr, size)
        n = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        return buf.raw if n == size else None

    def _write_mem(self, pid, addr, data):
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        local = iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
        remote = iovec(addr, len(data))
        n = _libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n != len(data):
            raise Error("cannot write scratch memory in pid %d" % pid)

    # -- putting back --
    def restore(self, rerun=False):
        """Give every thread injected into its own registers and the scratch memory back, and settle each into
        a plain ptrace stop with no SIGSTOP of park's left queued; every thread stays stopped. Its registers
        enter its own system call again when it runs (as after a signal handler), and signals it got meanwhile
        are sent again. rerun: the threads are let go next (see _rerun)."""
        first = None
        for p in self.procs.values():
            if p.tid is not None:
                try:
                    self._settle(p)
                except (OSError, Error) as e:
                    first = first or e
            if p.scratch is not None:
                try:
                    self._write_mem(p.pid, p.scratch, p.scratch_orig)
                except Error as e:
                    first = first or e
            if rerun and first is None and p.tid is not None and p.synth is None and p.back is not None \
                    and p.back.pc == p.site:
                try:
                    self._rerun(p)
                except (OSError, Error) as e:
                    first = first or e
            for sig in p.taken:
                try:
                    os.kill(p.pid, sig)
                except OSError:
                    pass
            p.tid = p.entry = p.back = p.synth = p.site = p.scratch = p.scratch_orig = p.at = None
            p.used, p.taken, p.queued = 0, [], False
        if self.stopped_at is not None:
            self.held = time.perf_counter() - self.stopped_at
        if first is not None:
            raise Error("could not restore the state of the process cleanly: %s" % first, parked=True)

    def _settle(self, p):
        """From wherever the injection left the chosen thread into a plain ptrace event stop with its own
        registers and no SIGSTOP of park's queued, without running user code: a pending PTRACE_INTERRUPT traps
        it inside get_signal, which checks traps before it would return to user mode (kernel/signal.c)."""
        _failpoint("pause", "settle")
        end = time.monotonic() + SYSCALL_DEADLINE
        stuck = self._stuck(p, "settle")
        while p.at != "event" or p.queued:
            if p.at == "injected":
                arch.set_regs(_ptrace, p.tid, p.entry)
                p.at = "entry"
            if p.at == "entry":
                # Leave its own syscall unentered: number -1 at the entry stop skips it; R enters it later.
                self._queue_stop(p)
                skip = p.entry.copy()
                skip.nr = -1
                arch.set_regs(_ptrace, p.tid, skip)
                _ptrace(PTRACE_SYSCALL, p.tid, 0, 0)
                status = self._wait(p, end, stuck)
                p.at = "exit" if os.WSTOPSIG(status) == SYSCALL_STOP else "event"
            if p.at == "exit":
                self._back(p)
            elif p.at == "delivery":
                break
            elif p.at == "event" and p.queued:  # an event stop came first: on to the SIGSTOP
                _ptrace(PTRACE_SYSCALL, p.tid, 0, 0)
                status = self._wait(p, end, stuck)
                if os.WSTOPSIG(status) == SYSCALL_STOP:
                    p.queued = False
                    self._take_entry(p, self._regs(p.tid)) or self._stuck(p, "settle")()
                elif status >> 16 != PTRACE_EVENT_STOP:
                    self._signal_stop(p, status, deliver=False)
                    if not p.queued:
                        p.at = "delivery"
        self._hold_here(p, end, stuck)

    def _hold_here(self, p, end, stuck):
        """From a stop inside the kernel's signal code into a plain event stop there, without returning to user
        mode (signals on the way are kept, as by _signal_stop). Each stop on the way clears the pending
        PTRACE_INTERRUPT (kernel/signal.c ptrace_stop), so it is asked for again after each. A thread in no
        stop at all (an earlier wait gave up on it: a slow machine) is stopped by the interrupt."""
        _ptrace(PTRACE_INTERRUPT, p.tid)
        try:
            _ptrace(PTRACE_CONT, p.tid, 0, 0)
        except ProcessLookupError:
            pass  # running, not stopped (or gone: the wait below says which)
        while True:
            status = self._wait(p, end, stuck)
            if status >> 16 == PTRACE_EVENT_STOP:
                p.at = "event"
                return
            if os.WSTOPSIG(status) != SYSCALL_STOP:
                self._signal_stop(p, status, deliver=False)
            _ptrace(PTRACE_INTERRUPT, p.tid)
            _ptrace(PTRACE_CONT, p.tid, 0, 0)

    def _rerun(self, p):
        """Where the kernel has already decided to restart a call before the stop (arch.REWOUND, arm64), just
        before the threads are let go: the chosen thread, held about to enter its own call again, enters it
        now with a SIGSTOP of park's pending, and is held at that SIGSTOP's delivery, inside the kernel's
        signal code. A call that would sleep returns at once (-ERESTART...), and the kernel then decides, as
        after any stop, whether it restarts it or returns EINTR to the handler of a signal that came
        meanwhile (arch/arm64/kernel/signal.c do_signal); any other call has run once, as it was about to.
        Without this, a signal sent to a parked server ran its handler and the thread went back into its
        accept(), so that Python, which runs its handlers when the call returns EINTR, never ran them."""
        self._note({"pid": p.pid, "tid": p.tid, "own": True})  # its registers stay its own from here
        end = time.monotonic() + SYSCALL_DEADLINE
        stuck = self._stuck(p, "settle")
        want = "entry"
        _ptrace(PTRACE_SYSCALL, p.tid, 0, 0)
        while True:
            status = self._wait(p, end, stuck)
            if os.WSTOPSIG(status) == SYSCALL_STOP:
                if want == "entry":
                    if self._regs(p.tid).pc != p.site + len(arch.INSN):
                        stuck()
                    self._queue_stop(p)
                    _failpoint("pause", "rerun")
                    want = "exit"
                else:
                    want = "delivery"
            elif status >> 16 != PTRACE_EVENT_STOP:
                self._signal_stop(p, status, deliver=False)
                if want == "delivery" and not p.queued:
                    break
            _ptrace(PTRACE_SYSCALL, p.tid, 0, 0)
        self._hold_here(p, end, stuck)

    def release(self):
        """restore(), then detach every thread: each runs on from where it was stopped (a process that was
        stopped by job control before or during the park stays stopped, as it would have)."""
        try:
            self.restore(rerun=arch.REWOUND)
        finally:
            ptrace = _libc.ptrace
            for p in self.procs.values():
                for tid in p.tids:
                    ptrace(PTRACE_DETACH, tid, None, None)  # fails only for a thread that is gone
            self.procs = {}

    # -- holding (park's keeper) --
    def pids(self):
        return sorted(self.procs)

    def job_stopped(self, pid):
        """True while job control has pid stopped (its threads wait in PTRACE_LISTEN)."""
        return bool(self.procs[pid].listening)

    def hold_all(self):
        """Bring every thread that job control stopped (PTRACE_LISTEN) back into a ptrace stop, so that system
        calls can be injected again."""
        for p in self.procs.values():
            for tid in p.listening:
                _libc.ptrace(PTRACE_INTERRUPT, tid, None, None)  # a thread gone meanwhile shows as gone below
            for tid, sig in self._wait_stopped(p.listening).items():
                if not sig:
                    p.tids.remove(tid)
            p.listening = []

    def reap(self):
        """Take every notification the kernel has for the held threads, without waiting. Returns
        [(pid, event)]: event is ("exit", wait status) when a holder has died, ("continued",) when job control
        continued a process park had let stop. Threads continued that way are held again at once."""
        events = []
        for p in list(self.procs.values()):
            for tid in list(p.tids):
                while True:
                    try:
                        got, status = os.waitpid(tid, WALL | os.WNOHANG)
                    except ChildProcessError:
                        got, status = tid, 0
                    if got == 0:
                        break
                    if not os.WIFSTOPPED(status):
                        p.tids.remove(tid)
                        if tid in p.listening:
                            p.listening.remove(tid)
                        if tid == p.pid or not p.tids:
                            events.append((p.pid, ("exit", status)))
                        break
                    # After SIGCONT a listening thread reports an event stop with SIGTRAP (do_jobctl_trap: the
                    # group stop is over); a stop signal instead means it is still stopped by job control.
                    if tid in p.listening and status >> 16 == PTRACE_EVENT_STOP and \
                            os.WSTOPSIG(status) == signal.SIGTRAP:
                        p.listening.remove(tid)  # it is in a plain ptrace stop again
                        if not p.listening:
                            events.append((p.pid, ("continued",)))
                        break
                    if tid in p.listening:
                        try:
                            _ptrace(PTRACE_LISTEN, tid)  # another stop notification: keep listening
                        except OSError:
                            pass
                    break
            if not p.tids:
                del self.procs[p.pid]
        return events

    def job_stop(self, pid):
        """Let job control stop pid, as a pending SIGTSTP/SIGTTIN/SIGTTOU would have (the shell that waits for
        it sees it stopped and takes its terminal back), while park keeps its threads. Returns (stopped, taken):
        whether the group stop happened (a SIGCONT may cancel it), and the signals taken off the queue on the
        way, to be sent again later. No thread ever returns to user mode here: each one that is continued has
        either a signal of park's own to take (SIGSTOP, which cannot be blocked and is taken before the
        process-wide queue, kernel/signal.c dequeue_signal) or a pending PTRACE_INTERRUPT to trap on."""
        p = self.procs[pid]
        tid = p.pid if p.pid in p.tids else p.tids[0]
        _check(_libc.syscall(arch.NR_tgkill, pid, tid, signal.SIGSTOP), "tgkill")
        taken = []
        _ptrace(PTRACE_CONT, tid, 0, 0)
        for _ in range(64):
            got = self._wait_signal(tid)
            if got is None:
                return False, taken
            if got == signal.SIGSTOP:
                break
            taken.append(got)  # a signal of that thread's own came first: sent again later
            _ptrace(PTRACE_CONT, tid, 0, 0)
        else:
            raise Error("pid %d did not take its stop signal" % pid)
        _ptrace(PTRACE_INTERRUPT, tid)  # if a SIGCONT cancels the stop, it traps here instead of running
        _ptrace(PTRACE_CONT, tid, 0, signal.SIGSTOP)
        stops = [self._wait_event(tid)]
        for t in p.tids:
            if t != tid:
                _ptrace(PTRACE_INTERRUPT, t)
                _ptrace(PTRACE_CONT, t, 0, 0)  # JOBCTL_STOP_PENDING: it joins the group stop inside the kernel
                stops.append(self._wait_event(t))
        if any(sig != signal.SIGSTOP for sig in stops):
            return False, taken  # a SIGCONT came first: every thread is in a plain ptrace stop again
        for t in p.tids:
            _ptrace(PTRACE_LISTEN, t)
        p.listening = list(p.tids)
        return True, taken

    def _wait_event(self, tid):
        """The stop signal of tid's next event stop: SIGSTOP for a group stop, SIGTRAP for a plain one."""
        return self._wait_kind(tid, event=True)

    def _wait_signal(self, tid):
        """The signal of tid's next signal-delivery-stop (None if it exited)."""
        return self._wait_kind(tid, event=False)

    def _wait_kind(self, tid, event, timeout=3.0):
        """WSTOPSIG of tid's next event stop (event=True) or signal-delivery-stop; a stop of the other kind on
        the way is continued past with no signal (so a signal seen there stays suppressed). None if it exited."""
        def late():
            raise Error("thread %d does not stop" % tid)
        end = time.monotonic() + timeout
        while True:
            status = _next_status(tid, end - time.monotonic(), late)
            if not os.WIFSTOPPED(status):
                return None
            if (status >> 16 == PTRACE_EVENT_STOP) == event:
                return os.WSTOPSIG(status)
            _ptrace(PTRACE_CONT, tid, 0, 0)


def _status_fields(pid, tid=None):
    path = "/proc/%d/status" % pid if tid is None else "/proc/%d/task/%d/status" % (pid, tid)
    try:
        text = _read(path)
    except OSError:
        return {}
    return dict(l.split(":\t", 1) for l in text.splitlines() if ":\t" in l)


def stoppable(pid, signo):
    """Whether a pending SIGTSTP/SIGTTIN/SIGTTOU would stop pid: not when every thread blocks it, nor when its
    process group is orphaned (the kernel then discards it: kernel/signal.c get_signal)."""
    try:
        tids = [int(t) for t in os.listdir("/proc/%d/task" % pid)]
    except OSError:
        return False
    if all(int(_status_fields(pid, t).get("SigBlk", "0"), 16) >> (signo - 1) & 1 for t in tids):
        return False
    return not _orphaned(pid)


def _stat_ids(pid):
    """(ppid, pgrp, session) of pid, from /proc/PID/stat."""
    f = _read("/proc/%d/stat" % pid).rsplit(")", 1)[1].split()
    return int(f[1]), int(f[2]), int(f[3])


def _orphaned(pid):
    """POSIX: a process group is orphaned when no member has a parent in another group of the same session."""
    try:
        _, pgrp, session = _stat_ids(pid)
    except (OSError, ValueError, IndexError):
        return False
    for q in pids():
        try:
            ppid, qgrp, _ = _stat_ids(q)
            if qgrp != pgrp:
                continue
            _, pgrp_p, sess_p = _stat_ids(ppid)
        except (OSError, ValueError, IndexError):
            continue
        if pgrp_p != pgrp and sess_p == session:
            return False
    return True


def signals(pid):
    """What /proc says of pid's signals: {"pending", "blocked", "ignored", "caught"} as sets of numbers. Pending
    is the process-wide queue (kill, the terminal) and the main thread's own."""
    f = _status_fields(pid)

    def bits(name):
        v = int(f.get(name, "0").strip() or "0", 16)
        return {n + 1 for n in range(64) if v >> n & 1}
    return {"pending": bits("ShdPnd") | bits("SigPnd"), "blocked": bits("SigBlk"), "ignored": bits("SigIgn"),
            "caught": bits("SigCgt")}


def _sockaddr(family, address):
    """struct sockaddr_in / sockaddr_in6 for bind(2)."""
    packed = socket.inet_pton(family, address[0])
    if family == socket.AF_INET:
        return struct.pack("=H", family) + struct.pack("!H4s8x", address[1], packed)
    flow, scope = (list(address[2:]) + [0, 0])[:2]
    return struct.pack("=H", family) + struct.pack("!HI16s", address[1], flow, packed) + struct.pack("=I", scope)


def _option_bytes(kind, value):
    if kind == "int":
        return struct.pack("=i", value)
    if kind == "buf":
        return struct.pack("=i", value // 2)  # the kernel doubles it back (socket(7))
    if kind == "linger":
        return bytes.fromhex(value)
    return value.encode("latin-1") + b"\0"


def hold_socket(l, backlog=4096):
    """A listener of park's own at l's address, with l's options and flags and a large backlog, that accepts
    nothing: clients queue on it until it is handed to the parked process (park --hold)."""
    sock = socket.socket(l["family"], socket.SOCK_STREAM)
    try:
        for level, name, num, kind, value in l["options"]:
            if name != "SO_REUSEADDR":
                sock.setsockopt(level, num, _option_bytes(kind, value))
        sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
        address = tuple(l["address"])
        try:
            sock.bind(address)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or not time_wait(l):
                raise
            clear_time_wait(time_wait(l))  # the same TIME_WAIT rule as for resume (needs root)
            sock.bind(address)
        if l.get("listening", True):
            sock.listen(backlog)  # clamped to net.core.somaxconn
        sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, _value(l, "SO_REUSEADDR"))
        sock.setblocking(not l["nonblock"])
    except BaseException:
        sock.close()
        raise
    return sock


def _value(l, name):
    for o in l["options"]:
        if o[1] == name:
            return o[4]
    return 0


def still_listening(listeners_):
    """The inodes of these listeners that are still in LISTEN."""
    want = {l["inode"] for l in listeners_}
    ports = {l["port"] for l in listeners_}
    live = set()
    for port in ports:
        live |= {row[1] for row in _tcp_rows(port)}
    return want & live


# ---------------------------------------------------------------------------------------------------------
# Draining without resets: closing a listener resets every connection in its accept queue
# (inet_csk_listen_stop), so new connections are held off while the server accepts what is queued.

# A classic BPF socket filter, run by tcp_filter() with the data at the TCP header: drop a segment with SYN
# set and ACK clear (a new connection; the client retransmits its SYN after ~1 s and then meets the closed
# port or the resumed server), keep everything else, so handshakes under way still complete.
_SYN_DROP = struct.pack("=HBBI HBBI HBBI HBBI HBBI",
                        0x30, 0, 0, 13,           # ldb [13]         (BPF_LD|BPF_B|BPF_ABS: the TCP flags)
                        0x54, 0, 0, 0x12,         # and #0x12        (BPF_ALU|BPF_AND|BPF_K: SYN|ACK)
                        0x15, 0, 1, 0x02,         # jeq #0x02, 0, 1  (BPF_JMP|BPF_JEQ|BPF_K: SYN alone?)
                        0x06, 0, 0, 0,            # ret #0           (drop)
                        0x06, 0, 0, 0xFFFFFFFF)   # ret #-1          (keep)


def _syn_filter(allow):
    """_SYN_DROP, preceded by a test that keeps every segment from one of the source ports in allow (park's
    own wake-order probes, which must reach the listener while the guard holds everyone else off)."""
    head = struct.pack("=HBBI", 0x28, 0, 0, 0) if allow else b""  # ldh [0] (BPF_LD|BPF_H|BPF_ABS: sport)
    for i, port in enumerate(allow):
        # jeq #port, to _SYN_DROP's last instruction (keep): over the other jeqs and its first four
        head += struct.pack("=HBBI", 0x15, len(allow) - 1 - i + 4, 0, port)
    return head + _SYN_DROP


class SynGuard:
    """Holds new connections off the listeners of a plan while park drains them: the filter is attached
    through park's own duplicate of each listener (closed at once: it must not keep the port open) and is
    removed on every path: by end(), or, if park dies first, by a watchdog process that notices the end of
    its pipe and detaches it through a fresh duplicate. The watchdog is forked before the first filter is
    attached, so no moment is left in which a killed park leaves one behind. A listener that has a filter
    of its own keeps it (park cannot read one back), and is drained as before, its handshakes looked for
    while the threads are stopped too (covers() is then False)."""

    def __init__(self, plan, allow=()):
        self.sockets = []  # (pid, fd, inode) of each listener that has park's filter
        self.pipe = None
        self.watchdog = None
        candidates = []
        for l in plan:
            if not l.get("listening", True):
                continue  # only bound: no connection reaches it
            pid, fd = l["holders"][0]["pid"], l["holders"][0]["fds"][0]["fd"]
            dup = self._dup_if_unfiltered(pid, fd, l["inode"])
            if dup is not None:
                candidates.append((pid, fd, l["inode"]))
                os.close(dup)  # none is held across the fork: the watchdog would keep the port open
        if not candidates:
            return
        self._start_watchdog(candidates)
        code = _syn_filter(allow)
        prog = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("=H6xQ", len(code) // 8, ctypes.addressof(prog))
        for pid, fd, inode in candidates:
            dup = self._dup_if_unfiltered(pid, fd, inode)
            if dup is None:
                continue
            try:
                if _libc.setsockopt(dup, SOL_SOCKET, SO_ATTACH_FILTER, fprog, len(fprog)) == 0:
                    self.sockets.append((pid, fd, inode))
            finally:
                os.close(dup)
            _failpoint("pause", "guard")

    @staticmethod
    def _dup_if_unfiltered(pid, fd, inode):
        """A duplicate of pid's fd if it still is that listener and has no filter of its own, else None."""
        try:
            dup = _pidfd_getfd(pid, fd)
        except OSError:
            return None
        if os.fstat(dup).st_ino == inode and not _filter_attached(dup):
            return dup
        os.close(dup)
        return None

    def _start_watchdog(self, candidates):
        """Fork the watchdog, which detaches the filter from each of candidates if park dies (where park did
        not attach one, that does nothing)."""
        r, w = os.pipe()
        pidfds = []
        for pid, _, _ in candidates:
            try:
                pidfds.append(_check(_libc.syscall(arch.NR_pidfd_open, pid, 0, 0), "pidfd_open"))
            except OSError:
                pidfds.append(-1)
        child = os.fork()
        if child == 0:  # the watchdog: it reads nothing, it only waits for the pipe's end
            try:
                os.close(w)
                os.setsid()
                keep = sorted({r} | {f for f in pidfds if f >= 0})
                low = 0
                for fd in keep:  # nothing of park's own (its lock, its control socket, its report pipe)
                    os.closerange(low, fd)
                    low = fd + 1
                os.closerange(low, 1 << 16)
                if os.read(r, 1) != b"d":
                    for (pid, fd, inode), pidfd in zip(candidates, pidfds):
                        _detach_filter(pidfd, fd, inode)
            finally:
                os._exit(0)
        os.close(r)
        for pidfd in pidfds:
            if pidfd >= 0:
                os.close(pidfd)
        self.pipe, self.watchdog = w, child

    def covers(self, plan):
        """True when every listening socket of plan has park's filter."""
        return {l["inode"] for l in plan if l.get("listening", True)} <= {inode for _, _, inode in self.sockets}

    def end(self):
        """Remove the filter from every listener that still exists, and dismiss the watchdog."""
        for pid, fd, inode in self.sockets:
            try:
                pidfd = _check(_libc.syscall(arch.NR_pidfd_open, pid, 0, 0), "pidfd_open")
            except OSError:
                continue
            _detach_filter(pidfd, fd, inode)
            os.close(pidfd)
        if self.pipe is not None:
            os.write(self.pipe, b"d")
            os.close(self.pipe)
            try:
                os.waitpid(self.watchdog, 0)
            except ChildProcessError:
                pass
        self.sockets, self.pipe = [], None


def _detach_filter(pidfd, fd, inode):
    """SO_DETACH_FILTER on pid's fd, if it still is that socket (a closed listener took its filter along)."""
    if pidfd < 0:
        return
    dup = _libc.syscall(arch.NR_pidfd_getfd, pidfd, fd, 0)
    if dup < 0:
        return
    try:
        if os.fstat(dup).st_ino == inode:
            one = ctypes.c_int(1)
            _libc.setsockopt(dup, SOL_SOCKET, SO_DETACH_FILTER, ctypes.byref(one), 4)
    finally:
        os.close(dup)


def _same_file(pid_a, fd_a, pid_b, fd_b):
    """True when two processes' fds are one open file (kcmp(2) KCMP_FILE: an epoll made before a fork)."""
    return (pid_a, fd_a) == (pid_b, fd_b) or _libc.syscall(arch.NR_kcmp, pid_a, pid_b, KCMP_FILE, fd_a, fd_b) == 0


class WakeProbe:
    """The order in which a new connection wakes the epoll instances watching a listener, which /proc does
    not show: each has one entry on the listener's wait queue, a plain one at the front and an EPOLLEXCLUSIVE
    one at the back (ep_ptable_queue_proc, fs/eventpoll.c), and a connection wakes them from the front.
    Made before the SynGuard (whose filter lets the probe's source port through); run() once every holder
    thread is stopped, just before the close: park's own connection then wakes every holder's epoll (none
    has a waiter) in queue order, each wakes park's edge-triggered epoll watching a duplicate of it, and
    that lists them in the same order. run() records each registration's rank as "wake"; the connection is
    reset at once, and the close discards it from the accept queue: no holder runs meanwhile. Only a
    listener that two or more epoll instances watch is probed."""

    # Seconds the stopped holders wait at most for the probe's wake-ups (normally they come before connect()
    # returns; on a loaded machine the loopback softirq can run later, in ksoftirqd). A probe the kernel
    # refuses (a reset: SO_BINDTODEVICE elsewhere) ends the wait at once; one a filter drops does not.
    WAIT = 0.25

    def __init__(self, plan):
        self.items = []  # (listener, socket, park's epoll, {duplicate fd: group}, groups of (pid, reg))
        self.notes = []  # one line per listener probed (or not), for the keeper's log
        live = [l for l in plan if l.get("listening", True)]  # a socket only bound (not listening) wakes no one
        for l in live:
            groups = []  # one per epoll instance: every (pid, registration) of it
            for h in l["holders"]:
                for r in h["epoll"]:
                    for g in groups:
                        if _same_file(g[0][0], g[0][1]["epfd"], h["pid"], r["epfd"]):
                            g.append((h["pid"], r))
                            break
                    else:
                        groups.append([(h["pid"], r)])
            if len(groups) < 2 or any(not r["events"] & EPOLLIN for g in groups for _, r in g):
                continue  # nothing to order, or a registration no connection wakes (a fired EPOLLONESHOT)
            if any(o is not l and o["family"] == l["family"] and o["address"] == l["address"] for o in live):
                continue  # a SO_REUSEPORT group: the kernel picks the socket a connection goes to, by hash
            ep, dups, sock = select.epoll(), {}, None
            try:
                for i, g in enumerate(groups):
                    dups[_pidfd_getfd(g[0][0], g[0][1]["epfd"])] = i
                for d in dups:
                    ep.register(d, EPOLLIN | EPOLLET)
                sock = socket.socket(l["family"], socket.SOCK_STREAM)
                sock.bind(("::" if l["family"] == socket.AF_INET6 else "0.0.0.0", 0))
                sock.setblocking(False)
            except OSError as e:
                for d in dups:
                    os.close(d)
                ep.close()
                if sock is not None:
                    sock.close()
                self.notes.append("wake order of %s not observed: %s" % (_where(l), e.strerror))
                continue  # not probed: resume registers them in pid order, as before
            self.items.append((l, sock, ep, dups, groups))

    def ports(self):
        return [item[1].getsockname()[1] for item in self.items]

    def run(self):
        for l, sock, ep, dups, groups in self.items:
            t0 = time.perf_counter()
            try:
                order, why = self._order(l, sock, ep, dups)
            except OSError as e:
                order, why = None, e.strerror
            finally:
                try:
                    sock.setsockopt(SOL_SOCKET, socket.SO_LINGER, struct.pack("=ii", 1, 0))  # close = RST
                except OSError:
                    pass
                sock.close()
            for rank, i in enumerate(order or ()):
                for _, r in groups[i]:
                    r["wake"] = rank
            self.notes.append("wake order of %s %s" % (_where(l), "not observed: " + why if why else
                              "in %.2f ms: %s" % ((time.perf_counter() - t0) * 1000, ", ".join(
                                  "pid %d fd %d" % (groups[i][0][0], groups[i][0][1]["epfd"]) for i in order))))

    def _order(self, l, sock, ep, dups):
        """(the groups' indexes in wake order, None), or (None, why not)."""
        ep.poll(0)  # whatever was ready already is not the probe's doing
        host, port = l["address"][0], l["address"][1]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        addr = (host, port) if l["family"] == socket.AF_INET else (host, port, 0, l["address"][3])
        err = sock.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            return None, "connect: " + os.strerror(err)
        deadline = time.monotonic() + self.WAIT
        if any(o[1] == "TCP_DEFER_ACCEPT" and o[4] for o in l["options"]):
            # The listener queues a connection (and wakes anyone) only once data arrives (tcp_check_req).
            if not select.select([], [sock], [], self.WAIT)[1] or sock.send(b"\0") != 1:
                return None, "no connection within %g s" % self.WAIT
        ep.register(sock.fileno(), EPOLLOUT | EPOLLET)  # connected, or refused
        seen = []
        while len(seen) < len(dups):
            ready = ep.poll(max(0.0, deadline - time.monotonic()))
            if not ready:
                return None, "%d of %d epoll instances woken within %g s" % (len(seen), len(dups), self.WAIT)
            for fd, _ in ready:
                if fd not in dups:
                    err = sock.getsockopt(SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        return None, "connect: " + os.strerror(err)
                elif dups[fd] not in seen:
                    seen.append(dups[fd])
        return seen, None

    def close(self):
        for _, sock, ep, dups, _ in self.items:
            sock.close()
            ep.close()
            for d in dups:
                os.close(d)
        self.items = []


def _replay_order(regs):
    """[(pid, registration)] in the order to add them again so that the wait queue is as WakeProbe saw it:
    plain ones (each added goes to the front) in reverse wake order, EPOLLEXCLUSIVE ones (each to the back)
    in wake order. Not probed: as recorded (pid order)."""
    if not regs or not all("wake" in r for _, r in regs):
        return regs
    plain = sorted((x for x in regs if not x[1]["events"] & EPOLLEXCLUSIVE), key=lambda x: -x[1]["wake"])
    return plain + sorted((x for x in regs if x[1]["events"] & EPOLLEXCLUSIVE), key=lambda x: x[1]["wake"])


def _queued(inodes, families):
    """Connections waiting in the listeners' accept queues: closing a listener resets them."""
    return sum(q[0] for q in queue_lengths(inodes, families).values())


def _half_open(families, port):
    """Connections to port still in their handshake (SYN_RECV): closing the listener resets them too. A walk
    of the kernel's whole connection table, ~1 ms."""
    n = 0
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
            for seq, family in enumerate(sorted(families), 1):
                for sockid, _, _, _, _ in _diag_dump(nl, family, 1 << TCP_SYN_RECV, seq):
                    if struct.unpack_from("!H", sockid, 0)[0] == port:
                        n += 1
    except OSError:
        pass
    return n


def _close_listeners(tracer, plan, pids, closed, probe=None):
    """With every thread stopped: check that nothing changed since inspect() and that resume will be able
    to borrow scratch memory, observe the wake order (probe: a WakeProbe), then close every recorded fd
    (each is appended to closed)."""
    _verify(plan, pids)
    for pid in pids:
        if not tracer.probe_scratch(pid):
            raise Error("pid %d runs on a stack park cannot use to resume it later (a small fiber stack?); "
                        "nothing was changed" % pid)
    if probe is not None:
        probe.run()
    for l in plan:
        for h in l["holders"]:
            for f in h["fds"]:
                tracer.syscall(h["pid"], arch.NR_close, f["fd"])
                closed.append((h["pid"], f["fd"]))
    if still_listening(plan):
        # Something park cannot see (an io_uring request, an fd in flight, another pid namespace) holds it.
        rings = [pid for pid in pids if "anon_inode:[io_uring]" in _proc_fds(pid).values()]
        raise Error("the listener stayed open after park closed it in every holder it found (%s)"
                    % ("pid %d's io_uring holds it" % rings[0] if rings else
                       "an fd in flight, or a holder park cannot see"), errno=errno.EBUSY)


def park(plan, drain=2.0, suspend_seccomp=False, journal=None):
    """Stop every holder, close the listeners, and keep every thread in a ptrace stop: the caller is then
    the keeper of the park. plan: listeners from inspect().

    Returns {"reset": n, "held": seconds, "tracer": the Tracer holding them, "notes": lines for the keeper's
    log}. On failure the target is left running, as it was, unless the Error says parked=True (the listener
    could not be put back: the target stays held by the Error's tracer)."""
    pids = sorted({h["pid"] for l in plan for h in l["holders"]})
    inodes = [l["inode"] for l in plan]
    families = {l["family"] for l in plan}
    if all(stopped(process(pid) or {"state": "?"}) for pid in pids):
        drain = 0  # already stopped by someone: it cannot accept anything
    deadline = time.monotonic() + drain
    reset = 0
    port = plan[0]["port"]
    probe = WakeProbe(plan)
    guard = None
    try:
        guard = SynGuard(plan, probe.ports()) if drain else None
        # With the guard on every listener no handshake can start (but park's own probes), so once none
        # is under way, the look inside the stop reads only the accept queues: ~1 ms less held.
        sealed = guard is not None and guard.covers(plan)
        stops = 0
        while True:
            # Let the server accept what is queued while the guard holds new connections off, so that
            # closing resets nobody (bounded wait). Before the first stop only the handshakes are waited
            # for (when sealed): mostly nothing is queued, and the look after the stop is the one that counts.
            _failpoint("pause", "drain")
            while (stops or sealed) and time.monotonic() < deadline:
                if not _half_open(families, port) + (_queued(inodes, families) if stops else 0):
                    break
                time.sleep(0.002)
            stops += 1
            tracer = Tracer(suspend_seccomp, journal)
            try:
                tracer.stop(pids)
            except BaseException:
                tracer.release()
                raise
            queued = _queued(inodes, families) + (0 if sealed else _half_open(families, port))
            if not queued or time.monotonic() >= deadline:
                reset = queued
                break
            tracer.release()
        out = _park_held(tracer, plan, pids, reset, probe)
        out["notes"] = probe.notes
        return out
    finally:
        if guard is not None:
            guard.end()
        probe.close()


def _park_held(tracer, plan, pids, reset, probe=None):
    """park(), once every thread is stopped and the queues are drained."""
    try:
        closed = []
        try:
            _close_listeners(tracer, plan, pids, closed, probe)
        except BaseException as failure:
            if not closed:
                raise
            try:
                still = still_listening(plan)
                _recreate(tracer, [l for l in plan if l["inode"] not in still], force=True)
                missed = _give_back(tracer, [l for l in plan if l["inode"] in still])
            except BaseException:
                # Cannot put the listener back now: keep the processes parked, with their state, rather
                # than let them run without it.
                tracer.restore()
                tracer.journal = None
                e = Error("%s; the processes stay parked" % failure,
                          fix="park release %d  (continue them; restart the server if it does not serve)"
                          % plan[0]["port"], parked=True)
                e.tracer = tracer
                raise e
            if missed:
                raise Error("pid %d holds the listener too, so park left it as it was" % missed[0],
                            errno=errno.EBUSY, missed=missed)
            raise
    except Error as e:
        if not e.parked:
            tracer.release()
        raise
    except BaseException:
        tracer.release()
        raise
    tracer.restore()
    tracer.journal = None  # the caller closes it; the keeper's later calls get their own
    return {"reset": reset, "held": tracer.held, "tracer": tracer}


def _give_back(tracer, still):
    """Listeners that stayed open after park closed them in every holder it found: give the very socket back
    to each of those holders, from a process park did not find (it holds it still); returns those pids.
    Raises Error when no process holds it (an io_uring request, another pid namespace)."""
    missed = []
    for l in still:
        found = {l["inode"]: {"holders": {}}}
        _find_holders(found, pids())
        others = {pid: fds for pid, fds in found[l["inode"]]["holders"].items()
                  if pid not in {h["pid"] for h in l["holders"]}}
        if not others:
            raise Error("no process park can see holds it")
        pid = min(others)
        dup = _dup(pid, others[pid][0])
        try:
            _recreate(tracer, [l], force=True, given=[dup])
        finally:
            os.close(dup)
        missed.append(pid)
    return missed


def swap(plan_a, plan_b, suspend_seccomp=False):
    """Move the listeners of plan_a to plan_b's port and those of plan_b to plan_a's, in their own processes,
    with everything else kept. All or nothing: on failure both are put back on their ports, running."""
    port_a, port_b = plan_a[0]["port"], plan_b[0]["port"]
    moved = [_on_port(l, port_b) for l in plan_a] + [_on_port(l, port_a) for l in plan_b]
    both = plan_a + plan_b
    pids = sorted({h["pid"] for l in both for h in l["holders"]})
    tracer = Tracer(suspend_seccomp)
    try:
        tracer.stop(pids)
        closed = []
        try:
            _close_listeners(tracer, both, pids, closed)
            _recreate(tracer, moved, force=False)
        except BaseException as failure:
            if not closed:
                raise
            try:
                _recreate(tracer, both, force=True)
            except BaseException:
                # Neither move nor roll back: let them run without their listeners (no keeper holds them),
                # and say how to bring each back.
                tracer.release()
                raise Error("%s; the listeners could not be put back either: the processes run without them"
                            % failure, fix="park resume %d; park resume %d" % (port_a, port_b), parked=True)
            raise
    except BaseException:
        tracer.release()
        raise
    tracer.release()
    return {"held": tracer.held}


def _on_port(l, port):
    """The same listener, moved to another port."""
    out = dict(l)
    out["port"] = port
    out["address"] = [l["address"][0], port] + list(l["address"][2:])
    return out


def resume(plan, force=False, suspend_seccomp=False, given=None, tracer=None, journal=None, recover=None):
    """Recreate each listener in its holders and let them run on. tracer: the keeper's Tracer, which holds
    them; without one (the keeper is gone and they run without their listener) they are stopped first. On
    failure they stay as they were: held by the keeper, or running. given: park's own listening fds (from
    hold_socket), one per listener, to hand over instead. journal: an fd to journal the injection to (see
    Tracer). recover: the journal of a park or resume that was killed, to undo first (see _recover)."""
    pids = sorted({h["pid"] for l in plan for h in l["holders"]})
    own = tracer is None
    try:
        if own:
            tracer = Tracer(suspend_seccomp, journal)
            tracer.deliver = not arch.REWOUND
            tracer.stop(pids)
            if recover:
                _recover(tracer, plan, recover)
        else:
            tracer.journal, tracer.deliver = journal, not arch.REWOUND
            gone = sorted(set(pids) - set(tracer.pids()))
            if gone:
                raise Error("pid %d has exited while parked" % gone[0])
            tracer.hold_all()
            tracer.stopped_at = time.perf_counter()
        for l in plan:
            for h in l["holders"]:
                fds = _proc_fds(h["pid"])
                for f in h["fds"]:
                    if f["fd"] in fds:
                        raise Error("pid %d reused fd %d while it ran without its listener" % (h["pid"], f["fd"]),
                                    fix="park release %d  (let it run as it is), or restart the server"
                                    % h["pid"])
        _recreate(tracer, plan, force, given)
    except BaseException:
        if own:
            tracer.release()
        else:
            tracer.restore()
            tracer.journal = None  # the caller closes it
        raise
    tracer.release()
    return {"held": tracer.held}


_INJECTED = set(_NAMES) | {arch.NR_hang}


def _recover(tracer, plan, entries):
    """Undo what a killed park or resume left, with every thread stopped: the process is then as if parked.
    A thread stopped (by park's SIGSTOP) with an injected call's registers (just after its syscall instruction,
    its stack and callee-saved registers as journaled, an injected call's number in regs.called) gets its own
    registers and scratch memory back, and the fd that call made is closed; fds the journal says were made
    are closed if they are still the same socket; the listener fds not closed yet are closed; and a process
    that park's SIGSTOP stopped is continued (SIGCONT) before anything is injected."""
    close = {}
    done = {e["tid"] for e in entries if e.get("own")}  # _rerun: its registers were its own again
    for e in reversed([e for e in entries if "back" in e]):
        p = tracer.procs.get(e["pid"])
        if p is None or e["tid"] not in p.tids or e["tid"] in done:
            continue
        regs = tracer._regs(e["tid"])
        back = arch.Regs(*e["back"])
        nr, result = regs.called, regs.ret
        if regs.pc != e["site"] + len(arch.INSN) or nr not in _INJECTED or any(
                getattr(regs, n) != getattr(back, n) for n in arch.CALLEE_SAVED):
            continue
        done.add(e["tid"])
        made = result if nr in (arch.NR_socket, arch.NR_dup3) else None
        if nr == arch.NR_recvmsg and result >= 0:
            made = tracer._received_fd(p, getattr(regs, arch.Regs.ARGS[1]))
        if made is not None and made >= 0:
            close.setdefault(p.pid, set()).add(made)
        for n in arch.CLOBBERED:  # journaled at a syscall stop, written at another kind
            setattr(back, n, getattr(regs, n))
        arch.set_regs(_ptrace, e["tid"], back)
        if e.get("scratch"):
            try:
                tracer._write_mem(p.pid, e["scratch"][0], bytes.fromhex(e["scratch"][1]))
            except Error:
                pass
    for pid, p in tracer.procs.items():
        mine = [e for e in entries if e.get("pid") == pid and "back" in e]
        if mine and not mine[0]["group"] and (p.group or _stop_pending(pid, p.tids)):
            # park's SIGSTOP stopped it, or is still queued (a SIGCONT takes it off every queue,
            # kernel/signal.c prepare_signal); nothing else had stopped it.
            os.kill(pid, signal.SIGCONT)
            p.group = False
    for e in entries:
        if "fd" in e and e["pid"] in tracer.procs and e.get("link") and \
                _proc_fds(e["pid"]).get(e["fd"]) == e["link"]:
            close.setdefault(e["pid"], set()).add(e["fd"])
    for l in plan:
        for h in l["holders"]:
            links = _proc_fds(h["pid"])
            for f in h["fds"]:
                if links.get(f["fd"]) == "socket:[%d]" % l["inode"]:
                    close.setdefault(h["pid"], set()).add(f["fd"])
    for pid in sorted(close):
        for fd in sorted(close[pid]):
            try:
                tracer.syscall(pid, arch.NR_close, fd)
            except OSError:
                pass


def _stop_pending(pid, tids):
    """True when a SIGSTOP is queued for pid or one of its threads."""
    bit = 1 << (signal.SIGSTOP - 1)
    for tid in tids:
        f = _status_fields(pid, tid)
        if (int(f.get("SigPnd", "0").strip() or "0", 16) | int(f.get("ShdPnd", "0").strip() or "0", 16)) & bit:
            return True
    return False


def _recreate(tracer, plan, force, given=None):
    """Inject socket/options/bind/listen/dup3/epoll_ctl for every listener; all or nothing."""
    placed = []  # (pid, fd) now holding a new socket, closed again if anything fails
    try:
        for i, l in enumerate(plan):
            _recreate_one(tracer, l, force, placed, given[i] if given else None)
    except BaseException:
        for pid, fd in reversed(placed):
            try:
                tracer.syscall(pid, arch.NR_close, fd)
            except (OSError, Error):
                pass
        raise


def _create(tracer, l, force, placed):
    """socket, options, bind and listen in the first holder; returns the new fd there."""
    family = l["family"]
    pid = l["holders"][0]["pid"]
    f0 = l["holders"][0]["fds"][0]
    kind = SOCK_STREAM | (O_NONBLOCK if l["nonblock"] else 0) | (O_CLOEXEC if f0["cloexec"] else 0)
    try:
        new = tracer.syscall(pid, arch.NR_socket, family, kind, IPPROTO_TCP)
    except OSError as e:
        raise Error("socket() failed in pid %d: %s" % (pid, e.strerror), errno=e.errno)
    try:
        _configure(tracer, l, pid, new, force)
    except BaseException:
        try:
            tracer.syscall(pid, arch.NR_close, new)
        except (OSError, Error):
            pass
        raise
    placed.append((pid, new))
    return new


def _configure(tracer, l, pid, new, force):
    """Options, bind and listen on a new socket in pid."""
    family, address = l["family"], l["address"]
    reuse = 1
    for level, name, num, okind, value in l["options"]:
        if name == "SO_REUSEADDR":
            reuse = value
            continue
        if name == "TCP_FASTOPEN" or name == "TCP_DEFER_ACCEPT":
            continue  # set after listen(), where they apply to the listening socket
        _setsockopt(tracer, pid, new, level, num, okind, value, name, force)
    # Without SO_REUSEADDR, TIME_WAIT left by the interim server would block the bind: borrow it for the bind.
    _setsockopt(tracer, pid, new, SOL_SOCKET, SO_REUSEADDR, "int", 1, "SO_REUSEADDR", False)
    addr = _sockaddr(family, address)
    try:
        _failpoint("bind")
        try:
            tracer.syscall(pid, arch.NR_bind, new, tracer.scratch(pid, addr, reset=True), len(addr))
        except OSError as e:
            # Without SO_REUSEADDR even the borrowed one does not pass TIME_WAIT entries that the server's
            # own connections left (their reuse flag is 0). Root may clear them (SOCK_DESTROY) and retry.
            tw = time_wait(l) if e.errno == errno.EADDRINUSE else []
            if not tw:
                raise
            try:
                clear_time_wait(tw)
            except OSError as why:
                err = Error("cannot listen on %s again: %d TIME_WAIT connection(s) hold its address"
                            % (_where(l), len(tw)), errno=errno.EADDRINUSE)
                err.time_wait = why.errno
                raise err
            tracer.syscall(pid, arch.NR_bind, new, tracer.scratch(pid, addr, reset=True), len(addr))
        if l.get("listening", True):
            tracer.syscall(pid, arch.NR_listen, new, l["backlog"])
    except OSError as e:
        raise Error("cannot listen on %s again: %s" % (_where(l), e.strerror), errno=e.errno)
    if not reuse:
        _setsockopt(tracer, pid, new, SOL_SOCKET, SO_REUSEADDR, "int", 0, "SO_REUSEADDR", False)
    for level, name, num, okind, value in l["options"]:
        if name in ("TCP_FASTOPEN", "TCP_DEFER_ACCEPT"):
            _setsockopt(tracer, pid, new, level, num, okind, value, name, force)


class _Rendezvous:
    """A unix socket of park's that only pid may reach, to pass an fd either way with SCM_RIGHTS: it is bound
    in a fresh 0700 directory (chowned to pid's user when that is another one) in pid's own /tmp (through
    /proc/PID/root, so a private /tmp or another mount namespace works too). conn() connects an injected
    socket in pid to it; accept() takes that connection, dropping any peer other than pid."""

    def __init__(self, tracer, pid):
        import stat
        self.tracer, self.pid = tracer, pid
        uid = (process(pid) or {}).get("uid", os.geteuid())
        # Everything goes through directory fds: the target's user owns its /tmp view and, after the chown,
        # the new directory, and could swap either for a symlink between two calls that take a path.
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        self.base, self.dir, self.sock, self.u = None, None, None, None
        try:
            self.base = os.open("/proc/%d/root/tmp" % pid, flags)  # the target's own /tmp (its mount namespace)
            st = os.fstat(self.base)
            if not st.st_mode & stat.S_ISVTX or st.st_uid != 0:
                raise OSError(errno.EPERM, "not a sticky root-owned /tmp")
        except OSError:
            if self.base is not None:
                os.close(self.base)
            self.base = os.open("/tmp", flags)
        self.name = "park-" + os.urandom(8).hex()
        try:
            os.mkdir(self.name, 0o700, dir_fd=self.base)
            self.dir = os.open(self.name, flags, dir_fd=self.base)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind("/proc/self/fd/%d/s" % self.dir)
            if uid != os.geteuid():
                os.chown("s", uid, -1, dir_fd=self.dir, follow_symlinks=False)
                os.fchown(self.dir, uid, -1)
            self.sock.listen(4)
        except OSError as e:
            self.close()
            raise Error("cannot make a socket to pass the listener to or from pid %d: %s" % (pid, e.strerror))

    def conn(self):
        """An injected unix socket in pid, connected to park's; the caller closes it in pid."""
        tracer, pid = self.tracer, self.pid
        try:
            self.u = tracer.syscall(pid, arch.NR_socket, AF_UNIX, SOCK_STREAM | O_CLOEXEC, 0)
            sun = struct.pack("=H", AF_UNIX) + ("/tmp/%s/s" % self.name).encode() + b"\0"
            tracer.syscall(pid, arch.NR_connect, self.u, tracer.scratch(pid, sun, reset=True), len(sun))
        except OSError as e:
            raise Error("cannot pass the listener to or from pid %d: %s" % (pid, e.strerror), errno=e.errno)
        return self.u

    def accept(self):
        """pid's connection to park's socket (any other peer is dropped), by a deadline."""
        deadline = time.monotonic() + SYSCALL_DEADLINE
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                conn, _ = self.sock.accept()
            except OSError:
                raise Error("pid %d did not connect to park to pass the listener" % self.pid)
            peer = struct.unpack("=iII", conn.getsockopt(SOL_SOCKET, SO_PEERCRED, 12))[0]
            if peer == self.pid:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                return conn
            conn.close()

    def close(self):
        if self.u is not None:
            try:
                self.tracer.syscall(self.pid, arch.NR_close, self.u)
            except (OSError, Error):
                pass
            self.u = None
        if self.sock is not None:
            self.sock.close()
        for rm, what, at in ((os.unlink, "s", self.dir), (os.rmdir, self.name, self.base)):
            if at is not None:
                try:
                    rm(what, dir_fd=at)  # unlinkat/rmdir at: a symlink put there is removed, never followed
                except OSError:
                    pass
        for fd in (self.dir, self.base):
            if fd is not None:
                os.close(fd)
        self.dir = self.base = self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _give_fd(tracer, pid, local_fd):
    """Put a copy of park's local_fd into pid; returns its fd number there (FD_CLOEXEC set)."""
    with _Rendezvous(tracer, pid) as r:
        u = r.conn()
        with r.accept() as conn:
            conn.sendmsg([b"\0"], [(SOL_SOCKET, SCM_RIGHTS, struct.pack("=i", local_fd))])
        try:
            buf = tracer.scratch(pid, bytes(8), reset=True)
            cmsg = tracer.scratch(pid, bytes(24))
            iov = tracer.scratch(pid, struct.pack("=QQ", buf, 1))
            # struct msghdr (include/linux/socket.h): name, namelen, iov, iovlen, control, controllen, flags
            msg = tracer.scratch(pid, struct.pack("=QI4xQQQQi4x", 0, 0, iov, 1, cmsg, 24, 0))
            tracer.syscall(pid, arch.NR_recvmsg, u, msg, MSG_CMSG_CLOEXEC)
        except OSError as e:
            raise Error("cannot pass the listener to pid %d: %s" % (pid, e.strerror), errno=e.errno)
        length, level, kind, fd = struct.unpack("=QiiI4x", tracer.read_scratch(pid, cmsg, 24))
        if level != SOL_SOCKET or kind != SCM_RIGHTS or length < 20:
            raise Error("pid %d did not receive the listener" % pid)
        return fd


def _take_fd(tracer, pid, fd):
    """A copy of pid's fd in park (the caller closes it), sent by pid itself with SCM_RIGHTS: for kernels
    without pidfd_getfd (before 5.6). pid must be stopped by tracer."""
    with _Rendezvous(tracer, pid) as r:
        u = r.conn()
        try:
            buf = tracer.scratch(pid, bytes(8), reset=True)
            cmsg = tracer.scratch(pid, struct.pack("=QiiI4x", 20, SOL_SOCKET, SCM_RIGHTS, fd))
            iov = tracer.scratch(pid, struct.pack("=QQ", buf, 1))
            msg = tracer.scratch(pid, struct.pack("=QI4xQQQQi4x", 0, 0, iov, 1, cmsg, 24, 0))
            tracer.syscall(pid, arch.NR_sendmsg, u, msg, 0)
        except OSError as e:
            raise Error("cannot read the listener of pid %d: %s" % (pid, e.strerror), errno=e.errno)
        with r.accept() as conn:
            _, anc, _, _ = conn.recvmsg(1, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
        for level, kind, data in anc:
            if level == SOL_SOCKET and kind == SCM_RIGHTS and len(data) >= 4:
                return struct.unpack_from("=i", data)[0]
        raise Error("pid %d did not send its listener" % pid)


def _dup(pid, fd, tracer=None):
    """A duplicate of pid's fd (the caller closes it): pidfd_getfd, or, on a kernel without it, sent by pid
    itself while tracer (or a Tracer of its own, for a moment) holds it stopped."""
    try:
        return _pidfd_getfd(pid, fd)
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
    if tracer is not None:
        return _take_fd(tracer, pid, fd)
    own = Tracer(suspend_seccomp=os.geteuid() == 0)
    try:
        own.stop([pid])
        return _take_fd(own, pid, fd)
    finally:
        own.release()


def _failpoint(kind, name=None):
    """Test hooks, for tests that prove rollbacks: PARK_FAILPOINT=bind:N makes the Nth rebind fail as
    EADDRINUSE; PARK_FAILPOINT=hang:NAME:N turns the Nth injected NAME() into a call that never returns;
    PARK_FAILPOINT=pause:drain:N makes park sleep at the Nth drain, pause:guard:N just after the Nth filter
    of the drain is attached, for a test to kill it there (and write its pid to PARK_FAILPOINT_FILE, if
    set); pause:STEP:N the same at the Nth time it reaches one step of an injected call (seek, entry,
    queued, injected, running, exit, restored, back, delivery, settle; rerun on arm64); slow:US makes each
    of those steps US microseconds longer, for kills at random moments."""
    if not _SPEC:
        _SPEC.append(os.environ.get("PARK_FAILPOINT", "").split(":"))  # read once: it is on every call's path
    spec = _SPEC[0]
    if spec[0] == "slow" and len(spec) == 2:
        if kind == "pause":
            time.sleep(int(spec[1]) / 1e6)  # slow:US: every step takes US microseconds more
        return False
    if len(spec) < 2:
        return False
    key = [kind] + ([name] if name else [])
    if spec[:-1] != key:
        return False
    _FAILS[tuple(key)] = _FAILS.get(tuple(key), 0) + 1
    if _FAILS[tuple(key)] != int(spec[-1]):
        return False
    if kind == "bind":
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE) + " (PARK_FAILPOINT)")
    if kind == "pause":
        mark = os.environ.get("PARK_FAILPOINT_FILE")
        if mark:
            with open(mark, "w") as f:
                f.write("%d %s\n" % (os.getpid(), name))
        time.sleep(3600)  # until the test kills park here
    return True


_FAILS = {}
_SPEC = []


def _recreate_one(tracer, l, force, placed, given=None):
    """Recreate one listener in its holders. given: a listening socket of park's own (a --hold listener)
    to hand over instead of creating one; its options are already set."""
    first = l["holders"][0]
    pid = first["pid"]
    f0 = first["fds"][0]
    if given is not None:
        new = _give_fd(tracer, pid, given)
        placed.append((pid, new))
        tracer.syscall(pid, arch.NR_listen, new, l["backlog"])  # from the hold's large backlog back to its own
        _place(tracer, pid, new, True, first["fds"], placed)
    else:
        try:
            new, cloexec = _create(tracer, l, force, placed), f0["cloexec"]
        except Error as e:
            if e.errno != errno.EACCES or os.geteuid() != 0:
                raise
            # The server has since dropped the privilege it bound with (a port below 1024, then setuid):
            # park, as root, binds for it and hands the socket over.
            sock = hold_socket(l, backlog=l["backlog"])
            try:
                new, cloexec = _give_fd(tracer, pid, sock.fileno()), True
            finally:
                sock.close()
            placed.append((pid, new))
        _place(tracer, pid, new, cloexec, first["fds"], placed)
    if len(l["holders"]) > 1:
        # The other holders get the very same socket: park takes a copy from the first holder and passes it
        # to each with SCM_RIGHTS, which works whatever user each holder runs as.
        local = _dup(pid, f0["fd"], tracer)
        try:
            for h in l["holders"][1:]:
                got = _give_fd(tracer, h["pid"], local)
                placed.append((h["pid"], got))
                _place(tracer, h["pid"], got, True, h["fds"], placed)
        finally:
            os.close(local)
    for pid, r in _replay_order([(h["pid"], r) for h in l["holders"] for r in h["epoll"]]):
        ev = struct.pack(arch.EPOLL_EVENT, r["events"], r["data"])
        try:
            tracer.syscall(pid, arch.NR_epoll_ctl, r["epfd"], EPOLL_CTL_ADD, r["tfd"],
                           tracer.scratch(pid, ev, reset=True))
        except OSError as e:
            if e.errno != errno.EEXIST:  # an epoll instance shared by several holders: already added
                raise Error("epoll_ctl failed in pid %d: %s" % (pid, e.strerror))


def _place(tracer, pid, new, new_cloexec, fds, placed):
    """Make each recorded fd number in pid refer to socket `new` (whose FD_CLOEXEC is new_cloexec), each
    with its FD_CLOEXEC as it was."""
    numbers = [f["fd"] for f in fds]
    for f in fds:
        if f["fd"] == new:
            continue
        tracer.syscall(pid, arch.NR_dup3, new, f["fd"], O_CLOEXEC if f["cloexec"] else 0)
        placed.append((pid, f["fd"]))
    if new in numbers:
        want = [f for f in fds if f["fd"] == new][0]["cloexec"]
        if want != new_cloexec:
            tracer.syscall(pid, arch.NR_fcntl, new, F_SETFD, FD_CLOEXEC if want else 0)
    else:
        tracer.syscall(pid, arch.NR_close, new)
        placed.remove((pid, new))


def _setsockopt(tracer, pid, fd, level, num, kind, value, name, force):
    data = _option_bytes(kind, value)
    try:
        tracer.syscall(pid, arch.NR_setsockopt, fd, level, num, tracer.scratch(pid, data, reset=True), len(data))
    except OSError as e:
        if not force:
            raise Error("cannot restore %s on the listener in pid %d: %s" % (name, pid, e.strerror),
                        fix="park resume %d --force  (skips options that cannot be restored)" % pid)


def _where(l):
    host = l["address"][0]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, l["address"][1])


def ptrace_scope():
    """The Yama ptrace_scope value, or None when Yama is not present."""
    try:
        return int(_read("/proc/sys/kernel/yama/ptrace_scope").strip())
    except (OSError, ValueError):
        return None
