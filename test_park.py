"""Tests for park: `python3 test_park.py` (or `python3 -m unittest test_park`).

Tiers: static checks (every module parses as Python 3.9, the backend pin), the command line through main(argv)
and as a subprocess, and live tests that start real servers (http.server, asyncio, node, Go, blocking accept,
prefork, dual-stack, two sockets on one port, unusual options), park and resume them through the real CLI, and
compare what the kernel shows before and after, read independently of park's code: /proc/net/tcp{,6}, /proc/PID/fd
and fdinfo (flags, epoll registrations), pidfd_getfd + getsockopt, and `ss` for the backlog.
Every process a test starts is SIGKILLed by pid when the test ends, also on failure. Servers bind loopback only.
A live test that cannot run is skipped; with PARK_REQUIRE_LIVE=1 that skip is a failure.
"""

import ast
import contextlib
import ctypes
import errno
import glob
import http.client
import importlib.util
import io
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PARK = os.path.join(HERE, "park.py")
BACKEND = os.path.join(HERE, "park_linux.py")  # the Linux engine
MACHINE = os.uname().machine
LINUX = sys.platform.startswith("linux") and MACHINE in ("x86_64", "aarch64")
ARCH = "park_linux_%s.py" % MACHINE  # its architecture's module
BACKEND_FILES = ("park_linux.py", ARCH)
BACKEND_PATHS = tuple(os.path.join(HERE, n) for n in BACKEND_FILES)

SYS_pidfd_getfd = 438  # the same on x86_64 and aarch64
O_NONBLOCK = 0o4000  # include/uapi/asm-generic/fcntl.h (octal, as in fdinfo)
O_CLOEXEC = 0o2000000
EPOLLIN = 0x001  # include/uapi/linux/eventpoll.h
EPOLLEXCLUSIVE = 1 << 28
EPOLLET = 1 << 31
TCP_LISTEN = "0A"  # include/net/tcp_states.h, as printed in /proc/net/tcp
TCP_TIME_WAIT = "06"
IP_FREEBIND = 15  # include/uapi/linux/in.h (not in every Python's socket module)
# accept, accept4 as in /proc/PID/task/TID/syscall: syscall_64.tbl, asm-generic/unistd.h
SYSCALL_ACCEPT, SYSCALL_ACCEPT4 = (202, 242) if MACHINE == "aarch64" else (43, 288)


def _time_scale():
    """How many times slower than the development VM this machine runs (an emulated kernel: 8-20x):
    PARK_TIME_SCALE, or measured (the best of 5 runs of a fixed loop; below 3x it is noise, and 1)."""
    if os.environ.get("PARK_TIME_SCALE"):
        return max(1.0, float(os.environ["PARK_TIME_SCALE"]))
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        sum(range(300000))
        best = min(best, time.perf_counter() - t)
    factor = best / 0.006  # about 6 ms on the development VM
    return factor if factor >= 3 else 1.0


TIME_SCALE = _time_scale()  # every wait and time-out of the tests is multiplied by it


def scaled_for(seconds):
    """A --for duration that leaves a test's next steps as much time as `seconds` leaves them natively."""
    return "%ds" % max(seconds, round(seconds * TIME_SCALE))

CHILD_TIMEOUT = 60 * TIME_SCALE  # seconds for any park command
YAMA_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"
NOBODY = 65534

# ---------------------------------------------------------------------------------------------------------
# Fixture servers. Every one answers GET / with "pid=<pid> count=<n>" (n counts requests in memory), except
# http.server. The Python ones speak keep-alive HTTP/1.1 and wait for the client to close first, so no
# TIME_WAIT is left on the server's port (a bind without SO_REUSEADDR must then succeed while parked).

PY_COMMON = r'''
import os, signal, socket, struct, sys, threading, time

PORT = int(sys.argv[1])
_lock = threading.Lock()
_count = [0]


def next_count():
    with _lock:
        _count[0] += 1
        return _count[0]


def handle(conn, delay=0.0):
    """Answer requests on conn until the client closes (it closes first: no TIME_WAIT on PORT)."""
    conn.setblocking(True)
    conn.settimeout(30)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf.split(b"\r\n\r\n", 1)[1]
            if delay:
                time.sleep(delay)
            body = ("pid=%d count=%d\n" % (os.getpid(), next_count())).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body)
    except OSError:
        pass
    finally:
        conn.close()


def serve_in_thread(conn):
    threading.Thread(target=handle, args=(conn,), daemon=True).start()


def ready(extra=""):
    sys.stdout.write(("READY " + extra).strip() + "\n")
    sys.stdout.flush()


def loopback_listener():
    """The epoll fixtures' listener: 127.0.0.1:PORT, SO_REUSEADDR, backlog 128, non-blocking."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", PORT))
    s.listen(128)
    s.setblocking(False)
    return s


def serve_from(ep, lsock):
    """Wait in epoll ep and serve what lsock accepts, each accept logged to stderr (so a test can tell that
    nobody else's connection, park's probe, was served); a connection another worker took is no error."""
    while True:
        ep.poll()
        try:
            conn, _ = lsock.accept()
        except OSError:
            continue
        sys.stderr.write("accepted by %d\n" % os.getpid())
        sys.stderr.flush()
        handle(conn)


if os.environ.get("FIXTURE_TERM_EXIT"):
    # Proves SIGTERM was delivered *and* the process ran its handler (it was continued).
    signal.signal(signal.SIGTERM, lambda *a: os._exit(int(os.environ["FIXTURE_TERM_EXIT"])))
'''

PY_ASYNCIO = r'''
import asyncio, os, sys

count = 0


async def handle(reader, writer):
    global count
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            count += 1
            body = ("pid=%d count=%d\n" % (os.getpid(), count)).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
                         % len(body) + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


asyncio.run(main())
'''

NODE_HTTP = r'''
const http = require('http');
let count = 0;
const server = http.createServer((req, res) => {
  count += 1;
  const body = `pid=${process.pid} count=${count}\n`;
  res.writeHead(200, {'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body)});
  res.end(body);
});
server.keepAliveTimeout = 120000;  // the keep-alive test holds a connection across park/resume
server.listen(Number(process.argv[2]), '127.0.0.1', () => { process.stdout.write('READY\n'); });
'''

GO_HTTP = r'''
package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
)

var count int64

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("READY")
	err = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := atomic.AddInt64(&count, 1)
		fmt.Fprintf(w, "pid=%d count=%d\n", os.Getpid(), n)
	}))
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
'''

PY_BLOCKING = PY_COMMON + r'''
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(128)


def acceptor():
    while True:
        conn, _ = s.accept()  # blocking socket: this thread sits in accept4()
        serve_in_thread(conn)


t = threading.Thread(target=acceptor, daemon=True)
t.start()
ready()
t.join()  # the acceptor never returns; if accept fails, the thread dies and so does the process
'''

PY_PREFORK = PY_COMMON + r'''
import ctypes
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(128)
os.dup2(s.fileno(), 9)  # the same socket under a second fd number (dup2 leaves it without O_CLOEXEC)
children = []
for i in range(2):
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the parent
        if os.environ.get("FIXTURE_WORKER_UID"):  # like nginx: a root master, unprivileged workers
            os.setgroups([])
            os.setgid(int(os.environ["FIXTURE_WORKER_UID"]))
            os.setuid(int(os.environ["FIXTURE_WORKER_UID"]))
        lsock = s if i == 0 else socket.socket(fileno=9)  # child 0 accepts on fd s, child 1 on fd 9
        while True:
            conn, _ = lsock.accept()
            handle(conn)
    children.append(pid)
ready(" ".join(map(str, children)))
for _ in children:
    os.wait()  # a child that dies ends the parent too
'''

PY_BOUND_ONLY = PY_COMMON + r'''
import ctypes
# Like granian: the master keeps a socket bound to the port without listening (its workers inherit it);
# each worker listens on a SO_REUSEPORT socket of its own.
b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
b.bind(("127.0.0.1", PORT))
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", PORT))
    s.listen(16)
    while True:
        conn, _ = s.accept()
        handle(conn)
ready(str(pid))
os.wait()
'''

# Three workers, each with an epoll of its own watching the listener (EPOLLEXCLUSIVE, like nginx, unless
# FIXTURE_EPOLL=plain), registered in the order 2, 0, 1: neither pid order nor its reverse. Each accepted
# connection is logged to stderr, so a test can tell that nobody else's (park's probe) was served.
PY_EPOLL_WORKERS = PY_COMMON + r'''
import ctypes, select
FLAGS = select.EPOLLIN | (0 if os.environ.get("FIXTURE_EPOLL") == "plain" else select.EPOLLEXCLUSIVE)
s = loopback_listener()
children, pipes = [], []
for i in range(3):
    go, done = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the parent
        os.read(go[0], 1)
        ep = select.epoll()
        ep.register(s.fileno(), FLAGS)
        os.write(done[1], b"x")
        serve_from(ep, s)
    children.append(pid)
    pipes.append((go[1], done[0]))
for i in (2, 0, 1):
    os.write(pipes[i][0], b"g")
    os.read(pipes[i][1], 1)
ready(" ".join(map(str, children)))
for _ in children:
    os.wait()
'''

# One epoll made by the parent before it forks, shared by workers 0 and 1 (and the parent), registered last;
# worker 2 registers first, in an epoll of its own (EPOLLEXCLUSIVE) and in a second one (plain) that nobody
# waits on. Worker 2 gets the connections; a replay in pid order would give them to 0 or 1.
PY_EPOLL_SHARED = PY_COMMON + r'''
import ctypes, select
s = loopback_listener()
shared = select.epoll()
children = []
go, done = os.pipe(), os.pipe()
for i in range(3):
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the parent
        ep = shared
        if i == 2:
            ep, idle = select.epoll(), select.epoll()
            ep.register(s.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
            idle.register(s.fileno(), select.EPOLLIN)
            os.write(done[1], b"x")
        serve_from(ep, s)
    children.append(pid)
os.read(done[0], 1)
shared.register(s.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
ready(" ".join(map(str, children)))
for _ in children:
    os.wait()
'''

PY_PREFORK_EPOLL = PY_COMMON + r'''
# Like nginx: a master and two workers that wait in epoll on the shared listener (worker 1 under fd 9).
import ctypes, select
s = loopback_listener()
os.dup2(s.fileno(), 9)
children = []
for i in range(2):
    pid = os.fork()
    if pid == 0:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the parent
        lsock = s if i == 0 else socket.socket(fileno=9)
        ep = select.epoll()
        ep.register(lsock.fileno(), select.EPOLLIN)
        serve_from(ep, lsock)
    children.append(pid)
ready(" ".join(map(str, children)))
for _ in children:
    os.wait()  # a child that dies ends the parent too
'''

PY_DUAL_STACK = PY_COMMON + r'''
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
# Loopback only. Binding ::1 would make the kernel set V6ONLY=1 (inet6_bind does so for any specific
# non-mapped address), and :: is not allowed here, so the dual-stack socket binds the v4-mapped loopback,
# as Java does for 127.0.0.1: an AF_INET6 socket in /proc/net/tcp6 that serves IPv4, with V6ONLY=0.
s.bind(("::ffff:127.0.0.1", PORT))
s.listen(64)
ready()
while True:
    conn, _ = s.accept()
    serve_in_thread(conn)
'''

PY_TWO_SOCKETS = PY_COMMON + r'''
import selectors
s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s4.bind(("127.0.0.1", PORT))
s4.listen(32)
s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s6.bind(("::1", PORT))
s6.listen(32)
sel = selectors.DefaultSelector()
for ls in (s4, s6):
    ls.setblocking(False)
    sel.register(ls, selectors.EVENT_READ)
ready()
while True:
    for key, _ in sel.select():
        try:
            conn, _ = key.fileobj.accept()
        except BlockingIOError:
            continue
        serve_in_thread(conn)
'''

PY_OPTIONS = PY_COMMON + r'''
import select
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
SOL, TCP = socket.SOL_SOCKET, socket.IPPROTO_TCP
s.setsockopt(SOL, socket.SO_REUSEADDR, 0)
s.setsockopt(SOL, socket.SO_KEEPALIVE, 1)
s.setsockopt(TCP, socket.TCP_NODELAY, 1)
s.setsockopt(TCP, socket.TCP_KEEPIDLE, 77)
s.setsockopt(TCP, socket.TCP_KEEPINTVL, 11)
s.setsockopt(TCP, socket.TCP_KEEPCNT, 4)
s.setsockopt(TCP, socket.TCP_DEFER_ACCEPT, 3)
s.setsockopt(TCP, socket.TCP_FASTOPEN, 16)
s.setsockopt(TCP, socket.TCP_USER_TIMEOUT, 1234)
s.setsockopt(SOL, socket.SO_RCVBUF, 65536)
s.setsockopt(SOL, socket.SO_LINGER, struct.pack("ii", 1, 5))
s.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
s.bind(("127.0.0.1", PORT))
s.listen(7)
s.setblocking(False)
ep = select.epoll()
ep.register(s.fileno(), select.EPOLLIN | select.EPOLLET | select.EPOLLEXCLUSIVE)
ready()
while True:
    for fd, events in ep.poll():
        while True:  # edge-triggered: drain the queue
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                break
            serve_in_thread(conn)
'''

PY_SLOW = PY_COMMON + r'''
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(16)
ready()
while True:  # one connection at a time, 0.3 s per request: the others wait in the accept queue
    conn, _ = s.accept()
    handle(conn, delay=0.3)
'''

# One thread, busy in user code between accepts (no system call for ~0.5 s at a time): at park no thread
# sits in a system call, so park takes the leader to one of its own (the vdso's) instead.
PY_BUSY = PY_COMMON + r'''
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(16)
s.setblocking(False)
start = time.monotonic()
sum(range(1000000))
reps = max(1, int(0.5 / max(time.monotonic() - start, 1e-6)))
ready()
while True:
    for _ in range(reps):
        sum(range(1000000))
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        continue
    handle(conn)
'''

PY_BLOCKER = r'''
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
sys.stdout.write("READY\n")
sys.stdout.flush()
time.sleep(float(sys.argv[2]))
'''

# Runs as pid 1 of a new pid namespace (unshare --pid --fork --mount-proc) and runs park against itself.
PY_SECCOMP = PY_BLOCKING.replace("ready()", r"""
# An allow-everything seccomp filter: the process now shows "Seccomp: 2" in /proc/PID/status.
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
ret_allow = struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000)  # BPF_RET|BPF_K, SECCOMP_RET_ALLOW
buf = ctypes.create_string_buffer(ret_allow)
prog = struct.pack("=HxxxxxxQ", 1, ctypes.addressof(buf))  # struct sock_fprog
pbuf = ctypes.create_string_buffer(prog)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.addressof(pbuf), 0, 0) == 0, ctypes.get_errno()  # PR_SET_SECCOMP, FILTER
ready()
""")

PY_TRACER = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
if libc.ptrace(0x4206, int(sys.argv[1]), None, None) != 0:  # PTRACE_SEIZE: traced, but not stopped
    sys.exit("seize failed: %d" % ctypes.get_errno())
print("READY", flush=True)
time.sleep(600)
"""

PY_TWO_PORTS = PY_COMMON + r'''
# One process listening on two ports; each answer says which socket served it.
import selectors
PORT2 = int(sys.argv[2])
socks = {}
for name, port in (("A", PORT), ("B", PORT2)):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(32 if name == "A" else 16)
    s.setblocking(False)
    socks[s] = name
sel = selectors.EpollSelector()
for s in socks:
    sel.register(s, selectors.EVENT_READ)
ready()
while True:
    for key, _ in sel.select():
        try:
            conn, _ = key.fileobj.accept()
        except BlockingIOError:
            continue
        conn.setblocking(True)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        body = ("pid=%d count=%d sock=%s\n" % (os.getpid(), next_count(), socks[key.fileobj])).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        while conn.recv(4096):  # the client closes first: no TIME_WAIT on our ports
            pass
        conn.close()
'''

PY_ACCEPT_TERM = PY_COMMON + r'''
# One thread, blocked in accept(), with a Python SIGTERM handler (installed without SA_RESTART).
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(16)
signal.signal(signal.SIGTERM, lambda *a: os._exit(42))
ready()
while True:
    conn, _ = s.accept()
    handle(conn)
'''

PY_DROPS_PRIVILEGES = PY_COMMON + r'''
# Binds a privileged port as root, then runs as nobody (as servers that drop privileges do).
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(16)
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
ready()
while True:
    conn, _ = s.accept()
    serve_in_thread(conn)
'''

PY_BPF = PY_COMMON + r'''
# A classic BPF filter (accept everything) attached to the listener: park cannot read it back.
import ctypes
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(16)
prog = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0xFFFFFFFF))  # BPF_RET|BPF_K, accept all
s.setsockopt(socket.SOL_SOCKET, 26, struct.pack("=H6xQ", 1, ctypes.addressof(prog)))  # SO_ATTACH_FILTER
ready()
while True:
    conn, _ = s.accept()
    serve_in_thread(conn)
'''

PY_URING = PY_COMMON + r'''
# The only accept is an io_uring IORING_OP_ACCEPT (include/uapi/linux/io_uring.h), pending while idle: the
# ring holds its own reference to the listener, so closing the fd would leave the port listening.
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", PORT))
s.listen(16)
params = ctypes.create_string_buffer(120)  # struct io_uring_params
ring = libc.syscall(425, ctypes.c_uint(8), params)  # io_uring_setup
if ring < 0:
    sys.exit("io_uring_setup: %s" % os.strerror(ctypes.get_errno()))
sq_entries, cq_entries = struct.unpack_from("II", params, 0)
sq_off = struct.unpack_from("7I", params, 40)  # head tail ring_mask ring_entries flags dropped array
cq_off = struct.unpack_from("6I", params, 80)  # head tail ring_mask ring_entries overflow cqes
sq = mmap.mmap(ring, sq_off[6] + sq_entries * 4, offset=0)
cq = mmap.mmap(ring, cq_off[5] + cq_entries * 16, offset=0x8000000)
sqes = mmap.mmap(ring, sq_entries * 64, offset=0x10000000)
ready()
while True:
    tail = struct.unpack_from("I", sq, sq_off[1])[0]
    idx = tail & struct.unpack_from("I", sq, sq_off[2])[0]
    sqes[idx * 64:idx * 64 + 64] = struct.pack("BBHi", 13, 0, 0, s.fileno()).ljust(64, b"\0")  # ACCEPT
    struct.pack_into("I", sq, sq_off[6] + idx * 4, idx)
    struct.pack_into("I", sq, sq_off[1], tail + 1)
    if libc.syscall(426, ring, 1, 1, 1, None, 0) < 0:  # io_uring_enter(submit 1, wait 1, GETEVENTS)
        continue
    head = struct.unpack_from("I", cq, cq_off[0])[0]
    _, res, _ = struct.unpack_from("QiI", cq, cq_off[5] + (head & struct.unpack_from("I", cq, cq_off[2])[0]) * 16)
    struct.pack_into("I", cq, cq_off[0], head + 1)
    if res >= 0:
        serve_in_thread(socket.socket(fileno=res))
'''

ASGI_COUNTER = r'''
import os
count = 0


async def app(scope, receive, send):
    global count
    if scope["type"] != "http":
        return
    count += 1
    body = ("pid=%d count=%d\n" % (os.getpid(), count)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
'''

WSGI_COUNTER = r'''
import os
count = 0


def app(environ, start_response):
    global count
    count += 1
    body = ("pid=%d count=%d\n" % (os.getpid(), count)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

PUMA_RACKUP = r'''
count = 0
run lambda { |env| count += 1; [200, {"content-type" => "text/plain"}, ["pid=#{Process.pid} count=#{count}\n"]] }
'''

OLD_KERNEL = r'''
# Runs the command in argv[1:] as on a kernel older than 5.3/5.6: pidfd_open and pidfd_getfd fail with
# ENOSYS, through a seccomp filter (inherited by the keeper park forks).
import ctypes, os, struct, sys
ENOSYS, NR_pidfd_open, NR_pidfd_getfd = 38, 434, 438  # the same numbers on x86_64 and aarch64
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[os.uname().machine]  # include/uapi/linux/audit.h
prog = [(0x20, 0, 0, 4), (0x15, 0, 3, AUDIT_ARCH), (0x20, 0, 0, 0), (0x15, 2, 0, NR_pidfd_open),
        (0x15, 1, 0, NR_pidfd_getfd), (0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | ENOSYS)]
code = b"".join(struct.pack("=HBBI", *insn) for insn in prog)
buf = ctypes.create_string_buffer(code, len(code))
fprog = struct.pack("=H6xQ", len(prog), ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0):  # NO_NEW_PRIVS, SECCOMP
    sys.exit("seccomp: %s" % os.strerror(ctypes.get_errno()))
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
'''

PY_TAKES_FD = r'''
import ctypes, sys, time
# Holds a copy of another process's listener (as if it had been handed it), and does nothing with it.
libc = ctypes.CDLL(None, use_errno=True)
pidfd = libc.syscall(434, int(sys.argv[2]), 0)
fd = libc.syscall(438, pidfd, int(sys.argv[3]), 0)
assert fd >= 0, ctypes.get_errno()
print("READY %d" % fd, flush=True)
time.sleep(600)
'''

PY_PID1 = r'''
import json, os, socket, subprocess, sys
port, park = int(sys.argv[1]), sys.argv[2]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(8)
r = subprocess.run([sys.executable, park, str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   universal_newlines=True, timeout=60)
c = socket.create_connection(("127.0.0.1", port), timeout=5)  # the listener must still be there
s.settimeout(5)
a, _ = s.accept()
print(json.dumps({"pid": os.getpid(), "rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr}))
'''


# ---------------------------------------------------------------------------------------------------------
# Reading the kernel's view, independently of park

def parse_net_tcp(text, port, states=(TCP_LISTEN,)):
    """Rows of /proc/net/tcp{,6} text whose local port is `port` and state in `states`: [(inode, addr_hex, st)]."""
    rows = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        addr_hex, port_hex = f[1].rsplit(":", 1)
        if int(port_hex, 16) == port and (states is None or f[3] in states):
            rows.append((int(f[9]), addr_hex, f[3]))
    return rows


def parse_epoll_fdinfo(text):
    """Registrations in an eventpoll fdinfo text: [{tfd, events, data, ino}] (events/data/ino are hex there)."""
    regs = []
    for m in re.finditer(r"^tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:\s*\d+\s+"
                         r"ino:\s*([0-9a-f]+)", text, re.M):
        regs.append({"tfd": int(m.group(1)), "events": int(m.group(2), 16), "data": int(m.group(3), 16),
                     "ino": int(m.group(4), 16)})
    return regs


def parse_fdinfo_flags(text):
    """The `flags:` field of an fdinfo text (octal)."""
    m = re.search(r"^flags:\s*([0-7]+)", text, re.M)
    return int(m.group(1), 8)


def _read_text(path):
    with open(path) as f:
        return f.read()


def tcp_sockets(port, states=(TCP_LISTEN,)):
    """[(inode, addr_hex, state, 'tcp'|'tcp6')] for the local port in /proc/net/tcp and tcp6."""
    out = []
    for name in ("tcp", "tcp6"):
        try:
            text = _read_text("/proc/net/" + name)
        except FileNotFoundError:
            continue
        out.extend(r + (name,) for r in parse_net_tcp(text, port, states))
    return out


def listen_inodes(port):
    return {r[0] for r in tcp_sockets(port)}


def _fd_links(pid):
    """{fd: link} of one process; empty when it vanished."""
    links = {}
    try:
        names = os.listdir("/proc/%d/fd" % pid)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return links
    for name in names:
        try:
            links[int(name)] = os.readlink("/proc/%d/fd/%s" % (pid, name))
        except OSError:
            pass
    return links


def holders_of(inodes):
    """{pid: [(fd, inode)]} for every process holding one of the socket inodes."""
    want = {"socket:[%d]" % i: i for i in inodes}
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        for fd, link in _fd_links(pid).items():
            if link in want:
                found.setdefault(pid, []).append((fd, want[link]))
    return found


def ss_backlogs(port):
    """{inode: backlog} from `ss -ltnHe` (Send-Q of a listener is its backlog)."""
    r = subprocess.run(["ss", "-ltnHe", "sport = :%d" % port], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=10)
    out = {}
    for line in r.stdout.splitlines():
        m = re.search(r"\bino:(\d+)", line)
        if m:
            out[int(m.group(1))] = int(line.split()[2])
    return out


def ss_queue(port):
    """Sum of Recv-Q (accept-queue length) of the listeners on port."""
    r = subprocess.run(["ss", "-ltnH", "sport = :%d" % port], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=10)
    return sum(int(line.split()[1]) for line in r.stdout.splitlines() if line.strip())


def _libc_syscall():
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    return fn


def pidfd_getfd(pid, fd):
    """A duplicate of another process's fd (pidfd_getfd(2))."""
    pidfd = os.pidfd_open(pid)
    try:
        r = _libc_syscall()(ctypes.c_long(SYS_pidfd_getfd), ctypes.c_long(pidfd), ctypes.c_long(fd),
                            ctypes.c_long(0))
        if r < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return r
    finally:
        os.close(pidfd)


def socket_options(pid, fd):
    """Address and options of a socket of another process, read through a duplicate that is closed at once."""
    s = socket.socket(fileno=pidfd_getfd(pid, fd))
    try:
        SOL, TCP = socket.SOL_SOCKET, socket.IPPROTO_TCP
        name = s.getsockname()
        opts = {"family": int(s.family), "address": name[0], "port": name[1]}
        for key, level, opt in (("SO_ACCEPTCONN", SOL, socket.SO_ACCEPTCONN),
                                ("SO_REUSEADDR", SOL, socket.SO_REUSEADDR),
                                ("SO_REUSEPORT", SOL, socket.SO_REUSEPORT),
                                ("SO_KEEPALIVE", SOL, socket.SO_KEEPALIVE),
                                ("SO_RCVBUF", SOL, socket.SO_RCVBUF),
                                ("SO_SNDBUF", SOL, socket.SO_SNDBUF),
                                ("TCP_NODELAY", TCP, socket.TCP_NODELAY),
                                ("TCP_DEFER_ACCEPT", TCP, socket.TCP_DEFER_ACCEPT),
                                ("TCP_FASTOPEN", TCP, socket.TCP_FASTOPEN),
                                ("TCP_KEEPIDLE", TCP, socket.TCP_KEEPIDLE),
                                ("TCP_KEEPINTVL", TCP, socket.TCP_KEEPINTVL),
                                ("TCP_KEEPCNT", TCP, socket.TCP_KEEPCNT),
                                ("TCP_USER_TIMEOUT", TCP, socket.TCP_USER_TIMEOUT)):
            opts[key] = s.getsockopt(level, opt)
        opts["SO_LINGER"] = list(struct.unpack("ii", s.getsockopt(SOL, socket.SO_LINGER, 8)))
        if s.family == socket.AF_INET:
            opts["IP_FREEBIND"] = s.getsockopt(socket.IPPROTO_IP, IP_FREEBIND)
        else:
            opts["IPV6_V6ONLY"] = s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        return opts
    finally:
        s.close()


def epoll_registrations(pid):
    """[(epfd, {tfd, events, data, ino})] for every epoll instance the process holds."""
    regs = []
    for fd, link in sorted(_fd_links(pid).items()):
        if link != "anon_inode:[eventpoll]":
            continue
        try:
            text = _read_text("/proc/%d/fdinfo/%d" % (pid, fd))
        except OSError:
            continue
        regs.extend((fd, r) for r in parse_epoll_fdinfo(text))
    return regs


def linux_at_least(major, minor):
    import re
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (major, minor)


def snapshot(port):
    """Everything about the listeners on port that a resume must restore, without inode numbers.

    {pid: [{fd, socket, flags, nonblock, cloexec, backlog, epoll, options}]}; `socket` numbers the distinct
    sockets in order of appearance, so sharing (prefork, dup2) is compared but not the inode itself.
    """
    inodes = listen_inodes(port)
    backlogs = ss_backlogs(port)
    holders = holders_of(inodes)
    order = {}
    snap = {}
    for pid in sorted(holders):
        regs = epoll_registrations(pid)
        recs = []
        for fd, ino in sorted(holders[pid]):
            flags = parse_fdinfo_flags(_read_text("/proc/%d/fdinfo/%d" % (pid, fd)))
            recs.append({
                "fd": fd,
                "socket": order.setdefault(ino, len(order)),
                "flags": "0%o" % flags,
                "nonblock": bool(flags & O_NONBLOCK),
                "cloexec": bool(flags & O_CLOEXEC),
                "backlog": backlogs.get(ino),
                "epoll": sorted((epfd, r["tfd"], "0x%x" % r["events"], "0x%x" % r["data"])
                                for epfd, r in regs if r["ino"] == ino),
                "options": socket_options(pid, fd),
            })
        snap[pid] = recs
    return snap


def proc_state(pid):
    """The one-letter state of /proc/PID/stat, or None when the process is gone."""
    try:
        text = _read_text("/proc/%d/stat" % pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text.rsplit(")", 1)[1].split()[0]


def thread_states(pid):
    out = {}
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            out[int(tid)] = _read_text("/proc/%d/task/%s/stat" % (pid, tid)).rsplit(")", 1)[1].split()[0]
        except OSError:
            pass
    return out


def free_port():
    """A port below the ephemeral range that is free on 127.0.0.1 and ::1 (no client picks it meanwhile)."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        if tcp_sockets(port, states=None):
            continue
        ok = True
        for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            s = socket.socket(fam, socket.SOCK_STREAM)
            try:
                s.bind((host, port))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return port
    raise RuntimeError("no free port found")


def http_get(host, port, timeout=10):
    """(status, body) of GET / over a fresh connection, which the client closes first (timeout: seconds at
    native speed, multiplied by TIME_SCALE)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout * TIME_SCALE)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def parse_counter(body):
    m = re.search(r"pid=(\d+) count=(\d+)", body)
    return (int(m.group(1)), int(m.group(2))) if m else None


# ---------------------------------------------------------------------------------------------------------
# Test cases

class ParkTestCase(unittest.TestCase):
    """Helpers: a fresh PARK_HOME, the park CLI as a subprocess, processes that are killed by pid afterwards."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="park-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.home = self.new_home()
        self.env = self.env_for(self.home)

    def new_home(self):
        return tempfile.mkdtemp(prefix="home-", dir=self.tmp)

    def env_for(self, home):
        env = dict(os.environ)
        env.pop("PARK_DEBUG", None)
        env["PARK_HOME"] = home
        env["NO_COLOR"] = "1"
        return env

    def live_skip(self, reason):
        """Skip a live test, or fail it when PARK_REQUIRE_LIVE=1 (CI must not pass by skipping)."""
        if os.environ.get("PARK_REQUIRE_LIVE") == "1":
            self.fail("live test cannot run and PARK_REQUIRE_LIVE=1: " + reason)
        self.skipTest(reason)

    def require_park(self):
        if not os.path.exists(PARK):
            self.live_skip("park.py not found next to test_park.py")

    def check_output_form(self, r, what):
        """No traceback ever; a failure is `park: ...` plus an optional `  fix: ...` line on stderr."""
        self.assertNotIn("Traceback", r.stderr, what)
        self.assertNotIn("Traceback", r.stdout, what)
        if r.returncode == 1:
            lines = r.stderr.rstrip("\n").split("\n")
            self.assertTrue(lines[0].startswith("park: "), "%s: stderr does not start with 'park: '" % what)
            self.assertLessEqual(len(lines), 2, "%s: more than two stderr lines" % what)
            if len(lines) == 2:
                self.assertTrue(lines[1].startswith("  fix: "), "%s: second line is not '  fix: ...'" % what)
        elif r.returncode == 2:  # a usage error: the same one line and fix, never argparse's usage dump
            lines = r.stderr.rstrip("\n").split("\n")
            self.assertTrue(lines[0].startswith("park: "), "%s: usage error without a 'park: ' line" % what)
            self.assertEqual(len(lines), 2, "%s: a usage error is one line and its fix" % what)
            self.assertTrue(lines[1].startswith("  fix: "), "%s: no '  fix: ...' line" % what)

    def is_resumed(self, pid):
        """Resumed for good: running, and no longer in any state file (resume removes it after SIGCONT). The
        thread state alone is not enough: a thread single-stepping an injected call briefly shows R."""
        if proc_state(pid) in (None, "T", "t"):
            return False
        for path in glob.glob(os.path.join(self.home, "parked", "*.json")):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                return False
            if any(h.get("pid") == pid for h in data.get("holders", [])):
                return False
        return True

    def park(self, *args, expect=None, env=None, timeout=CHILD_TIMEOUT, via=None):
        """Run the park CLI; assert the output form and, if given, the exit code. via: a launcher script that
        runs park.py (e.g. under a seccomp filter)."""
        argv = [sys.executable] + ([via] if via else []) + [PARK] + [str(a) for a in args]
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                           env=env or self.env, timeout=timeout, stdin=subprocess.DEVNULL)
        what = "park %s -> %d\nstdout: %s\nstderr: %s" % (" ".join(argv[argv.index(PARK) + 1:]), r.returncode,
                                                          r.stdout, r.stderr)
        self.check_output_form(r, what)
        if expect is not None:
            self.assertEqual(r.returncode, expect, what)
        return r

    def park_list(self, env=None):
        r = self.park("list", "--json", expect=0, env=env)
        rows = json.loads(r.stdout)
        self.assertIsInstance(rows, list)
        return rows

    def entry(self, port, env=None):
        rows = [e for e in self.park_list(env) if e.get("port") == port]
        self.assertLessEqual(len(rows), 1, "several list entries for :%d" % port)
        return rows[0] if rows else None

    # -- processes -------------------------------------------------------------------------------------

    def kill_pid(self, pid):
        """SIGKILL one pid (a stopped process dies too); SIGCONT is harmless."""
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _stop_proc(self, proc):
        if proc.poll() is None:  # not reaped yet, so the pid is still ours (a stopped process counts)
            self.kill_pid(proc.pid)
        try:
            proc.wait(timeout=10 * TIME_SCALE)
        except subprocess.TimeoutExpired:
            pass
        if proc.stdout:
            proc.stdout.close()

    def spawn(self, argv, cwd=None, env=None):
        """Start a process (stdout piped for its READY line, stderr to a log); it is SIGKILLed at cleanup."""
        log = open(os.path.join(self.tmp, "log-%d.txt" % len(os.listdir(self.tmp))), "w+")
        self.addCleanup(log.close)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                cwd=cwd or self.tmp, env=env)
        proc.log = log
        self.addCleanup(self._stop_proc, proc)
        return proc

    def log_of(self, proc):
        proc.log.flush()
        proc.log.seek(0)
        return proc.log.read()[-3000:]

    def read_ready(self, proc, timeout=20):
        """Wait for the fixture's READY line; returns the words after READY."""
        buf = b""
        deadline = time.monotonic() + timeout * TIME_SCALE
        fd = proc.stdout.fileno()
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("no READY from %s within %ds; log: %s" % (proc.args, timeout, self.log_of(proc)))
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.fail("%s exited before READY (rc %s); log: %s"
                              % (proc.args, proc.poll(), self.log_of(proc)))
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        self.assertTrue(line.startswith("READY"), line)
        return line.split()[1:]

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def wait_serving(self, host, port, timeout=20):
        """Poll until GET / answers 200; returns the body."""
        deadline = time.monotonic() + timeout * TIME_SCALE
        while True:
            try:
                status, body = http_get(host, port, timeout=5)
                if status == 200:
                    return body
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.fail("nothing serves on %s:%d" % (host, port))
            time.sleep(0.05)

    def get_count(self, host, port):
        status, body = http_get(host, port)
        self.assertEqual(status, 200, body)
        c = parse_counter(body)
        self.assertIsNotNone(c, body)
        return c

    def wait_quiet(self, port, allow_time_wait=False, timeout=5):
        """Wait until only listeners (and, if allowed, TIME_WAIT) use the local port, as before a real park."""
        allowed = (TCP_LISTEN, TCP_TIME_WAIT) if allow_time_wait else (TCP_LISTEN,)
        deadline = time.monotonic() + timeout * TIME_SCALE
        while True:
            busy = [r for r in tcp_sockets(port, states=None) if r[2] not in allowed]
            if not busy:
                return
            if time.monotonic() > deadline:
                self.fail("connections on :%d did not close: %s" % (port, busy))
            time.sleep(0.02)

    def keeper_of(self, pid):
        """The keeper pid that the state files (of any PARK_HOME this test made) name for a parked pid."""
        for path in glob.glob(os.path.join(self.tmp, "*", "parked", "*.json")):
            try:
                with open(path) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue
            if any(h.get("pid") == pid for h in data.get("holders", [])):
                return (data.get("keeper") or {}).get("pid")
        return None

    def assert_parked(self, pid, keeper=None):
        """Every thread of the process is held in a ptrace stop (t) by park's keeper (the one its state file
        names, unless given), and none is stopped by a signal (T): a shell would see that as a stopped job."""
        keeper = keeper or self.keeper_of(pid)
        self.assertIsNotNone(keeper, "no state file names pid %d with its keeper" % pid)
        states = thread_states(pid)
        self.assertTrue(states and all(s == "t" for s in states.values()), "threads of %d: %s" % (pid, states))
        for tid in states:
            status = _read_text("/proc/%d/task/%d/status" % (pid, tid))
            tracer = int(status.split("TracerPid:", 1)[1].split()[0])
            self.assertEqual(tracer, keeper, "thread %d of %d is not held by the keeper %d" % (tid, pid, keeper))

    def wait_for(self, predicate, what, timeout=15):
        deadline = time.monotonic() + timeout * TIME_SCALE
        while not predicate():
            if time.monotonic() > deadline:
                self.fail("timed out waiting for " + what)
            time.sleep(0.05)

    def assert_running(self, pid):
        st = proc_state(pid)
        self.assertIsNotNone(st, "pid %d is gone" % pid)
        self.assertNotIn(st, ("T", "t", "Z", "X"), "pid %d is in state %s" % (pid, st))

    def assert_port_free(self, port, addrs, reuseaddr=False):
        """No listener on port, and a fresh socket binds each address and serves one HTTP request."""
        self.assertEqual(listen_inodes(port), set(), "a listener is still on :%d" % port)
        for fam, host in addrs:
            ls = socket.socket(fam, socket.SOCK_STREAM)
            try:
                if fam == socket.AF_INET6:
                    ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if reuseaddr:
                    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    ls.bind((host, port))
                except OSError as e:
                    self.fail("bind %s:%d (SO_REUSEADDR=%d) while parked: %s; sockets: %s"
                              % (host, port, reuseaddr, e, tcp_sockets(port, states=None)))
                ls.listen(4)
                ls.settimeout(10 * TIME_SCALE)
                result = {}

                def client():
                    try:
                        result["r"] = http_get(host, port)
                    except Exception as e:  # reported below
                        result["e"] = e

                t = threading.Thread(target=client)
                t.start()
                conn, _ = ls.accept()
                with conn:
                    conn.settimeout(10 * TIME_SCALE)
                    buf = b""
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(4096)
                        if not data:
                            break
                        buf += data
                    body = b"interim server\n"
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    while conn.recv(4096):  # let the client close first: no TIME_WAIT on the port
                        pass
                t.join(10 * TIME_SCALE)
                self.assertEqual(result.get("r"), (200, "interim server\n"), result.get("e"))
            finally:
                ls.close()

    # -- servers ---------------------------------------------------------------------------------------

    def start_python(self, source, port, env=None):
        path = self.write("fixture-%d.py" % port, source)
        proc = self.spawn([sys.executable, "-u", path, str(port)], env=env)
        words = self.read_ready(proc)
        return proc, words

    def start_asyncio(self, port):
        proc, _ = self.start_python(PY_ASYNCIO, port)
        self.wait_serving("127.0.0.1", port)
        return proc

    def start_node(self, port):
        if not os.path.exists("/usr/bin/node") and not shutil.which("node"):
            self.live_skip("node is not installed")
        path = self.write("server.js", NODE_HTTP)
        proc = self.spawn([shutil.which("node") or "/usr/bin/node", path, str(port)])
        self.read_ready(proc)
        self.wait_serving("127.0.0.1", port)
        return proc


class StaticTest(ParkTestCase):
    """Checks that need no live process."""

    def test_modules_parse_as_python_3_9(self):
        paths = [os.path.abspath(__file__), PARK, os.path.join(HERE, "park_darwin_arm64.py"),
                 os.path.join(HERE, "bench", "bench_park.py")] + sorted(glob.glob(os.path.join(HERE, "park_linux*.py")))
        for path in paths:
            with self.subTest(path=os.path.basename(path)):
                if not os.path.exists(path):
                    self.fail("%s is missing" % path)
                with open(path, encoding="utf-8") as f:
                    ast.parse(f.read(), filename=path, feature_version=(3, 9))

    def test_only_top_level_call_is_the_last_line(self):
        """A download cut short runs nothing: the top level only defines, except `if __name__ == ...`."""
        for path in (PARK,):  # the file that runs from stdin (`curl ... | python3 -`)
            with self.subTest(path=os.path.basename(path)):
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                for node in tree.body:
                    ok = isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef,
                                           ast.Assign, ast.AnnAssign))
                    ok = ok or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                    ok = ok or (node is tree.body[-1] and isinstance(node, ast.If) and path == PARK)
                    ok = ok or isinstance(node, ast.Try)  # optional imports
                    self.assertTrue(ok, "%s line %d: top-level %s" % (path, node.lineno, type(node).__name__))

    def test_helper_parsers_on_fake_proc_text(self):
        """The test's own /proc readers, on text captured from Linux 6.x."""
        tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
               "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4711 1\n"
               "   1: 0100007F:1F90 0100007F:C350 06 00000000:00000000 03:00000F8A 00000000     0        0 0 3\n"
               "   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4712 1\n")
        self.assertEqual(parse_net_tcp(tcp, 8080), [(4711, "0100007F", "0A")])
        self.assertEqual([r[2] for r in parse_net_tcp(tcp, 8080, states=None)], ["0A", "06"])
        fdinfo = ("pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n"
                  "tfd:        6 events:       19 data:     7fd700000006  pos:0 ino:1267 sdev:8\n"
                  "tfd:        3 events: 8000201d data:     c000100008  pos:0 ino:1268 sdev:8\n")
        self.assertEqual(parse_epoll_fdinfo(fdinfo), [
            {"tfd": 6, "events": 0x19, "data": 0x7fd700000006, "ino": 0x1267},
            {"tfd": 3, "events": 0x8000201d, "data": 0xc000100008, "ino": 0x1268}])
        self.assertEqual(parse_fdinfo_flags("pos:\t0\nflags:\t02004002\n"), 0o2004002)


def load_module(name, path):
    """Import a module of this checkout by path (never through sys.path)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class LogicTest(unittest.TestCase):
    """park's pure logic, on made-up inputs: no process is touched."""

    @classmethod
    def setUpClass(cls):
        cls.park = load_module("park_logic_under_test", PARK)

    def info(self, **kw):
        base = {"pid": 4242, "name": "node", "argv": ["node", "server.js"], "state": "S", "ppid": 1,
                "kernel": False, "start": 100, "uid": 1000, "tracer": 0, "seccomp": 0}
        base.update(kw)
        return base

    def test_ports_and_targets(self):
        p = self.park
        self.assertEqual(p.parse_port("3000"), 3000)
        self.assertEqual(p.parse_port(":65535"), 65535)
        for bad in ("0", "70000", "abc", "", ":", "-1", "3000x", " 80"):
            with self.subTest(bad=bad):
                with self.assertRaises(p.ParkError) as cm:
                    p.parse_port(bad)
                self.assertEqual(cm.exception.code, p.EXIT_USAGE)
        self.assertEqual(p.parse_target(":80"), ("port", 80))
        self.assertEqual(p.parse_target("123456"), ("any", 123456))

    def test_ptrace_refusal_for_every_yama_scope(self):
        """What a refused PTRACE_SEIZE says, per Yama scope, as a user and as root: what the scope means and a
        fix that works there (scope 3 cannot be lowered until reboot, so no `tee` is offered)."""
        p = self.park
        msg = "cannot stop pid 42 (ptrace: Operation not permitted)"
        cases = {
            (None, False): ("Operation not permitted)", "sudo park 8000"),
            (0, False): ("Operation not permitted)", "sudo park 8000"),
            (1, False): ("only a process's ancestors may trace it", "sudo park 8000, or for every program"),
            (2, False): ("only root may trace processes", "sudo park 8000, or for every program"),
            (3, False): ("cannot be lowered until reboot", "reboot"),
            (1, True): ("without CAP_SYS_PTRACE", "--cap-add=SYS_PTRACE"),
            (2, True): ("without CAP_SYS_PTRACE", "--cap-add=SYS_PTRACE"),
            (3, True): ("not even by root", "reboot"),
        }
        for (scope, root), (said, fix) in cases.items():
            with self.subTest(scope=scope, root=root):
                message, got = p.ptrace_refusal(msg, scope, "park", 8000, root)
                self.assertTrue(message.startswith(msg), message)
                self.assertIn(said, message)
                self.assertIn(fix, got)
                if scope == 3:
                    self.assertNotIn("tee", got)
                if scope in (1, 2) and not root:
                    self.assertIn("echo 0 | sudo tee /proc/sys/kernel/yama/ptrace_scope", got)
        self.assertIn("sudo park resume 8000", p.ptrace_refusal(msg, 1, "resume", 8000, False)[1])

    def test_time_wait_refusal_says_the_real_reason(self):
        """Linux before 6.0 cannot destroy TIME_WAIT entries (EOPNOTSUPP): no sudo hint, for root or anyone."""
        import errno as E
        p = self.park
        for why, root, kernel, sudo, old in ((E.EPERM, False, "6.1.0-30-amd64", True, False),
                                            (E.EPERM, False, "5.10.0-30-amd64", False, True),
                                            (E.EOPNOTSUPP, True, "5.10.0-30-amd64", False, True),
                                            (None, True, "6.18.0", False, False)):
            with self.subTest(why=why, root=root, kernel=kernel):
                message, fix = p.time_wait_refusal(3, 8000, "42", why, root, kernel)
                self.assertIn("3 TIME_WAIT connection(s) on :8000", message)
                self.assertIn("park resume 8000 --wait 60", fix)
                self.assertEqual("sudo" in fix, sudo, fix)
                self.assertEqual("before 6.0" in message, old, message)
        self.assertTrue(p._linux_at_least("6.0.0", (6, 0)))
        self.assertFalse(p._linux_at_least("4.18.0-553.el8_10.x86_64", (5, 6)))

    def test_refusals(self):
        p = self.park
        ok = self.info()
        self.assertIsNone(p.refusal(ok, 3000, 1000, False))
        self.assertIsNone(p.refusal(self.info(uid=0), 3000, 0, False), "root may park any user's server")
        cases = {
            "init": self.info(pid=1, name="systemd"),
            "kernel thread": self.info(kernel=True),
            "system services": self.info(name="sshd"),
            "another user": self.info(uid=0),
            "traced by pid 77": self.info(tracer=77),
            "seccomp": self.info(seccomp=2),
        }
        for words, info in cases.items():
            with self.subTest(words=words):
                why = p.refusal(info, 3000, 1000, False)
                self.assertIsNotNone(why)
                self.assertIn(words, why[0])
        self.assertIsNone(p.refusal(self.info(seccomp=2), 3000, 1000, True), "--force accepts seccomp")
        self.assertIn("sudo park 3000", p.refusal(self.info(uid=0), 3000, 1000, False)[1])

    def test_durations_and_commands(self):
        p = self.park
        self.assertEqual([p.format_duration(s) for s in (0, 59, 61, 3599, 3600, 5400)],
                         ["0s", "59s", "1m01s", "59m59s", "1h00m", "1h30m"])
        self.assertEqual(p.command_of({"argv": ["node", "a.js"], "name": "node"}), "node a.js")
        self.assertEqual(p.command_of({"argv": [], "name": "kworker"}), "[kworker]")
        py = {"argv": ["/root/.pyenv/versions/3.11.7/bin/python3", "-m", "http.server", "8000"], "name": "python3"}
        self.assertEqual(p.command_of(py), "python3 -m http.server 8000")
        self.assertEqual(p.command_of(py, width=20), "python3 -m http.s...")
        self.assertEqual(p.command_of({"argv": ["nginx: master process /usr/sbin/nginx"]}),
                         "nginx: master process /usr/sbin/nginx")
        long = {"argv": ["node", "x" * 300], "name": "node"}
        self.assertEqual(p.command_of(long), "node " + "x" * 300, "cut without a width")
        workers = [dict(py, pid=n) for n in (10, 11, 12)] + [{"pid": 13, "argv": ["node", "a.js"], "name": "node"}]
        self.assertEqual([pids for pids, _ in p.grouped(workers)], [[10, 11, 12], [13]])
        self.assertRegex(p.holders_command(workers), r"^python3 -m http\.server 8000 (\u00d7|x)3 \(\+1 other\)$")
        self.assertEqual(p.where(["::", 3000]), "[::]:3000")
        self.assertEqual(p.where(["127.0.0.1", 80]), "127.0.0.1:80")

    def use_home(self, path):
        old = os.environ.get("PARK_HOME")
        os.environ["PARK_HOME"] = path
        self.addCleanup(lambda: os.environ.__setitem__("PARK_HOME", old) if old else os.environ.pop("PARK_HOME"))

    def test_state_files_are_checked(self):
        """Every malformed variant of a real record is refused by read_state with one line naming the file."""
        p = self.park
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        self.use_home(os.path.join(d, "h"))
        good = good_record(p)
        p.write_state(dict(good))
        self.assertEqual(p.read_state(3000)["port"], 3000)
        for name, bad in bad_records(good):
            with self.subTest(variant=name):
                with open(p.state_path(3000), "wb") as f:
                    f.write(bad if isinstance(bad, bytes) else json.dumps(bad).encode())
                with self.assertRaises(p.ParkError) as cm:
                    p.read_state(3000)
                self.assertIn(p.state_path(3000), str(cm.exception))
                self.assertIn("rm ", cm.exception.fix)

    def test_state_is_private_and_atomic(self):
        p = self.park
        home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, home, True)
        self.use_home(os.path.join(home, "h"))
        p.write_state(dict(good_record(p), port=8))
        path = p.state_path(8)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(os.path.dirname(path)).st_mode & 0o777, 0o700)
        self.assertEqual(os.stat(os.path.join(home, "h")).st_mode & 0o777, 0o700)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["8.json"], "no temporary file left behind")
        with p.PortLock(8):
            with self.assertRaises(p.ParkError) as cm:
                with p.PortLock(8):
                    pass
            self.assertIn("another park command", str(cm.exception))


def good_record(p, port=3000, pid=4242, start=777):
    """A state record as park writes it, for a made-up process."""
    return {"kind": p.KIND, "schema": p.SCHEMA, "version": p.__version__, "port": port, "parked_at": 1.5,
            "holders": [{"pid": pid, "starttime": start, "uid": 0, "name": "node", "argv": ["node", "s.js"]}],
            "listeners": [{"inode": 99, "family": 2, "host": "127.0.0.1", "port": port,
                           "address": ["127.0.0.1", port], "backlog": 511, "nonblock": True,
                           "options": [[1, "SO_REUSEADDR", 2, "int", 1]],
                           "holders": [{"pid": pid, "fds": [{"fd": 18, "cloexec": True, "nonblock": True}],
                                        "epoll": [{"epfd": 13, "tfd": 18, "events": 25, "data": 18}]}]}],
            "seccomp": False, "keeper": {"pid": 4243, "starttime": 778}}


def bad_records(good):
    """(name, bytes or record) for every way park's own state file can be malformed."""
    import copy

    def v(name, edit):
        r = copy.deepcopy(good)
        edit(r)
        return name, r
    L = lambda r: r["listeners"][0]  # noqa: E731
    H = lambda r: r["listeners"][0]["holders"][0]  # noqa: E731
    return [
        ("garbage", b"\x00\xffnot json"), ("not an object", b"[1, 2]"), ("foreign", b'{"hello": 1}'),
        v("schema", lambda r: r.update(schema=99)),
        v("port of another file", lambda r: r.update(port=3001)),
        v("parked_at", lambda r: r.update(parked_at="x")),
        v("no holders", lambda r: r.update(holders=[])),
        v("holders not a list", lambda r: r.update(holders={"pid": 1})),
        v("holder pid text", lambda r: r["holders"][0].update(pid="x")),
        v("holder pid 1", lambda r: r["holders"][0].update(pid=1)),
        v("holder pid bool", lambda r: r["holders"][0].update(pid=True)),
        v("holder starttime missing", lambda r: r["holders"][0].pop("starttime")),
        v("holder uid negative", lambda r: r["holders"][0].update(uid=-1)),
        v("argv not strings", lambda r: r["holders"][0].update(argv=[1])),
        v("listener empty", lambda r: r.update(listeners=[{}])),
        v("listener family", lambda r: L(r).update(family=1)),
        v("listener address", lambda r: L(r).update(address=["not an ip", 3000])),
        v("listener address port", lambda r: L(r).update(address=["127.0.0.1", 22])),
        v("listener backlog", lambda r: L(r).update(backlog=-5)),
        v("listener nonblock", lambda r: L(r).update(nonblock="yes")),
        v("option shape", lambda r: L(r).update(options=[[1, "SO_REUSEADDR"]])),
        v("option kind", lambda r: L(r).update(options=[[1, "SO_REUSEADDR", 2, "ptr", 1]])),
        v("option value", lambda r: L(r).update(options=[[1, "SO_REUSEADDR", 2, "int", "x"]])),
        v("listener holder not a holder", lambda r: H(r).update(pid=1)),
        v("listener holder without fds", lambda r: H(r).update(fds=[])),
        v("fd negative", lambda r: H(r)["fds"][0].update(fd=-1)),
        v("fd huge", lambda r: H(r)["fds"][0].update(fd=1 << 40)),
        v("cloexec", lambda r: H(r)["fds"][0].update(cloexec=None)),
        v("epoll tfd not a recorded fd", lambda r: H(r)["epoll"][0].update(tfd=3)),
        v("epoll data over 64 bits", lambda r: H(r)["epoll"][0].update(data=1 << 64)),
        v("epoll events", lambda r: H(r)["epoll"][0].update(events=-1)),
        v("epoll wake order", lambda r: H(r)["epoll"][0].update(wake="first")),
        v("keeper", lambda r: r.update(keeper={"pid": "x"})),
        v("hold", lambda r: r.update(hold={"pid": 5, "starttime": 1, "sockets": [{}]})),
        v("timer", lambda r: r.update(timer={"until": "soon"})),
        v("ended", lambda r: r.update(ended={"reason": 5})),
        v("seccomp", lambda r: r.update(seccomp="no")),
    ]


class ArchTest(unittest.TestCase):
    """The per-architecture modules of the Linux engine, on made-up registers (they load on any machine)."""

    @classmethod
    def setUpClass(cls):
        cls.x86 = load_module("park_linux_x86_64_under_test", os.path.join(HERE, "park_linux_x86_64.py"))
        cls.arm = load_module("park_linux_aarch64_under_test", os.path.join(HERE, "park_linux_aarch64.py"))

    def test_both_offer_the_same_names(self):
        names = [{n for n in vars(m) if not n.startswith("_") and n not in ("ctypes", "errno")}
                 for m in (self.x86, self.arm)]
        self.assertEqual(names[0] ^ names[1], set() if "PTRACE_GETREGS" not in names[0] else
                         {"PTRACE_GETREGS", "PTRACE_SETREGS", "PTRACE_GETREGSET", "PTRACE_SETREGSET", "NT_PRSTATUS",
                          "NT_ARM_SYSTEM_CALL"})
        for m in (self.x86, self.arm):
            self.assertEqual((m.NR_pidfd_open, m.NR_pidfd_getfd), (434, 438))
            self.assertEqual(len(set(v for n, v in vars(m).items() if n.startswith("NR_"))),
                             len([n for n in vars(m) if n.startswith("NR_")]), "two calls with one number")

    def test_aarch64_registers(self):
        a = self.arm
        self.assertEqual(ctypes.sizeof(a.Regs), 35 * 8)
        r = a.Regs()
        r.pc, r.x0, r.x8, r.nr, r.pstate = 0x4008, 2 ** 64 - 4, 202, 202, 0x60000000
        self.assertTrue(a.native(r))
        self.assertEqual((r.nr, r.ret, r.number, r.called), (202, -4, 202, 202))
        r.nr = -1  # the kernel forgets the call in its signal code: syscallno -1, x8 still says which it was
        self.assertEqual((r.syscallno, r.called), (2 ** 64 - 1, 202))
        r.number = 57
        self.assertEqual((r.x8, r.called), (57, 57))
        self.assertIsNone(a.interrupted(r))
        r.pstate |= 0x10  # PSR_MODE32_BIT: an AArch32 task
        self.assertFalse(a.native(r))
        self.assertEqual(a.INSN, (0xD4000001).to_bytes(4, "little"))
        self.assertEqual(a.Regs.ARGS, tuple("x%d" % i for i in range(6)))

    def test_x86_64_registers(self):
        x = self.x86
        r = x.Regs()
        r.rip, r.orig_rax, r.rax, r.cs = 0x4002, 288, -512 & (2 ** 64 - 1), 0x33
        self.assertTrue(x.native(r))
        self.assertEqual((r.pc, r.nr, r.ret, r.number, r.called), (0x4002, 288, -512, -512, 288))
        self.assertEqual(x.interrupted(r).ret, -512, "accept4 interrupted: restarted as it was")
        r.orig_rax, r.rax = 232, -4 & (2 ** 64 - 1)
        self.assertEqual(x.interrupted(r).ret, -514, "epoll_wait's EINTR: entered again")
        self.assertEqual(r.ret, -4, "interrupted() changed its input")
        r.orig_rax = 2 ** 64 - 1
        self.assertIsNone(x.interrupted(r), "not in a call")
        r.cs = 0x23  # a 32-bit task
        self.assertFalse(x.native(r))


@unittest.skipUnless(LINUX, "the Linux backend")
class LinuxBackendLogicTest(unittest.TestCase):
    """The Linux backend's parsers and register arithmetic, on made-up inputs."""

    @classmethod
    def setUpClass(cls):
        cls.b = load_module("park_linux_under_test", BACKEND)

    def test_contract(self):
        for name in ("Error", "listeners", "process", "stopped", "inspect", "park", "resume", "time_wait",
                     "clear_time_wait", "ptrace_scope"):
            self.assertTrue(hasattr(self.b, name), name)
        self.assertEqual(ctypes.sizeof(self.b.arch.Regs), {"x86_64": 27 * 8, "aarch64": 35 * 8}[MACHINE])

    def test_registers_for_a_call(self):
        """The registers the engine gives a thread at the entry stop of its own accept4(5, ...): an injected
        close(7), its own call entered again, and the vdso fallback's getpid."""
        b = self.b
        a = b.arch
        r = a.Regs()
        r.pc, r.nr, r.number = 0x4000 + len(a.INSN), a.NR_socket, a.NR_socket
        setattr(r, a.Regs.ARGS[0], 5)
        c = b._call(r, a.NR_close, (7, -1))
        self.assertEqual((c.nr, c.number, c.called, c.pc), (a.NR_close, a.NR_close, a.NR_close, r.pc))
        self.assertEqual([getattr(c, n) for n in a.Regs.ARGS[:3]], [7, 2 ** 64 - 1, 0])
        back = b._enter_again(r)
        self.assertEqual((back.pc, back.number, back.nr, getattr(back, a.Regs.ARGS[0])), (0x4000, a.NR_socket, -1, 5))
        self.assertEqual(r.nr, a.NR_socket, "the input was changed")
        s = b._enter_at(r, 0x7000, a.NR_getpid)
        self.assertEqual((s.pc, s.number, s.nr), (0x7000, a.NR_getpid, -1))
        code = b"\x90" * 3 + a.INSN + b"\x00" * 5 + a.INSN
        self.assertEqual(b._find_insn(code), 3 if a.INSN_ALIGN == 1 else 12)
        self.assertTrue(b._is_insn(int.from_bytes(a.INSN + b"\xff" * 4, "little")))
        self.assertFalse(b._is_insn(None))

    def test_net_tcp(self):
        text = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
                "   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4711 1\n"
                "   1: 0100007F:0BB8 0100007F:C350 06 00000000:00000000 03:00000F8A 00000000     0        0 0 3\n")
        self.assertEqual(self.b.parse_net_tcp(text, socket.AF_INET, 3000), [(4711, "127.0.0.1", 3000, "0A")])
        six = ("  sl  local_address                         remote_address                        st\n"
               "   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:"
               "00000000 00:00000000 00000000  1000        0 99 1\n")
        self.assertEqual(self.b.parse_net_tcp(six, socket.AF_INET6, 3000), [(99, "::1", 3000, "0A")])
        self.assertEqual(self.b.parse_net_tcp(six, socket.AF_INET6, 3001), [])

    def test_fdinfo(self):
        text = ("pos:\t0\nflags:\t02\nmnt_id:\t16\n"
                "tfd:        6 events:       19 data:     7fd700000006  pos:0 ino:1267 sdev:8\n"
                "tfd:        3 events: 8000201d data:       c000100008\n")
        self.assertEqual(self.b.parse_fdinfo_epoll(text),
                         [(6, 0x19, 0x7FD700000006, 0x1267), (3, 0x8000201D, 0xC000100008, -1)])
        self.assertEqual(self.b.parse_fdinfo_flags("pos:\t0\nflags:\t02004002\n"), 0o2004002)

    def test_replay_order(self):
        """Plain registrations are added in reverse wake order (each goes to the front of the listener's
        wait queue), EPOLLEXCLUSIVE ones in wake order (each to the back); without ranks, as recorded."""
        def reg(pid, wake, exclusive):
            r = {"epfd": 3, "tfd": 4, "events": EPOLLIN | (EPOLLEXCLUSIVE if exclusive else 0), "data": pid}
            if wake is not None:
                r["wake"] = wake
            return (pid, r)
        regs = [reg(1, 2, True), reg(2, 0, True), reg(3, 1, True)]
        self.assertEqual([p for p, _ in self.b._replay_order(regs)], [2, 3, 1])
        regs = [reg(1, 1, False), reg(2, 2, False), reg(3, 0, False), reg(4, 4, True), reg(5, 3, True)]
        self.assertEqual([p for p, _ in self.b._replay_order(regs)], [2, 1, 3, 5, 4])
        regs = [reg(3, None, True), reg(1, None, True)]
        self.assertEqual(self.b._replay_order(regs), regs)
        self.assertEqual(len(self.b._syn_filter([])), 5 * 8)
        self.assertEqual(len(self.b._syn_filter([4000, 4001])), 8 * 8)

    def test_sockaddr_and_option_bytes(self):
        b = self.b
        self.assertEqual(b._sockaddr(socket.AF_INET, ["127.0.0.1", 3000]),
                         struct.pack("=H", 2) + b"\x0b\xb8" + bytes([127, 0, 0, 1]) + bytes(8))
        six = b._sockaddr(socket.AF_INET6, ["::1", 3000, 0, 0])
        self.assertEqual(len(six), 28)
        self.assertEqual(six[2:4], b"\x0b\xb8")
        self.assertEqual(six[8:24], socket.inet_pton(socket.AF_INET6, "::1"))
        self.assertEqual(b._option_bytes("int", 7), struct.pack("=i", 7))
        self.assertEqual(b._option_bytes("buf", 131072), struct.pack("=i", 65536), "the kernel doubles it back")
        self.assertEqual(b._option_bytes("str", "lo"), b"lo\0")
        self.assertEqual(b._option_bytes("linger", "0100000005000000"), bytes([1, 0, 0, 0, 5, 0, 0, 0]))


class CliTest(ParkTestCase):
    """The command line without live targets: version, usage errors, unknown targets, main(argv)."""

    def setUp(self):
        super().setUp()
        self.require_park()

    def test_version(self):
        r = self.park("--version", expect=0)
        self.assertRegex(r.stdout, r"^park \d+\.\d+\.\d+\n?$")

    def test_bad_input_is_a_usage_error(self):
        """Every usage error, of every command: `park: ...` and `  fix: ...` naming that command's usage, exit 2."""
        cases = {("0",): "park 3000", ("70000",): "park 3000", ("abc",): "park 3000", (":0",): "park 3000",
                 ("-5",): "park 3000", ("resume",): "park resume PORT|PID", ("release",): "park release PORT|PID",
                 ("swap", "3000"): "park swap PORT1 PORT2", ("swap", "3000", "3000"): "park swap",
                 ("resume", "3000", "--wait", "abc"): "park resume", ("3000", "--for", "-5s"): "--for 30s",
                 ("3000", "--for", "x"): "--for 30s", ("list", "--bogus"): "park list [--json]",
                 ("ui", "--bogus"): "park ui", ("release", "3000", "--force"): "--kill --force",
                 ("resume", "9" * 30): "park resume 3000", ("help", "nope"): "park help",
                 ("3000", "--bogus"): "park PORT"}
        for args, fix in cases.items():
            with self.subTest(args=args):
                r = self.park(*args, expect=2)
                self.assertEqual(r.stdout, "")
                self.assertIn(fix, r.stderr.split("\n")[1])
                self.assertNotIn("usage:", r.stderr)
        said = {("resume", "3000", "--wait", "abc"): "expected seconds or a duration",
                ("3000", "--for", "-5s"): "not a duration", ("70000",): "70000"}
        for args, words in said.items():
            with self.subTest(args=args):
                self.assertIn(words, self.park(*args, expect=2).stderr.split("\n")[0])

    def test_help(self):
        r = self.park("help", expect=0)
        self.assertIn("park resume", r.stdout)
        for command in ("park", "resume", "list", "release", "swap", "ui"):
            with self.subTest(command=command):
                r = self.park("help", command, expect=0)
                self.assertIn("usage: park", r.stdout)
        self.assertIn("--json", self.park("help", "list", expect=0).stdout)
        self.assertIn("--force", self.park("help", "resume", expect=0).stdout)
        main_help = self.park("--help", expect=0).stdout
        self.assertEqual(main_help, self.park("help", expect=0).stdout)
        for flag, says in (("--for DURATION", "resume by itself"), ("--hold", "clients wait"),
                           ("--force", "cannot be restored")):
            for text in (main_help, self.park("help", "park", expect=0).stdout):
                self.assertRegex(re.sub(r"\s+", " ", text), r"%s [^-]*%s" % (flag, says), "%s is not explained" % flag)
        self.assertRegex(re.sub(r"\s+", " ", self.park("list", "--help", expect=0).stdout), r"--json [^-]*JSON")
        self.assertRegex(re.sub(r"\s+", " ", self.park("resume", "--help", expect=0).stdout),
                         r"--force [^-]*socket options")

    def test_unknown_target_fails(self):
        port = free_port()
        for args in (["resume", "999999"], ["resume", str(port)], ["resume", ":%d" % port],
                     ["release", "999999"]):
            with self.subTest(args=args):
                self.park(*args, expect=1)

    def test_park_of_a_free_port_fails(self):
        self.park(free_port(), expect=1)

    def test_list_when_nothing_is_parked(self):
        self.assertEqual(self.park_list(), [])
        self.park("list", expect=0)

    def test_main_called_directly(self):
        """main(argv) returns the exit code (CPython zipapp style); usage errors go to stderr."""
        spec = importlib.util.spec_from_file_location("park_under_test", PARK)
        module = importlib.util.module_from_spec(spec)
        sys.modules["park_under_test"] = module
        self.addCleanup(sys.modules.pop, "park_under_test", None)
        spec.loader.exec_module(module)
        old = os.environ.get("PARK_HOME")
        os.environ["PARK_HOME"] = self.home
        self.addCleanup(lambda: os.environ.pop("PARK_HOME") if old is None
                        else os.environ.__setitem__("PARK_HOME", old))

        def call(argv):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = module.main(argv)
                except SystemExit as e:
                    rc = e.code
            return rc, out.getvalue(), err.getvalue()

        rc, out, err = call(["--version"])
        self.assertEqual((rc, out.strip()), (0, "park " + module.__version__), err)
        rc, out, err = call(["70000"])
        self.assertEqual(rc, 2)
        self.assertIn("park: ", err)
        self.assertNotIn("Traceback", err)
        rc, out, err = call(["list", "--json"])
        self.assertEqual((rc, json.loads(out)), (0, []), err)


class LiveTestCase(ParkTestCase):
    """Live tests: real servers, the real CLI."""

    def setUp(self):
        super().setUp()
        if not LINUX:
            self.live_skip("live tests need Linux on x86_64 or aarch64")
        self.require_park()
        if not shutil.which("ss") and not os.path.exists("/usr/bin/ss"):
            self.live_skip("ss (iproute2) is not installed")
        if not hasattr(os, "pidfd_open"):
            self.live_skip("os.pidfd_open is missing (Python < 3.9)")
        self.port = free_port()

    def start_prefork(self):
        """The prefork fixture (a master and its workers, all holding the listener), serving: (master, workers)."""
        proc, words = self.start_python(PY_PREFORK, self.port)
        children = [int(w) for w in words]
        for pid in children:
            self.addCleanup(self.kill_pid, pid)
        self.wait_serving("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        return proc.pid, children

    def park_ok(self, port, pids, host):
        """`park PORT`: exit 0, every holder (and thread) stopped, and stdout names pid, command, address, resume."""
        r = self.park(port, expect=0)
        for pid in pids:
            self.assert_parked(pid)
            self.assertIn(str(pid), r.stdout)
            comm = _read_text("/proc/%d/comm" % pid).strip()
            self.assertIn(comm, r.stdout, "the command is not named")
        self.assertIn(host, r.stdout, "the address is not named")
        self.assertIn("resume", r.stdout, "how to resume is not said")
        return r


class ServerCycleTest(LiveTestCase):
    """park → port really free → resume, for each way real servers hold a listener."""

    def cycle(self, pids, addrs, fetch_host, counter=True, reuseaddr=False, allow_time_wait=False, check=None):
        """One park/resume cycle; returns (before, after) snapshots after checking them equal."""
        port = self.port
        before_counts = {}
        if counter:
            pid, n = self.get_count(fetch_host, port)
            before_counts[pid] = n
        else:
            self.wait_serving(fetch_host, port)
        self.wait_quiet(port, allow_time_wait=allow_time_wait)
        before = snapshot(port)
        self.assertEqual(set(before), set(pids), "holders of :%d" % port)
        if check:
            check(before)
        self.park_ok(port, pids, fetch_host)
        self.assert_port_free(port, addrs, reuseaddr=reuseaddr)
        self.wait_quiet(port, allow_time_wait=allow_time_wait)
        self.park("resume", port, expect=0)
        for pid in pids:
            self.assert_running(pid)
        after = snapshot(port)
        self.assertEqual(after, before, "the listeners differ after resume")
        if counter:
            pid, n = self.get_count(fetch_host, port)
            self.assertIn(pid, pids)
            self.assertEqual(n, before_counts[pid] + 1, "the in-memory counter did not continue")
        else:
            self.wait_serving(fetch_host, port)
        self.assertEqual(snapshot(port), before, "the listeners changed after serving")
        return before, after

    def test_http_server_poll(self):
        root = os.path.join(self.tmp, "www")
        os.mkdir(root)
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write("park-test-index\n")
        proc = self.spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port)], cwd=root)
        body = self.wait_serving("127.0.0.1", self.port)
        self.assertIn("park-test-index", body)

        def check(snap):
            (rec,) = snap[proc.pid]
            self.assertEqual((rec["backlog"], rec["nonblock"], rec["epoll"]), (5, False, []))

        # http.server speaks HTTP/1.0 and closes first, leaving TIME_WAIT on the port: a bind without
        # SO_REUSEADDR legitimately fails then, so the free-port check binds with SO_REUSEADDR here.
        self.cycle([proc.pid], [(socket.AF_INET, "127.0.0.1")], "127.0.0.1", counter=False,
                   reuseaddr=True, allow_time_wait=True, check=check)
        body = self.wait_serving("127.0.0.1", self.port)
        self.assertIn("park-test-index", body)

    def test_python_busy_in_user_code(self):
        """A server that makes no system call for ~0.5 s at a time: park does not wait for one of its own
        (0.2 s at most), it takes the thread to the vdso's `syscall` instruction from an interrupt stop."""
        proc, _ = self.start_python(PY_BUSY, self.port)
        for _ in range(3):
            self.cycle([proc.pid], [(socket.AF_INET, "127.0.0.1")], "127.0.0.1")

    def test_asyncio_epoll(self):
        proc = self.start_asyncio(self.port)

        def check(snap):
            (rec,) = snap[proc.pid]
            self.assertTrue(rec["nonblock"])
            self.assertEqual(len(rec["epoll"]), 1, rec)

        self.cycle([proc.pid], [(socket.AF_INET, "127.0.0.1")], "127.0.0.1", check=check)

    def test_node_http_threads(self):
        proc = self.start_node(self.port)
        self.assertGreater(len(os.listdir("/proc/%d/task" % proc.pid)), 1, "node should run several threads")

        def check(snap):
            (rec,) = snap[proc.pid]
            self.assertEqual((rec["nonblock"], rec["cloexec"], len(rec["epoll"])), (True, True, 1), rec)

        self.cycle([proc.pid], [(socket.AF_INET, "127.0.0.1")], "127.0.0.1", check=check)

    def test_go_net_http(self):
        go = shutil.which("go") or ("/usr/bin/go" if os.path.exists("/usr/bin/go") else None)
        if not go:
            self.live_skip("go is not installed")
        src = self.write("main.go", GO_HTTP)
        exe = os.path.join(self.tmp, "gohttp")
        env = dict(os.environ, GO111MODULE="off", CGO_ENABLED="0", GOFLAGS="")
        if not env.get("HOME") and not env.get("GOCACHE"):
            env["GOCACHE"] = os.path.join(self.tmp, "gocache")
        b = subprocess.run([go, "build", "-o", exe, src], cwd=self.tmp, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
        self.assertEqual(b.returncode, 0, b.stdout)
        proc = self.spawn([exe, str(self.port)])
        self.read_ready(proc)
        self.wait_serving("127.0.0.1", self.port)

        def check(snap):
            (rec,) = snap[proc.pid]
            (reg,) = rec["epoll"]
            self.assertTrue(int(reg[2], 16) & EPOLLET, "Go registers edge-triggered: %s" % (reg,))
            self.assertNotEqual(int(reg[3], 16), rec["fd"], "Go's epoll data is a pointer")

        self.cycle([proc.pid], [(socket.AF_INET, "127.0.0.1")], "127.0.0.1", check=check)

    def test_thread_blocked_in_accept(self):
        proc, _ = self.start_python(PY_BLOCKING, self.port)
        self.wait_serving("127.0.0.1", self.port)

        def in_accept():
            for tid in os.listdir("/proc/%d/task" % proc.pid):
                try:
                    nr = _read_text("/proc/%d/task/%s/syscall" % (proc.pid, tid)).split()[0]
                except (OSError, IndexError):
                    continue
                if nr in (str(SYSCALL_ACCEPT), str(SYSCALL_ACCEPT4)):
                    return True
            return False

        def check(snap):
            (rec,) = snap[proc.pid]
            self.assertEqual((rec["nonblock"], rec["epoll"]), (False, []))
            deadline = time.monotonic() + 5 * TIME_SCALE
            while not in_accept():
                self.assertLess(time.monotonic(), deadline, "no thread of the fixture is blocked in accept")
                time.sleep(0.02)

        self.cycle([proc.pid], [(socket.AF_INET, "127.0.0.1")], "127.0.0.1", check=check)
        self.assertTrue(in_accept() or self.get_count("127.0.0.1", self.port))

    def test_prefork_shared_listener(self):
        self.prefork_cycle()

    def test_prefork_root_master_with_workers_of_another_user(self):
        if os.geteuid() != 0:
            self.live_skip("needs root to start workers as another user")
        children = self.prefork_cycle(dict(self.env, FIXTURE_WORKER_UID=str(NOBODY)))
        for pid in children:
            with open("/proc/%d/status" % pid) as f:
                self.assertIn("Uid:\t%d" % NOBODY, f.read())

    def prefork_cycle(self, env=None):
        proc, words = self.start_python(PY_PREFORK, self.port, env=env)
        children = [int(w) for w in words]
        for pid in children:
            self.addCleanup(self.kill_pid, pid)
        pids = [proc.pid] + children

        # Both children must have served before park, so that both counters can be seen to continue.
        first = parse_counter(self.wait_serving("127.0.0.1", self.port))
        last = {first[0]: first[1]}
        deadline = time.monotonic() + 10 * TIME_SCALE  # on a busy machine a child may reach accept() late
        while len(last) < 2 and time.monotonic() < deadline:
            pid, n = self.get_count("127.0.0.1", self.port)
            self.assertIn(pid, children)
            self.assertEqual(n, last.get(pid, 0) + 1)
            last[pid] = n
            time.sleep(0.01)
        self.assertEqual(set(last), set(children), "only one child ever accepted")
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        self.assertEqual(set(before), set(pids))
        for pid in pids:
            recs = before[pid]
            self.assertEqual(len(recs), 2, "each process holds the socket twice: %s" % recs)
            self.assertEqual({r["socket"] for r in recs}, {0}, "one socket shared by all")
            self.assertEqual(sorted(r["cloexec"] for r in recs), [False, True])
            self.assertIn(9, [r["fd"] for r in recs])

        self.park_ok(self.port, pids, "127.0.0.1")
        self.assert_port_free(self.port, [(socket.AF_INET, "127.0.0.1")])
        self.wait_quiet(self.port)
        self.park("resume", self.port, expect=0)
        for pid in pids:
            self.assert_running(pid)
        self.assertEqual(snapshot(self.port), before)
        seen = set()
        for _ in range(40):
            pid, n = self.get_count("127.0.0.1", self.port)
            self.assertIn(pid, children)
            self.assertEqual(n, last[pid] + 1, "per-child counter of %d did not continue" % pid)
            last[pid] = n
            seen.add(pid)
            if seen == set(children):
                break
        self.assertEqual(seen, set(children), "a child no longer accepts after resume")
        return children

    def test_dual_stack_v6only_off(self):
        proc, _ = self.start_python(PY_DUAL_STACK, self.port)
        self.wait_serving("127.0.0.1", self.port)

        def check(snap):
            (rec,) = snap[proc.pid]
            o = rec["options"]
            self.assertEqual((o["family"], o["address"], o["IPV6_V6ONLY"]),
                             (int(socket.AF_INET6), "::ffff:127.0.0.1", 0))

        _, after = self.cycle([proc.pid], [(socket.AF_INET, "127.0.0.1")], "127.0.0.1", check=check)
        self.assertEqual(after[proc.pid][0]["options"]["IPV6_V6ONLY"], 0)
        self.assertEqual([r[3] for r in tcp_sockets(self.port)], ["tcp6"], "the listener is no longer AF_INET6")

    def test_two_sockets_one_port(self):
        proc, _ = self.start_python(PY_TWO_SOCKETS, self.port)
        self.wait_serving("127.0.0.1", self.port)
        self.wait_serving("::1", self.port)
        v4_before = self.get_count("127.0.0.1", self.port)

        def check(snap):
            recs = snap[proc.pid]
            self.assertEqual(len(recs), 2)
            fams = {r["options"]["family"]: r for r in recs}
            self.assertEqual(set(fams), {int(socket.AF_INET), int(socket.AF_INET6)})
            self.assertEqual(fams[int(socket.AF_INET6)]["options"]["IPV6_V6ONLY"], 1)
            self.assertTrue(all(len(r["epoll"]) == 1 for r in recs), recs)

        self.cycle([proc.pid], [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], "::1", check=check)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.assertEqual(pid, proc.pid)
        self.assertGreater(n, v4_before[1], "IPv4 is not served after resume")

    def test_unusual_socket_options(self):
        proc, _ = self.start_python(PY_OPTIONS, self.port)
        self.wait_serving("127.0.0.1", self.port)

        def check(snap):
            (rec,) = snap[proc.pid]
            o = rec["options"]
            want = {"SO_REUSEADDR": 0, "SO_KEEPALIVE": 1, "TCP_NODELAY": 1, "TCP_KEEPIDLE": 77, "TCP_KEEPINTVL": 11,
                    "TCP_KEEPCNT": 4, "TCP_DEFER_ACCEPT": 3, "TCP_FASTOPEN": 16, "TCP_USER_TIMEOUT": 1234,
                    "SO_RCVBUF": 131072, "SO_LINGER": [1, 5], "IP_FREEBIND": 1}
            self.assertEqual({k: o[k] for k in want}, want)
            self.assertEqual((rec["backlog"], rec["nonblock"]), (7, True))
            (reg,) = rec["epoll"]
            self.assertEqual(int(reg[2], 16) & (EPOLLIN | EPOLLET | EPOLLEXCLUSIVE), EPOLLIN | EPOLLET | EPOLLEXCLUSIVE)

        self.cycle([proc.pid], [(socket.AF_INET, "127.0.0.1")], "127.0.0.1", check=check)


class BehaviourTest(LiveTestCase):
    """What a user sees around park and resume."""

    def test_keep_alive_connection_survives(self):
        proc = self.start_node(self.port)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10 * TIME_SCALE)
        self.addCleanup(conn.close)
        conn.request("GET", "/")
        resp = conn.getresponse()
        pid, n = parse_counter(resp.read().decode())
        local = conn.sock.getsockname()
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        self.park("resume", self.port, expect=0)
        conn.request("GET", "/")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertEqual(parse_counter(resp.read().decode()), (proc.pid, n + 1))
        self.assertEqual(conn.sock.getsockname(), local, "the keep-alive connection was replaced")

    def test_queued_clients_are_served(self):
        proc, _ = self.start_python(PY_SLOW, self.port)
        self.wait_serving("127.0.0.1", self.port)  # count 1
        self.wait_quiet(self.port)
        results = [None] * 4

        def client(i):
            try:
                results[i] = http_get("127.0.0.1", self.port, timeout=30)
            except Exception as e:  # a reset shows up here
                results[i] = e

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 3 * TIME_SCALE
        while ss_queue(self.port) < 2:  # one is being served, the others wait in the accept queue
            self.assertLess(time.monotonic(), deadline, "clients never queued")
            time.sleep(0.01)
        r = self.park_ok(self.port, [proc.pid], "127.0.0.1")
        self.assertNotIn("reset", r.stdout, "park reports reset clients")
        self.park("resume", self.port, expect=0)
        for t in threads:
            t.join(40 * TIME_SCALE)
        for r in results:
            self.assertIsInstance(r, tuple, "a queued client failed: %r" % (r,))
            self.assertEqual(r[0], 200)
        self.assertEqual(sorted(parse_counter(r[1])[1] for r in results), [2, 3, 4, 5])

    def test_resume_refused_while_port_taken(self):
        proc = self.start_asyncio(self.port)
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        blocker, _ = self.start_python(PY_BLOCKER.replace("float(sys.argv[2])", "3600"), self.port)
        r = self.park("resume", self.port, expect=1)
        self.assertIn(str(blocker.pid), r.stderr, "the holder of the port is not named")
        self.assert_parked(proc.pid)
        self.assertEqual(self.entry(self.port)["status"], "parked")
        self._stop_proc(blocker)
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (proc.pid, n + 1))

    def test_resume_wait_until_port_free(self):
        proc = self.start_asyncio(self.port)
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        path = self.write("blocker.py", PY_BLOCKER)
        blocker = self.spawn([sys.executable, "-u", path, str(self.port), "1.0"])
        self.read_ready(blocker)
        t0 = time.monotonic()
        self.park("resume", self.port, "--wait", "5", expect=0)
        self.assertGreater(time.monotonic() - t0, 0.5, "resume did not wait for the port")
        self.assertEqual(blocker.wait(timeout=5 * TIME_SCALE), 0)
        self.assert_running(proc.pid)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (proc.pid, n + 1))

    def test_resume_wait_shows_who_holds_the_port_and_says_it_timed_out(self):
        """On a terminal, resume --wait keeps one line on stderr, rewritten in place, naming the holder (pid and
        command) and the time waited; when the wait runs out it says it timed out, and the fix names the holder's
        pid and a longer wait. Without a terminal: no live line, the same two-line error."""
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        blocker, _ = self.start_python(PY_BLOCKER.replace("float(sys.argv[2])", "3600"), self.port)
        term = Terminal(self, "bash", env=self.env)
        mark = term.mark()
        term.type("%s %s resume %d --wait 3; echo rc=$?\n" % (sys.executable, PARK, self.port))
        live = rb"\r  waiting (\d) s of 3 s for :%d, held by pid %d \(python3 -u [^)]*\)\x1b\[K" % (self.port,
                                                                                             blocker.pid)
        term.expect(live.decode(), since=mark)  # a str is a regex to expect(), bytes are literal
        term.expect(b"rc=1", since=mark)
        out = term.buf[mark:]
        self.assertGreater(len(re.findall(live, out)), 2, "the line is not rewritten while it waits")
        self.assertEqual({m.group(1) for m in re.finditer(live, out)} >= {b"0", b"1", b"2"}, True,
                         "the time waited does not count up")
        error = out[out.rindex(b"\r\x1b[K") + 4:].decode()
        self.assertTrue(error.startswith("park: cannot resume: timed out after 3 s waiting for :%d, in use by pid %d"
                                         % (self.port, blocker.pid)), error)
        self.assertIn("fix: stop it (kill %d), then park resume %d; or wait longer: park resume %d --wait 60"
                      % (blocker.pid, self.port, self.port), error)
        self.assert_parked(proc.pid)
        r = self.park("resume", self.port, "--wait", "1", expect=1)
        self.assertNotIn("  waiting", r.stderr)
        self.assertIn("timed out after 1 s", r.stderr)
        self.assertIn("kill %d" % blocker.pid, r.stderr)
        self.assert_parked(proc.pid)

    def test_resume_over_time_wait_without_reuseaddr(self):
        """A listener without SO_REUSEADDR comes back although the interim server left TIME_WAIT on the port."""
        proc, _ = self.start_python(PY_OPTIONS, self.port)
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with ls:
            ls.settimeout(5)
            ls.bind(("127.0.0.1", self.port))
            ls.listen(1)
            c = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            with c:
                a, _ = ls.accept()
                a.close()  # the interim server closes first: TIME_WAIT on 127.0.0.1:PORT
                c.recv(10)
        deadline = time.monotonic() + 5 * TIME_SCALE
        while not any(r[2] == TCP_TIME_WAIT for r in tcp_sockets(self.port, states=None)):
            self.assertLess(time.monotonic(), deadline, "no TIME_WAIT was left")
            time.sleep(0.02)
        if linux_at_least(6, 0):
            self.park("resume", self.port, expect=0)  # root destroys the entries (SOCK_DESTROY)
        else:  # tcp_abort learnt TIME_WAIT in 6.0: park says so, and --wait outlasts the entries
            r = self.park("resume", self.port, expect=1)
            self.assertIn("Linux before 6.0 cannot clear them", r.stderr)
            self.assertIn("--wait 60", r.stderr)
            self.assertNotIn("sudo", r.stderr)
            self.park("resume", self.port, "--wait", "90", expect=0, timeout=CHILD_TIMEOUT + 90)
        self.assertEqual(snapshot(self.port), before)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (proc.pid, n + 1))

    def test_sigcont_while_parked_keeps_it_parked(self):
        """SIGCONT (`fg`, `bg`, kill -CONT) does not undo a park: the keeper's ptrace stops are not job control.
        The process stays held, the port free, and resume brings it back as usual."""
        proc = self.start_asyncio(self.port)
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        os.kill(proc.pid, signal.SIGCONT)
        time.sleep(1.0)  # a few keeper ticks
        self.assert_parked(proc.pid)
        self.assertEqual(self.entry(self.port)["status"], "parked")
        self.assertEqual(listen_inodes(self.port), set())
        self.park("resume", self.port, expect=0)
        self.assert_running(proc.pid)
        self.assertEqual(snapshot(self.port), before)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (proc.pid, n + 1))

    def test_resume_by_pid_and_colon_port(self):
        proc = self.start_asyncio(self.port)
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(":%d" % self.port, expect=0)
        self.assert_parked(proc.pid)
        self.park("resume", proc.pid, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (proc.pid, n + 1))
        self.assertIsNone(self.entry(self.port))

    def test_list_json_and_release(self):
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        time.sleep(0.2)
        e = self.entry(self.port)
        self.assertIsNotNone(e, "the parked port is not listed")
        self.assertEqual((e["port"], e["pids"], e["status"]), (self.port, [proc.pid], "parked"))
        self.assertIsInstance(e["command"], str)
        self.assertTrue(e["command"])
        self.assertTrue(isinstance(e["parked_for"], (int, float)) and not isinstance(e["parked_for"], bool))
        self.assertGreaterEqual(e["parked_for"], 0)
        r = self.park("list", expect=0)
        self.assertIn(str(self.port), r.stdout)
        r = self.park("release", self.port, expect=0)
        self.assertIn("end it with: kill %d" % proc.pid, r.stdout)
        self.assert_running(proc.pid)
        self.assertEqual(listen_inodes(self.port), set(), "release must not recreate the listener")

    def test_a_released_process_is_listed_until_it_exits(self):
        """After release the process runs without its port: list, park and --json show it as released, with
        how to end it, and resume says why it cannot; once it exits, it is gone from all of them."""
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        self.park("release", self.port, expect=0)
        e = self.entry(self.port)
        self.assertIsNotNone(e, "the released process is not listed")
        self.assertEqual((e["status"], e["pids"], e["keeper"]), ("released", [proc.pid], None))
        self.assertIn("kill %d" % proc.pid, e["ended"])
        self.assertEqual(e["holders"][0]["argv"][-1], str(self.port))
        for args in (("list",), ()):
            r = self.park(*args, expect=0)
            row = [l for l in r.stdout.splitlines() if l.startswith(":%d " % self.port)]
            self.assertEqual(len(row), 1, r.stdout)
            self.assertEqual(row[0].split()[1], str(proc.pid))
            self.assertIn("released", row[0].split())
            self.assertIn("end it with: kill %d" % proc.pid, r.stdout)
        r = self.park("resume", self.port, expect=1)
        self.assertIn("pid %d was released from :%d" % (proc.pid, self.port), r.stderr)
        self.assertIn("fix: kill %d" % proc.pid, r.stderr)
        # a note whose pid now belongs to another process (this test's, with another start time) is not shown
        other = free_port()
        note = dict(json.load(open(os.path.join(self.home, "released", "%d.%d.json" % (self.port, proc.pid)))),
                    port=other)
        note["holders"] = [dict(note["holders"][0], pid=os.getpid())]
        fake = os.path.join(self.home, "released", "%d.%d.json" % (other, os.getpid()))
        with open(os.open(fake, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump(note, f)
        self.assertIsNone(self.entry(other), "a reused pid is listed as released")
        self.assertFalse(os.path.exists(fake), "the note of a reused pid is kept")
        # the same process, released more than an hour ago (a copy of its note, dated back): no longer shown
        old = dict(json.load(open(os.path.join(self.home, "released", "%d.%d.json" % (self.port, proc.pid)))),
                   port=other)
        old["released_at"] -= 3601
        stale = os.path.join(self.home, "released", "%d.%d.json" % (other, proc.pid))
        with open(os.open(stale, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump(old, f)
        self.assertIsNone(self.entry(other), "a note older than an hour is listed")
        self.assertFalse(os.path.exists(stale), "a note older than an hour is kept")
        self.assertIsNotNone(self.entry(self.port))
        self.kill_pid(proc.pid)
        proc.wait(timeout=10 * TIME_SCALE)
        self.assertEqual(self.park_list(), [], "an exited released process is still listed")
        self.assertNotIn(":%d " % self.port, self.park(expect=0).stdout)
        self.assertEqual(os.listdir(os.path.join(self.home, "released")), [])

    def test_release_kill_sends_sigterm(self):
        env = dict(os.environ, FIXTURE_TERM_EXIT="42")
        proc, _ = self.start_python(PY_BLOCKING, self.port, env=env)
        self.wait_serving("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        self.park("release", self.port, "--kill", expect=0)
        # 42 comes from the fixture's SIGTERM handler: the stopped process got SIGTERM and ran again.
        self.assertEqual(proc.wait(timeout=10 * TIME_SCALE), 42)
        self.assertIsNone(self.entry(self.port))

    def test_release_kill_force_sends_sigkill(self):
        env = dict(os.environ, FIXTURE_TERM_EXIT="42")
        proc, _ = self.start_python(PY_BLOCKING, self.port, env=env)
        self.wait_serving("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        self.park("release", proc.pid, "--kill", "--force", expect=0)
        self.assertEqual(proc.wait(timeout=10 * TIME_SCALE), -signal.SIGKILL)
        self.assertIsNone(self.entry(self.port))

    def test_list_prune_after_the_process_is_gone(self):
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        self.kill_pid(proc.pid)
        proc.wait(timeout=10 * TIME_SCALE)
        self.assertEqual(self.entry(self.port)["status"], "gone")
        self.park("list", "--prune", expect=0)
        self.assertIsNone(self.entry(self.port), "prune kept a gone entry")

    def test_park_started_with_stdin_and_stdout_closed(self):
        """Some daemons and CI runners start commands with fds 0-2 closed: park still parks and resumes."""
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        r = subprocess.run(["sh", "-c", 'exec "$@" 0<&- 1>&-', "sh", sys.executable, PARK, str(self.port)],
                           stderr=subprocess.PIPE, universal_newlines=True, env=self.env, timeout=CHILD_TIMEOUT)
        self.assertEqual((r.returncode, r.stderr), (0, ""))
        self.assert_parked(proc.pid)
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))

    def test_park_alone_shows_parked_and_listening(self):
        other = free_port()
        a, b = self.start_asyncio(self.port), self.start_asyncio(other)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        r = self.park(expect=0)
        rows = {l.split()[0]: l.split() for l in r.stdout.splitlines() if l.startswith(":")}
        self.assertEqual(rows[":%d" % self.port][1:4], [str(a.pid), "parked", str(self.keeper_of(a.pid))])
        self.assertEqual(rows[":%d" % other][1:4], [str(b.pid), "listening", "-"])
        self.park("resume", self.port, expect=0)

    def test_resume_of_a_listening_server(self):
        """Resume again after a resume: already listening, exit 0. A server park never parked: exit 1."""
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        r = self.park("resume", self.port, expect=1)
        self.assertIn("already listening, by pid %d" % proc.pid, r.stderr)
        self.park(self.port, expect=0)
        self.park("resume", self.port, expect=0)
        r = self.park("resume", self.port, expect=0)
        self.assertIn(":%d is already listening: pid %d" % (self.port, proc.pid), r.stdout)

    def test_a_free_port_names_the_ports_that_listen(self):
        proc = self.start_asyncio(self.port)
        r = self.park(self.port + 1, expect=1)
        self.assertIn("nothing is listening on :%d" % (self.port + 1), r.stderr)
        self.assertIn("fix: park %d  (listening now: :%d" % (self.port, self.port), r.stderr)

    def test_pid_reuse_is_refused(self):
        """With its keeper gone, resume goes by the state file alone: a pid whose start time differs from the
        recorded one is another process, and is left alone."""
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.park_ok(self.port, [proc.pid], "127.0.0.1")
        self.kill_pid(self.keeper_of(proc.pid))
        self.wait_for(lambda: (self.entry(self.port) or {}).get("status") == "running", "the keeper to be gone")
        path = self.state_file_of(proc.pid)
        with open(path) as f:
            state = json.load(f)
        for h in state["holders"]:
            if h["pid"] == proc.pid:
                h["starttime"] = (int(h["starttime"]) + 1000 if not isinstance(h["starttime"], str)
                                  else str(int(h["starttime"]) + 1000))
        with open(path, "w") as f:
            json.dump(state, f)
        r = self.park("resume", self.port, expect=1)
        self.assertIn("pid %d is now a different process" % proc.pid, r.stderr)
        self.assert_running(proc.pid)
        self.assertEqual(listen_inodes(self.port), set())

    def state_file_of(self, pid, home=None):
        """The state JSON under PARK_HOME whose `holders` name pid."""
        found = []
        for path in glob.glob(os.path.join(home or self.home, "**", "*.json"), recursive=True):
            try:
                with open(path) as f:
                    data = json.load(f)
            except ValueError:
                continue
            if isinstance(data, dict) and any(h.get("pid") == pid for h in data.get("holders", [])):
                found.append(path)
        self.assertEqual(len(found), 1, "state files naming pid %d: %s" % (pid, found))
        return found[0]

    def test_damaged_state_file(self):
        for name, content in (("garbage", b"\x00\xff{not json at all"), ("foreign", b'{"hello": 1}\n')):
            with self.subTest(state=name):
                port = free_port()
                home = self.new_home()
                env = self.env_for(home)
                proc = self.start_asyncio(port)
                self.wait_quiet(port)
                self.park(port, expect=0, env=env)
                keeper = self.keeper_of(proc.pid)
                path = self.state_file_of(proc.pid, home)
                with open(path, "wb") as f:
                    f.write(content)
                for args in (["list"], ["resume", str(port)]):
                    r = self.park(*args, expect=1, env=env)
                    self.assertIn(os.path.basename(path), r.stderr.splitlines()[0], "the file is not named")
                self.assert_parked(proc.pid, keeper)
                self.kill_pid(proc.pid)  # its keeper sees it die and ends

    def test_concurrent_parks_one_wins(self):
        proc = self.start_asyncio(self.port)
        _, n = self.get_count("127.0.0.1", self.port)
        for round_ in range(3):
            with self.subTest(round=round_):
                self.wait_quiet(self.port)
                argv = [sys.executable, PARK, str(self.port)]
                procs = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, universal_newlines=True, env=self.env)
                         for _ in range(2)]
                results = []
                for p in procs:
                    try:
                        out, err = p.communicate(timeout=CHILD_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        self.kill_pid(p.pid)
                        out, err = p.communicate()
                    results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
                for r in results:
                    self.check_output_form(r, "concurrent park: %r" % (r,))
                self.assertEqual(sorted(r.returncode for r in results), [0, 1], results)
                self.assert_parked(proc.pid)
                self.assertEqual(self.entry(self.port)["pids"], [proc.pid])
                self.park("resume", self.port, expect=0)
                n += 1
                self.assertEqual(self.get_count("127.0.0.1", self.port), (proc.pid, n))

    def test_pid_1_is_refused(self):
        """A server that is pid 1 (of its own pid namespace, where park runs too) is never stopped."""
        if os.geteuid() != 0 or not shutil.which("unshare"):
            self.live_skip("needs root and unshare(1) for a private pid namespace")
        path = self.write("pid1.py", PY_PID1)
        proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, path,
                                 str(self.port), PARK], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True, env=self.env)

        def stop_namespace():
            try:
                kids = _read_text("/proc/%d/task/%d/children" % (proc.pid, proc.pid)).split()
            except OSError:
                kids = []
            for k in kids:
                self.kill_pid(int(k))  # pid 1 of the namespace; its death ends the namespace
            self._stop_proc(proc)

        self.addCleanup(stop_namespace)
        try:
            out, err = proc.communicate(timeout=90 * TIME_SCALE)
        except subprocess.TimeoutExpired:
            self.fail("the pid-1 server hung: park stopped it?")
        if proc.returncode != 0 and "unshare" in err:
            self.live_skip("unshare failed: %s" % err.strip())
        self.assertEqual(proc.returncode, 0, err)
        res = json.loads(out.strip().splitlines()[-1])
        self.assertEqual(res["pid"], 1)
        r = subprocess.CompletedProcess([], res["rc"], res["stdout"], res["stderr"])
        self.check_output_form(r, "park as seen from pid 1: %r" % (res,))
        self.assertEqual(res["rc"], 1, res)
        self.assertRegex(res["stderr"], r"\b(pid 1|init)\b")

    def test_other_users_process_is_refused(self):
        if os.geteuid() != 0:
            self.live_skip("needs root to run park as another user")
        python = "/usr/bin/python3"
        if not os.access(python, os.X_OK):
            self.live_skip("no /usr/bin/python3 for the unprivileged run")
        proc = self.start_asyncio(self.port)
        pub = tempfile.mkdtemp(prefix="park-nobody-")
        self.addCleanup(shutil.rmtree, pub, True)
        os.chmod(pub, 0o755)
        for src in (PARK,) + BACKEND_PATHS:
            dst = os.path.join(pub, os.path.basename(src))
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o644)
        home = os.path.join(pub, "home")
        os.mkdir(home)
        os.chmod(home, 0o777)
        env = {"PATH": "/usr/bin:/bin", "PARK_HOME": home, "HOME": home, "NO_COLOR": "1"}
        r = subprocess.run([python, os.path.join(pub, "park.py"), str(self.port)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, env=env, cwd=pub, timeout=CHILD_TIMEOUT,
                           stdin=subprocess.DEVNULL, user=NOBODY, group=NOBODY, extra_groups=[])
        self.check_output_form(r, "park as nobody: %r" % (r,))
        self.assertEqual(r.returncode, 1, r)
        self.assertRegex(r.stderr.lower(), r"root|another user|other user|uid 0", r.stderr)
        self.assert_running(proc.pid)
        self.assertEqual(self.get_count("127.0.0.1", self.port)[0], proc.pid)


class SafetyTest(LiveTestCase):
    """Targets park must refuse or handle with care, and interruptions that must not break a target."""

    def test_seccomp_target_needs_force(self):
        proc, _ = self.start_python(PY_SECCOMP, self.port)
        self.assertIn("Seccomp:\t2", _read_text("/proc/%d/status" % proc.pid))
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        r = self.park(self.port, expect=1)
        self.assertIn("seccomp", r.stderr)
        self.assertIn("--force", r.stderr)
        self.assert_running(proc.pid)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        self.park(self.port, "--force", expect=0)
        self.assert_parked(proc.pid)
        self.assert_port_free(self.port, [(socket.AF_INET, "127.0.0.1")])
        self.park("resume", self.port, expect=0)
        self.assertEqual(snapshot(self.port), before)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 2))

    def test_sigterm_while_parked_ends_the_park_and_is_handled_at_once(self):
        """SIGTERM sent to a parked server ends the park: the listener comes back and the server's handler runs
        at once (its blocked accept() returns EINTR), without any park command. The state says why."""
        proc, _ = self.start_python(PY_ACCEPT_TERM, self.port)
        self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        keeper = self.keeper_of(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=10 * TIME_SCALE), 42)
        e = self.entry(self.port)
        self.assertEqual(e["status"], "gone")
        self.assertIn("SIGTERM was sent to pid %d" % proc.pid, e["ended"])
        self.wait_for(lambda: proc_state(keeper) in (None, "Z"), "the keeper to exit")

    def test_server_that_dropped_privileges_on_a_low_port(self):
        if os.geteuid() != 0:
            self.live_skip("needs root to bind a port below 1024")
        start = int(_read_text("/proc/sys/net/ipv4/ip_unprivileged_port_start").strip())
        if start <= 1:
            self.skipTest("every port is unprivileged on this machine")
        candidates = list(range(600, min(start, 1024)))
        random.shuffle(candidates)  # not the first free one: two runs at once would both take it
        port = next((p for p in candidates if not tcp_sockets(p, states=None)), None)
        if port is None:
            self.skipTest("no free privileged port")
        proc, _ = self.start_python(PY_DROPS_PRIVILEGES, port)
        pid, n = self.get_count("127.0.0.1", port)
        self.wait_quiet(port)
        before = snapshot(port)
        self.park(port, expect=0)
        self.assert_parked(proc.pid)
        self.park("resume", port, expect=0)  # its own bind would fail with EACCES: park binds for it
        self.assertEqual(self.get_count("127.0.0.1", port), (pid, n + 1))
        self.assertEqual(snapshot(port), before)

    def test_unrestorable_option_needs_force(self):
        """An attached BPF filter cannot be read back: park refuses, touching nothing, unless --force."""
        proc, _ = self.start_python(PY_BPF, self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        r = self.park(self.port, expect=1)
        self.assertIn("BPF socket filter", r.stderr)
        self.assertIn("--force", r.stderr)
        self.assert_running(proc.pid)
        self.assertEqual(self.park_list(), [])
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        self.wait_quiet(self.port)
        self.park(self.port, "--force", expect=0)
        self.assert_parked(proc.pid)
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 2))

    def test_traced_process_is_refused(self):
        proc = self.start_asyncio(self.port)
        tracer, _ = self.start_python(PY_TRACER, proc.pid)
        r = self.park(self.port, expect=1)
        self.assertIn("traced by pid %d" % tracer.pid, r.stderr)
        self.assert_running(proc.pid)
        self.assertEqual(self.entry(self.port), None, "a refused park left state behind")
        self.kill_pid(tracer.pid)
        tracer.wait(10 * TIME_SCALE)
        self.assertEqual(self.get_count("127.0.0.1", self.port)[0], proc.pid)

    def test_interrupted_park_leaves_target_whole(self):
        """Ctrl+C or SIGTERM at any moment of `park PORT`: the target ends parked with its state, or running
        with its listener; never in between. (The interrupt may land while the interpreter itself starts,
        before park's code runs, so stderr is not checked here.)"""
        proc = self.start_node(self.port)
        rng = random.Random(7)
        for i in range(16):
            pid, n = self.get_count("127.0.0.1", self.port)
            self.wait_quiet(self.port)
            child = subprocess.Popen([sys.executable, PARK, str(self.port)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)
            time.sleep(rng.uniform(0.0, 0.15))
            child.send_signal(signal.SIGINT if i % 2 == 0 else signal.SIGTERM)
            child.communicate(timeout=CHILD_TIMEOUT)
            e = self.entry(self.port)
            with self.subTest(round=i, rc=child.returncode, parked=e is not None):
                if e is not None:
                    self.assertEqual(e["status"], "parked")
                    self.assert_parked(proc.pid)
                    self.assertEqual(listen_inodes(self.port), set())
                    self.park("resume", self.port, expect=0)
                self.assert_running(proc.pid)
                self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))



class FidelityTest(LiveTestCase):
    """What real servers meet outside the basic cycle: io_uring, supervisors, load, dead holders."""

    def io_uring_fds(self, pid):
        return [fd for fd, link in _fd_links(pid).items() if link == "anon_inode:[io_uring]"]

    def test_uvloop_server_parks_without_force(self):
        """uvicorn on uvloop (libuv keeps an io_uring with nothing in flight) parks and resumes as it is."""
        try:
            import uvicorn, uvloop  # noqa: F401  (installed by .ci/run: uvicorn[standard])
        except ImportError:
            self.live_skip("uvicorn[standard] (uvloop) is not installed")
        self.write("asgi_counter.py", ASGI_COUNTER)
        proc = self.spawn([sys.executable, "-m", "uvicorn", "asgi_counter:app", "--loop", "uvloop", "--host",
                           "127.0.0.1", "--port", str(self.port), "--log-level", "warning"])
        self.wait_serving("127.0.0.1", self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.assertEqual(pid, proc.pid)
        self.assertTrue(self.io_uring_fds(pid), "uvloop should hold an io_uring fd")
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        self.park_ok(self.port, [pid], "127.0.0.1")
        self.assert_port_free(self.port, [(socket.AF_INET, "127.0.0.1")])
        self.park("resume", self.port, expect=0)
        self.assertEqual(snapshot(self.port), before)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))

    def test_pending_io_uring_accept_is_refused_before_anything_changes(self):
        proc, _ = self.start_python(PY_URING, self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.assertTrue(self.io_uring_fds(pid))
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        r = self.park(self.port, expect=1)
        self.assertIn("io_uring request in flight", r.stderr)
        self.assertIn("accept", r.stderr)
        self.assertIn("--force", r.stderr)
        self.assert_running(pid)
        self.assertEqual(snapshot(self.port), before, "a refused park changed the listener")
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))

    def test_zombie_holder_is_gone_and_the_others_resume(self):
        """A worker killed with -9 while parked stays a zombie (its parent is parked and cannot reap it): list
        says parked, not running; resume names it and recreates the listener in the live ones."""
        master, (dead, live) = self.start_prefork()
        before = snapshot(self.port)
        self.park(self.port, expect=0)
        os.kill(dead, signal.SIGKILL)
        self.wait_for(lambda: proc_state(dead) == "Z", "the worker to be a zombie")
        self.assertEqual(self.entry(self.port)["status"], "parked")
        r = self.park("resume", self.port, expect=0)
        self.assertIn("pid %d has exited" % dead, r.stderr + r.stdout)
        for pid in (master, live):
            self.assert_running(pid)
        after = snapshot(self.port)
        self.assertEqual({pid: after[pid] for pid in (master, live)}, {pid: before[pid] for pid in (master, live)})
        self.assertEqual(self.get_count("127.0.0.1", self.port)[0], live)

    def test_zombie_holder_and_release(self):
        master, (dead, live) = self.start_prefork()
        self.park(self.port, expect=0)
        os.kill(dead, signal.SIGKILL)
        self.wait_for(lambda: proc_state(dead) == "Z", "the worker to be a zombie")
        r = self.park("release", self.port, expect=0)
        self.assertIn(str(master), r.stdout)
        self.assertNotIn("Traceback", r.stderr)
        # The fixture's master ends once it reaps the dead worker, and the live worker with it (PDEATHSIG):
        # the released entry goes with them.
        self.wait_for(lambda: self.park_list() == [], "the released entry to go with its processes")


    def counts_by_worker(self, n=40):
        """{pid: highest count seen} over n fresh connections."""
        seen = {}
        for _ in range(n):
            pid, c = self.get_count("127.0.0.1", self.port)
            seen[pid] = max(c, seen.get(pid, 0))
        return seen

    def workers_of(self, pid):
        return sorted(int(w) for w in _read_text("/proc/%d/task/%d/children" % (pid, pid)).split())

    def check_gunicorn_keeps_its_workers(self, worker_class):
        """gunicorn -w 2 with --timeout 2, parked for 3x the timeout: the arbiter finds every heartbeat fresh
        (the keeper refreshes them), so the same workers serve on with their counters."""
        try:
            import gunicorn  # noqa: F401  (installed by .ci/run)
        except ImportError:
            self.live_skip("gunicorn is not installed")
        self.write("wsgi_counter.py", WSGI_COUNTER)
        timeout = 2
        proc = self.spawn([sys.executable, "-m", "gunicorn", "-w", "2", "-k", worker_class, "--timeout",
                           str(timeout), "-b", "127.0.0.1:%d" % self.port, "--chdir", self.tmp,
                           "--control-socket", os.path.join(self.tmp, "gunicorn.ctl"), "wsgi_counter:app"])
        self.wait_for(lambda: len(self.workers_of(proc.pid)) == 2, "gunicorn's two workers")
        self.wait_serving("127.0.0.1", self.port)
        workers = self.workers_of(proc.pid)
        before = self.counts_by_worker()
        self.wait_quiet(self.port, allow_time_wait=True)
        self.park(self.port, expect=0)
        time.sleep(3 * timeout)
        self.park("resume", self.port, expect=0)
        time.sleep(2 * timeout)  # the arbiter has looked at the heartbeats a few times since
        after = self.counts_by_worker()
        self.assertEqual(self.workers_of(proc.pid), workers, "gunicorn replaced its workers: " + self.log_of(proc))
        self.assertNotIn("WORKER TIMEOUT", self.log_of(proc))
        self.assertTrue(set(after) <= set(workers), after)
        for pid, c in after.items():
            self.assertGreater(c, before.get(pid, 0), "pid %d's counter started again" % pid)

    def test_gunicorn_sync_workers_outlive_a_park_longer_than_their_timeout(self):
        self.check_gunicorn_keeps_its_workers("sync")

    def test_gunicorn_gthread_workers_outlive_a_park_longer_than_their_timeout(self):
        self.check_gunicorn_keeps_its_workers("gthread")

    def test_puma_cluster_gets_a_worker_timeout_warning(self):
        """puma's master checks its workers' check-ins before it reads them: park cannot satisfy it, so it
        says so at park time, naming worker_timeout, and warns about a --for longer than it."""
        if not shutil.which("puma"):
            self.live_skip("puma is not installed (apt-get install puma)")
        path = self.write("config.ru", PUMA_RACKUP)
        proc = self.spawn(["puma", "-w", "2", "-b", "tcp://127.0.0.1:%d" % self.port, path])
        self.wait_for(lambda: len(self.workers_of(proc.pid)) == 2, "puma's two workers", 30)
        self.wait_serving("127.0.0.1", self.port, timeout=30)
        workers = self.workers_of(proc.pid)
        self.wait_quiet(self.port, allow_time_wait=True)
        r = self.park(self.port, expect=0)
        self.assertRegex(r.stdout, r"(?m)^  note: puma's master replaces workers .*worker_timeout \(60 s")
        self.park("resume", self.port, expect=0)
        r = self.park(self.port, "--for", "2m", expect=0)
        self.assertRegex(r.stdout, r"(?m)^  warning: --for 2m00s is longer than puma's worker_timeout")
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.workers_of(proc.pid), workers)
        self.assertEqual(self.get_count("127.0.0.1", self.port)[0] in workers, True)

    def test_a_socket_only_bound_to_the_port_is_closed_and_bound_again(self):
        """A master that keeps a socket bound to the port without listening (granian) would leave the port
        half free: park closes it too, so a plain bind succeeds, and resume binds it again without listen()."""
        if not os.path.exists("/proc/net/tcp"):
            self.live_skip("no /proc/net/tcp")
        proc, (worker,) = self.start_python(PY_BOUND_ONLY, self.port)
        worker = int(worker)
        self.addCleanup(self.kill_pid, worker)
        self.wait_serving("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.assertEqual(pid, worker)
        bound = self.bound_fds(proc.pid)
        self.assertEqual(len(bound), 1, "the fixture's bound socket")
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        if not linux_at_least(6, 9):  # sock_diag shows bound-only sockets from 6.9: the port stays half free
            self.park(self.port, expect=0)
            self.assertEqual(self.bound_fds(proc.pid), bound, "park touched a socket it cannot see")
            self.park("resume", self.port, expect=0)
            self.assertEqual(snapshot(self.port), before)
            self.assertEqual(self.get_count("127.0.0.1", self.port), (worker, n + 1))
            return
        r = self.park(self.port, expect=0)
        self.assertEqual(r.stdout.count("127.0.0.1:%d" % self.port), 1, r.stdout)
        self.assertEqual(self.bound_fds(proc.pid), {}, "the bound socket is still open")
        self.assert_port_free(self.port, [(socket.AF_INET, "127.0.0.1")])  # a bind without SO_REUSEADDR
        self.park("resume", self.port, expect=0)
        self.assertEqual(snapshot(self.port), before)
        after = self.bound_fds(proc.pid)
        self.assertEqual(sorted(after), sorted(bound), "the bound socket is not back at its fd")
        self.assertEqual(self.get_count("127.0.0.1", self.port), (worker, n + 1))

    def bound_fds(self, pid):
        """{fd: (address, port)} of pid's TCP sockets that are bound but neither listening nor connected."""
        out = {}
        for fd, link in _fd_links(pid).items():
            if link.startswith("socket:"):
                dup = pidfd_getfd(pid, fd)
                try:
                    s = socket.socket(fileno=dup)
                    try:
                        if s.type == socket.SOCK_STREAM and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                            try:
                                s.getpeername()
                            except OSError:
                                if s.getsockname()[1] == self.port:
                                    out[fd] = s.getsockname()
                    finally:
                        s.detach()
                finally:
                    os.close(dup)
        return out

    def filter_lengths(self, pid):
        """{fd: length of the classic BPF filter on it} for every socket of pid (SO_GET_FILTER, read
        through a pidfd_getfd duplicate)."""
        out = {}
        for fd, link in _fd_links(pid).items():
            if link.startswith("socket:"):
                try:
                    dup = pidfd_getfd(pid, fd)
                except OSError as e:
                    if e.errno == errno.EBADF:  # a connection the server closed since its fds were listed
                        continue
                    raise
                try:
                    n = ctypes.c_uint32(0)
                    libc = ctypes.CDLL(None, use_errno=True)
                    libc.getsockopt(dup, socket.SOL_SOCKET, 26, None, ctypes.byref(n))  # SO_GET_FILTER
                    out[fd] = n.value
                finally:
                    os.close(dup)
        return out

    def cycles_under_load(self, clients, cycles, close=True):
        """park/resume cycles while clients open a new connection per request; how their requests ended:
        {ok, reset, refused, other}."""
        counts = {"ok": 0, "reset": 0, "refused": 0, "other": 0}
        lock, stop = threading.Lock(), threading.Event()
        request = b"GET / HTTP/1.1\r\nHost: t\r\n%s\r\n" % (b"Connection: close\r\n" if close else b"")

        def client():
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=10 * TIME_SCALE) as c:
                        c.sendall(request)
                        kind = "ok" if c.recv(4096).startswith(b"HTTP/1.1 200") else "other"
                except ConnectionResetError:
                    kind = "reset"
                except ConnectionRefusedError:
                    kind = "refused"
                    time.sleep(0.01)
                except OSError:
                    kind = "other"
                with lock:
                    counts[kind] += 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        try:
            time.sleep(0.3)
            for _ in range(cycles):
                self.park(self.port, expect=0)
                self.park("resume", self.port, expect=0)
        finally:
            stop.set()
            for t in threads:
                t.join(15 * TIME_SCALE)
        return counts

    def test_no_connection_is_reset_under_load(self):
        """8 clients opening a new connection per request through 50 park/resume cycles: every connection
        is served or refused (or waits for its SYN to be sent again), none is reset; no filter is left."""
        proc = self.start_node(self.port)
        counts = self.cycles_under_load(clients=8, cycles=50)
        self.assertEqual(counts["reset"], 0, counts)
        self.assertEqual(counts["other"], 0, counts)
        self.assertGreater(counts["ok"], 500, counts)
        self.assertEqual(set(self.filter_lengths(proc.pid).values()) - {0}, set(), "a filter was left")

    def test_filter_is_removed_when_park_is_killed_while_draining(self):
        """park killed just after it attached its SYN filter (guard), and later in the drain (drain): the
        watchdog removes the filter and the server runs as it was, answering new connections."""
        proc = self.start_node(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        for step in ("guard", "drain"):
            with self.subTest(step=step):
                cli = subprocess.Popen([sys.executable, PARK, str(self.port)], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, universal_newlines=True,
                                       env=dict(self.env, PARK_FAILPOINT="pause:%s:1" % step))
                self.addCleanup(self._stop_proc, cli)
                self.wait_for(lambda: self.keeper_pid_of_record() is not None, "the keeper to start")
                keeper = self.keeper_pid_of_record()
                self.wait_for(lambda: 5 in self.filter_lengths(pid).values(), "park's filter on the listener")
                os.kill(keeper, signal.SIGKILL)
                out, err = cli.communicate(timeout=CHILD_TIMEOUT)
                self.assertEqual(cli.returncode, 1, err)
                self.assertIn("runs as it was", err)
                self.wait_for(lambda: set(self.filter_lengths(pid).values()) == {0}, "the filter to be removed", 2)
                self.assert_running(pid)
                n += 1
                self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n))

    def start_epoll_workers(self, mode):
        proc, words = self.start_python(PY_EPOLL_WORKERS, self.port, env=dict(os.environ, FIXTURE_EPOLL=mode))
        workers = [int(w) for w in words]
        for pid in workers:
            self.addCleanup(self.kill_pid, pid)
        self.wait_serving("127.0.0.1", self.port)
        return proc, workers

    def wake_order(self, workers):
        """The workers in the order a new connection wakes their epolls, seen as park does it, but with
        SIGSTOP: each epoll duplicated into one edge-triggered epoll here, then one connection (which a
        worker accepts once continued)."""
        inode, = listen_inodes(self.port)
        dups, mine = {}, select.epoll()
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            for pid in workers:
                self.wait_for(lambda: proc_state(pid) == "T", "worker %d to stop" % pid)
                for fd, link in _fd_links(pid).items():
                    if link == "anon_inode:[eventpoll]" and "ino:%x" % inode in _read_text(
                            "/proc/%d/fdinfo/%d" % (pid, fd)):
                        dups[pidfd_getfd(pid, fd)] = pid
            self.assertEqual(sorted(dups.values()), sorted(workers))
            for d in dups:
                mine.register(d, select.EPOLLIN | select.EPOLLET)
            mine.poll(0)
            with socket.create_connection(("127.0.0.1", self.port), timeout=5 * TIME_SCALE):
                seen = []
                deadline = time.monotonic() + 2 * TIME_SCALE
                while len(seen) < len(workers) and time.monotonic() < deadline:
                    seen += [dups[fd] for fd, _ in mine.poll(0.1) if dups[fd] not in seen]
                for pid in workers:
                    os.kill(pid, signal.SIGCONT)
            return seen
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
            mine.close()
            for d in dups:
                os.close(d)

    def served_by(self, n=50):
        """{pid: how many of n sequential requests (a new connection each) it answered}; a short pause
        between them lets the worker that served one wait in epoll again (else the next goes elsewhere)."""
        out = {}
        for _ in range(n):
            pid = self.get_count("127.0.0.1", self.port)[0]
            out[pid] = out.get(pid, 0) + 1
            time.sleep(0.01)
        return out

    def wake_notes(self):
        """What the keepers logged about the wake order (for a failure message)."""
        try:
            with open(os.path.join(self.home, "keepers", "%d.log" % self.port)) as f:
                return "".join(line for line in f if "wake order" in line)[-2000:]
        except OSError as e:
            return str(e)

    def accepts_logged(self, proc):
        proc.log.flush()
        proc.log.seek(0)
        return proc.log.read().count("accepted by ")

    def test_exclusive_epoll_workers_keep_the_traffic_across_cycles(self):
        """EPOLLEXCLUSIVE: the first-registered idle worker gets every connection; after each of 5 park/resume
        cycles it still does (park replays the registrations in the wake order it observed), and no worker
        ever accepted park's own probe."""
        proc, workers = self.start_epoll_workers("exclusive")
        order = self.wake_order(workers)
        self.assertEqual(order[0], workers[2], "the fixture registers worker 2 first")
        # Most go to that worker (all of them on an idle machine: it is back in epoll_wait when the next one
        # comes); before park kept the order, none did after a cycle.
        share = self.served_by()
        self.assertGreater(share.get(order[0], 0), 25, share)
        for cycle in range(5):
            self.wait_quiet(self.port, allow_time_wait=True)  # every connection so far accepted and closed
            made = self.accepts_logged(proc)
            self.park(self.port, expect=0)
            self.park("resume", self.port, expect=0)
            share = self.served_by()
            self.assertGreater(share.get(order[0], 0), 25, "cycle %d: %s" % (cycle, share))
            self.assertEqual(self.wake_order(workers), order, "cycle %d: %s" % (cycle, self.wake_notes()))
            self.wait_quiet(self.port, allow_time_wait=True)
            self.assertEqual(self.accepts_logged(proc), made + 50 + 1, "cycle %d: only the test's connections "
                             "(50 requests and wake_order's) are accepted" % cycle)
        for pid in workers:
            self.assert_running(pid)

    def test_plain_epoll_workers_keep_their_wake_order(self):
        """Plain registrations: the last-registered epoll is woken first (all are); park restores that
        order, and every request is still served."""
        proc, workers = self.start_epoll_workers("plain")
        order = self.wake_order(workers)
        self.assertEqual(order, [workers[1], workers[0], workers[2]], "the fixture registers 2, 0, 1")
        for cycle in range(5):
            self.wait_quiet(self.port, allow_time_wait=True)  # every connection so far accepted and closed
            made = self.accepts_logged(proc)
            self.park(self.port, expect=0)
            self.park("resume", self.port, expect=0)
            self.assertEqual(sum(self.served_by(20).values()), 20)
            self.assertEqual(self.wake_order(workers), order, "cycle %d: %s" % (cycle, self.wake_notes()))
            self.wait_quiet(self.port, allow_time_wait=True)
            self.assertEqual(self.accepts_logged(proc), made + 20 + 1, "cycle %d" % cycle)

    def test_shared_epoll_and_two_epolls_in_one_worker(self):
        """An epoll shared by three processes (made before the fork) counts once; a worker with two epolls on
        the listener has both ranked; the worker that registered first keeps the connections."""
        proc, workers = self.start_python(PY_EPOLL_SHARED, self.port)
        workers = [int(w) for w in workers]
        for pid in workers:
            self.addCleanup(self.kill_pid, pid)
        self.wait_serving("127.0.0.1", self.port)
        share = self.served_by()
        self.assertGreater(share.get(workers[2], 0), 25, share)
        for cycle in range(3):
            self.wait_quiet(self.port, allow_time_wait=True)
            self.park(self.port, expect=0)
            with open(os.path.join(self.home, "parked", "%d.json" % self.port)) as f:
                holders = {h["pid"]: h for h in json.load(f)["listeners"][0]["holders"]}
            ranks = {pid: sorted((r["events"] & EPOLLEXCLUSIVE != 0, r.get("wake", -1))
                                 for r in holders[pid]["epoll"]) for pid in holders}
            self.park("resume", self.port, expect=0)
            share = self.served_by()
            self.assertGreater(share.get(workers[2], 0), 25, "cycle %d: %s" % (cycle, share))
            # the plain one is woken first (0), then worker 2's exclusive one (1), then the shared one (2),
            # which worker 2 has inherited too
            self.assertEqual(ranks, {proc.pid: [(True, 2)], workers[0]: [(True, 2)], workers[1]: [(True, 2)],
                                     workers[2]: [(False, 0), (True, 1), (True, 2)]})

    def test_wake_order_probe_under_load_resets_nothing(self):
        """The probe passes park's SYN filter while 4 clients open a connection per request through 10
        cycles: none is reset, the order is kept, no filter is left and no worker accepted the probe."""
        proc, workers = self.start_epoll_workers("exclusive")
        order = self.wake_order(workers)
        counts = self.cycles_under_load(clients=4, cycles=10, close=False)
        self.assertEqual(counts["reset"], 0, counts)
        self.assertEqual(counts["other"], 0, counts)
        self.assertGreater(counts["ok"], 50, counts)
        for pid in workers:
            self.assertEqual(set(self.filter_lengths(pid).values()) - {0}, set(), "a filter was left")
        served = 1 + 1 + counts["ok"]  # wait_serving's request and wake_order's connection too
        self.wait_for(lambda: self.accepts_logged(proc) >= served, "the workers to log their accepts")
        time.sleep(0.2)
        self.assertEqual(self.accepts_logged(proc), served, counts)
        self.assertEqual(self.wake_order(workers), order, self.wake_notes())
        notes = self.wake_notes().splitlines()
        self.assertEqual(len(notes), 10, notes)
        self.assertTrue(all(" in " in n and "pid %d" % order[0] in n for n in notes), notes)

    def test_syn_filter_lets_only_the_probe_ports_through(self):
        """The guard's filter with an allowed source port: that port's connection completes, another one's
        SYN is dropped (it stays in SYN_SENT)."""
        b = load_module("park_linux_under_test", BACKEND)
        lsock = socket.socket()
        self.addCleanup(lsock.close)
        lsock.bind(("127.0.0.1", self.port))
        lsock.listen(8)
        lsock.settimeout(TIME_SCALE)
        probe, other = socket.socket(), socket.socket()
        for c in (probe, other):
            self.addCleanup(c.close)
            c.bind(("127.0.0.1", 0))
            c.setblocking(False)
        code = b._syn_filter([probe.getsockname()[1]])
        prog = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("=H6xQ", len(code) // 8, ctypes.addressof(prog))
        lsock.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
        other.connect_ex(("127.0.0.1", self.port))
        probe.connect_ex(("127.0.0.1", self.port))
        conn, peer = lsock.accept()
        conn.close()
        self.assertEqual(peer, probe.getsockname())
        self.assertEqual(select.select([], [other], [], 0.3)[1], [], "the other SYN was not dropped")
        self.assertRaises(socket.timeout, lsock.accept)

    def keeper_pid_of_record(self):
        try:
            with open(os.path.join(self.home, "parked", "%d.json" % self.port)) as f:
                return json.load(f)["keeper"]["pid"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


def sha256_file(path):
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class OldKernelTest(LiveTestCase):
    """park on a kernel without pidfd_open (< 5.3) and pidfd_getfd (< 5.6), as RHEL 8's 4.18: simulated by
    a seccomp filter that makes both fail with ENOSYS for park and its keeper. park reads the listener
    through a copy the target sends it itself (SCM_RIGHTS, injected), and hands the new listener to every
    holder the same way."""

    def setUp(self):
        super().setUp()
        self.via = self.write("old-kernel.py", OLD_KERNEL)

    def test_the_filter_makes_pidfd_calls_fail(self):
        probe = ("import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
                 "print(libc.syscall(434, os.getpid(), 0), ctypes.get_errno())")
        r = subprocess.run([sys.executable, self.via, "-c", probe], stdout=subprocess.PIPE, timeout=30,
                           universal_newlines=True)
        self.assertEqual(r.stdout.split(), ["-1", str(errno.ENOSYS)])

    def test_prefork_server_parks_and_resumes_without_pidfd(self):
        master, children = self.start_prefork()
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        fds = {p: sorted(_fd_links(p)) for p in [master] + children}
        self.park(self.port, expect=0, via=self.via)
        for p in [master] + children:
            self.assert_parked(p)
        self.assert_port_free(self.port, [(socket.AF_INET, "127.0.0.1")], reuseaddr=True)
        self.park("resume", self.port, expect=0, via=self.via)
        self.assertEqual(snapshot(self.port), before)
        self.assertEqual({p: sorted(_fd_links(p)) for p in fds}, fds, "park left an fd behind in a target")
        seen = {}
        for _ in range(20):
            p, c = self.get_count("127.0.0.1", self.port)
            seen[p] = max(c, seen.get(p, 0))
        self.assertTrue(set(seen) <= set(children), seen)
        self.assertGreater(seen.get(pid, n + 1), n)

    def test_node_server_parks_and_resumes_without_pidfd(self):
        proc = self.start_node(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        fds = sorted(_fd_links(pid))
        self.park(self.port, expect=0, via=self.via)
        self.assert_port_free(self.port, [(socket.AF_INET, "127.0.0.1")])
        self.park("resume", self.port, expect=0, via=self.via)
        self.assertEqual(snapshot(self.port), before)
        self.assertEqual(sorted(_fd_links(pid)), fds, "park left an fd behind in the target")
        self.assertEqual(self.get_count("127.0.0.1", self.port), (proc.pid, n + 1))


def cgroup2_root():
    """Where cgroup v2 is mounted, or None."""
    for line in _read_text("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            return left.split()[4]
    return None


class DiscoveryTest(LiveTestCase):
    """park looks for a listener's holders among the processes of the cgroup the socket was made in, and
    among all of them only when it must: a holder that has since moved to another cgroup is missed at first,
    noticed when the listener stays open, given its socket back, and parked on the second look."""

    def setUp(self):
        super().setUp()
        root = cgroup2_root()
        if root is None and os.geteuid() == 0:
            root = self.mount_cgroup2()  # a machine without systemd (a bare guest kernel): as systemd would
        if os.geteuid() != 0 or root is None or not os.access(root, os.W_OK):
            self.live_skip("needs root and a writable cgroup2 mount")
        self.groups = []
        for tag in ("made", "moved"):
            path = os.path.join(root, "park-test-%s-%d" % (tag, os.getpid()))
            os.mkdir(path)
            self.addCleanup(self.remove_group, path, root)
            self.groups.append(path)

    def mount_cgroup2(self):
        """Mount cgroup v2 for this test only (unmounted at its end, after its groups are gone); None if
        that fails."""
        where = tempfile.mkdtemp(prefix="park-cgroup2-")
        self.addCleanup(os.rmdir, where)
        if subprocess.run(["mount", "-t", "cgroup2", "cgroup2", where], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode != 0:
            return None
        self.addCleanup(subprocess.run, ["umount", where], check=True)
        return where

    def remove_group(self, path, root):
        """Move what is left to the root group and remove the group; a process killed at the end of the test
        keeps it busy until it is reaped (on 5.10 that shows as EBUSY for a moment), so wait for that."""
        deadline = time.monotonic() + 10 * TIME_SCALE
        while True:
            try:
                for pid in _read_text(os.path.join(path, "cgroup.procs")).split():
                    with open(os.path.join(root, "cgroup.procs"), "w") as f:
                        f.write(pid)
            except OSError:
                pass
            try:
                os.rmdir(path)
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def move(self, pid, group):
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(pid))

    def start_in(self, group, source, *args):
        path = self.write("fixture-%d-%d.py" % (self.port, len(os.listdir(self.tmp))), source)
        proc = subprocess.Popen([sys.executable, "-u", path, str(self.port)] + [str(a) for a in args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                cwd=self.tmp, preexec_fn=lambda: self.move(os.getpid(), group))
        self.addCleanup(self._stop_proc, proc)
        return proc, self.read_ready(proc)

    def check_cycle(self, pids, debug_line):
        self.wait_serving("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        r = self.park(self.port, expect=0, env=dict(self.env, PARK_DEBUG="1"))
        self.assertIn(debug_line, r.stderr)
        for pid in pids:
            self.assert_parked(pid)
        self.assert_port_free(self.port, [(socket.AF_INET, "127.0.0.1")], reuseaddr=True)
        self.park("resume", self.port, expect=0)
        self.assertEqual(snapshot(self.port), before)

    def test_a_worker_moved_to_another_cgroup_is_parked_too(self):
        made, moved = self.groups
        proc, words = self.start_in(made, PY_PREFORK)
        children = [int(w) for w in words]
        for pid in children:
            self.addCleanup(self.kill_pid, pid)
        self.move(children[1], moved)  # it holds the listener (fd 9), away from where the socket was made
        self.check_cycle([proc.pid] + children,
                         "pid [%d] holds the listener too; looking at every process" % children[1])
        seen = {self.get_count("127.0.0.1", self.port)[0] for _ in range(20)}
        self.assertTrue(seen <= set(children), seen)

    def test_a_process_handed_the_listener_gets_it_back_and_is_parked_too(self):
        """Not a child, elsewhere: park closes the listener where it found it, sees it stay open, finds who
        holds it, gives the very socket back (same fd, same epoll registration), and parks both."""
        made, moved = self.groups
        proc, _ = self.start_in(made, PY_ASYNCIO)
        self.wait_serving("127.0.0.1", self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        (fd,) = [f for f, link in _fd_links(pid).items() if link == "socket:[%d]" % min(listen_inodes(self.port))]
        other, _ = self.start_in(moved, PY_TAKES_FD, pid, fd)
        self.check_cycle([pid, other.pid], "pid [%d] holds the listener too; looking at every process" % other.pid)
        again, m = self.get_count("127.0.0.1", self.port)
        self.assertEqual(again, pid)
        self.assertGreater(m, n, "the counter started again")


class PinTest(unittest.TestCase):
    """The sha256 pins in park.py (stdin mode) and install.sh must equal the files they pin."""

    def test_park_pins_its_backends(self):
        park = load_module("park_pins_under_test", PARK)
        for name, pin in park.PINS.items():
            path = os.path.join(HERE, name + ".py")
            self.assertTrue(os.path.exists(path), "park.py pins %s, which does not exist" % path)
            got = sha256_file(path)
            self.assertEqual(pin, got, "pin differs; paste this into park.py's PINS (or run .ci/update-pins):\n"
                             '    "%s": "%s",' % (name, got))

    def test_install_sh_pins_every_file(self):
        with open(os.path.join(HERE, "install.sh")) as f:
            text = f.read()
        files = ["park.py"] + sorted(n + ".py" for n in load_module("park_pins_under_test", PARK).PINS)
        for name in files:
            var = "SHA256_" + name.replace(".", "_")
            got = sha256_file(os.path.join(HERE, name))
            m = re.search(r'^%s="([0-9a-f]*)"' % var, text, re.M)
            self.assertIsNotNone(m, "install.sh has no %s" % var)
            self.assertEqual(m.group(1), got, "pin differs; paste this into install.sh (or run .ci/update-pins):\n"
                             '%s="%s"' % (var, got))


class DistributionTest(LiveTestCase):
    """Stdin mode, install.sh and vendoring, offline, against a local http.server serving a copy of the tree."""

    def setUp(self):
        super().setUp()
        self.tree = os.path.join(self.tmp, "tree")
        os.mkdir(self.tree)
        for name in ("park.py", "install.sh") + BACKEND_FILES:
            shutil.copy(os.path.join(HERE, name), os.path.join(self.tree, name))
        self.cwd = os.path.join(self.tmp, "cwd")
        os.mkdir(self.cwd)
        with open(PARK, "rb") as f:
            self.park_source = f.read()
        # Decoys where park runs from: in stdin mode sys.path[0] is the current directory, so a sibling
        # import, or a lazy import of the standard library, would run these.
        self.marker = os.path.join(self.tmp, "decoy-ran")
        decoy = "open(%r, 'w').write(__name__)\nraise SystemExit('decoy imported')\n" % self.marker
        for name in BACKEND_FILES + ("json.py", "argparse.py", "hashlib.py", "fcntl.py"):
            with open(os.path.join(self.cwd, name), "w") as f:
                f.write(decoy)
        self.addCleanup(lambda: self.assertFalse(os.path.exists(self.marker), "a decoy in the current "
                                                 "directory was imported"))

    def serve_tree(self):
        port = free_port()
        proc = self.spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], cwd=self.tree)
        self.wait_serving("127.0.0.1", port)
        self.env["PARK_BASE_URL"] = "http://127.0.0.1:%d" % port
        return proc

    def stdin_park(self, *args, expect=None):
        """`curl .../park.py | python3 - ARGS`, run from an empty directory."""
        r = subprocess.run([sys.executable, "-"] + [str(a) for a in args], input=self.park_source,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, cwd=self.cwd,
                           timeout=CHILD_TIMEOUT)
        r = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())
        what = "stdin park %s -> %d\nstdout: %s\nstderr: %s" % (args, r.returncode, r.stdout, r.stderr)
        self.check_output_form(r, what)
        if expect is not None:
            self.assertEqual(r.returncode, expect, what)
        return r

    @property
    def cache(self):
        return os.path.join(self.home, "lib", "park_linux.py")

    @property
    def arch_cache(self):
        return os.path.join(self.home, "lib", ARCH)

    def test_stdin_version_needs_no_backend(self):
        r = self.stdin_park("--version", expect=0)
        self.assertRegex(r.stdout, r"^park \d+\.\d+\.\d+")
        self.assertFalse(os.path.exists(self.cache))

    def test_stdin_cycle_cache_and_mode_switch(self):
        server = self.serve_tree()
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.stdin_park(self.port, expect=0)
        self.assert_parked(proc.pid)
        self.assertEqual(sha256_file(self.cache), sha256_file(BACKEND))
        self.assertEqual(sha256_file(self.arch_cache), sha256_file(os.path.join(HERE, ARCH)))
        self.assertEqual(os.stat(self.cache).st_mode & 0o777, 0o600)
        self.park("resume", self.port, expect=0)  # parked from a pipe, resumed from the file
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        self.kill_pid(server.pid)  # offline from here: the verified cache must do
        server.wait(10 * TIME_SCALE)
        self.stdin_park("resume", self.port, expect=0)  # and the reverse
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 2))

    def code_files(self, module="park_linux"):
        lib = os.path.join(self.home, "lib")
        return sorted(n for n in os.listdir(lib) if n.startswith(module + ".") and n.endswith(".code")) \
            if os.path.isdir(lib) else []

    def test_stdin_keeps_the_compiled_backend_and_checks_it(self):
        """The backend's compiled code is kept beside its verified source, named by its pin and the interpreter;
        a damaged code file is compiled again, and another release's is removed."""
        server = self.serve_tree()
        self.stdin_park("list", expect=0)
        pin = sha256_file(BACKEND)
        (name,) = self.code_files()
        self.assertIn(pin[:32], name)
        self.assertIn(sys.implementation.cache_tag, name)
        self.assertEqual(len(self.code_files(ARCH[:-3])), 1, "the architecture's module is kept compiled too")
        path = os.path.join(self.home, "lib", name)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        made = os.stat(path).st_mtime_ns
        self.stdin_park("list", expect=0)
        self.assertEqual(os.stat(path).st_mtime_ns, made, "the kept code was not used")
        with open(path, "r+b") as f:  # damaged: one byte of the code flipped
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 0xFF]))
        old = os.path.join(self.home, "lib", "park_linux.%s.%s.code" % ("0" * 32, sys.implementation.cache_tag))
        with open(old, "wb") as f:
            f.write(b"another release")
        self.kill_pid(server.pid)
        server.wait(10 * TIME_SCALE)
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.stdin_park(self.port, expect=0)  # offline: the verified source, compiled again
        self.assert_parked(proc.pid)
        self.assertEqual(self.code_files(), [name])
        self.assertNotEqual(os.stat(path).st_mtime_ns, made)
        self.stdin_park("resume", self.port, expect=0)

    def test_tampered_download_is_refused(self):
        with open(os.path.join(self.tree, ARCH), "a") as f:  # the engine verified, its architecture's module not
            f.write("\n# tampered\n")
        self.serve_tree()
        proc = self.start_asyncio(self.port)
        r = self.stdin_park(self.port, expect=1)
        self.assertIn("sha256", r.stderr)
        self.assertIn(ARCH, r.stderr)
        self.assertFalse(os.path.exists(self.arch_cache), "an unverified backend was kept")
        self.assert_running(proc.pid)
        self.assertEqual(self.get_count("127.0.0.1", self.port)[0], proc.pid)
        self.assertEqual(self.park_list(), [])

    def test_tampered_cache_is_refused_offline(self):
        server = self.serve_tree()
        self.stdin_park("list", expect=0)
        self.assertTrue(os.path.exists(self.cache))
        self.kill_pid(server.pid)
        server.wait(10 * TIME_SCALE)
        with open(self.cache, "a") as f:
            f.write("\nimport os; os._exit(99)\n")
        proc = self.start_asyncio(self.port)
        r = self.stdin_park(self.port, expect=1)
        self.assertIn(self.cache, r.stderr)
        self.assert_running(proc.pid)
        self.assertEqual(self.get_count("127.0.0.1", self.port)[0], proc.pid)

    def test_vendored_copy_ignores_a_decoy_in_the_current_directory(self):
        vendor = os.path.join(self.tmp, "dotfiles", "bin")
        os.makedirs(vendor)
        for name in ("park.py",) + BACKEND_FILES:
            shutil.copy(os.path.join(HERE, name), vendor)
        proc = self.start_asyncio(self.port)
        for argv in ([sys.executable, os.path.join(vendor, "park.py"), "list"],
                     [sys.executable, "../dotfiles/bin/park.py", str(self.port)],
                     [sys.executable, "../dotfiles/bin/park.py", "resume", str(self.port)]):
            r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                               env=self.env, cwd=self.cwd, timeout=CHILD_TIMEOUT)
            self.assertEqual(r.returncode, 0, r)
        self.assertFalse(os.path.exists(self.marker), "a module from the current directory was run")
        self.assertEqual(self.get_count("127.0.0.1", self.port)[0], proc.pid)

    def install(self, *args, stdin_script=False, env=None):
        env = env or self.env
        if stdin_script:
            with open(os.path.join(self.tree, "install.sh"), "rb") as f:
                script = f.read()
            argv, data = ["sh", "-s", "--"] + list(args), script
        else:
            argv, data = ["sh", os.path.join(self.tree, "install.sh")] + list(args), b""
        r = subprocess.run(argv, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                           cwd=self.cwd, timeout=CHILD_TIMEOUT)
        return subprocess.CompletedProcess(argv, r.returncode, r.stdout.decode(), r.stderr.decode())

    def test_install_sh(self):
        self.serve_tree()
        prefix, bindir = os.path.join(self.tmp, "share", "park"), os.path.join(self.tmp, "bin")
        args = ["--base-url", self.env["PARK_BASE_URL"], "--bin-dir", bindir, "--prefix", prefix]
        r = self.install(*args)
        self.assertEqual(r.returncode, 0, r)
        self.assertIn('export PATH="%s:$PATH"' % bindir, r.stdout, "the PATH line to add is not printed")
        launcher = os.path.join(bindir, "park")
        v = subprocess.run([launcher, "--version"], stdout=subprocess.PIPE, universal_newlines=True, env=self.env)
        self.assertRegex(v.stdout, r"^park \d+\.\d+\.\d+")
        # From the directory holding the decoys: the launcher's park must not pick up any of them.
        v = subprocess.run([launcher, "list", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, env=self.env, cwd=self.cwd)
        self.assertEqual((v.returncode, v.stdout.strip()), (0, "[]"), v.stderr)
        installed = {n: sha256_file(os.path.join(prefix, n)) for n in os.listdir(prefix) if n.endswith(".py")}
        self.assertEqual(installed, {n: sha256_file(os.path.join(HERE, n)) for n in ("park.py",) + BACKEND_FILES})
        r = self.install(*args, stdin_script=True)  # curl -fsSL .../install.sh | sh -s -- ..., and idempotent
        self.assertEqual(r.returncode, 0, r)
        self.assertEqual(sorted(n for n in os.listdir(prefix) if n.endswith(".py")), sorted(installed))
        r = self.install("--uninstall", "--bin-dir", bindir, "--prefix", prefix)
        self.assertEqual(r.returncode, 0, r)
        self.assertFalse(os.path.exists(launcher))
        self.assertFalse(os.path.exists(prefix))

    def test_install_sh_under_umask_000_with_a_hostile_prefix(self):
        """Nothing install.sh creates is writable by others, even under umask 000, and a --prefix full of shell
        syntax is pasted into the launcher as one quoted word: running the launcher runs no part of it."""
        self.serve_tree()
        mark = os.path.join(self.tmp, "PWNED")
        prefix = os.path.join(self.tmp, "p $(touch %s) `touch %s` it's \"q\"" % (mark, mark))
        bindir = os.path.join(self.tmp, "bin")
        argv = ["sh", "-c", 'umask 000; exec sh "$@"', "sh", os.path.join(self.tree, "install.sh"),
                "--base-url", self.env["PARK_BASE_URL"], "--bin-dir", bindir, "--prefix", prefix]
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                           env=self.env, cwd=self.cwd, timeout=CHILD_TIMEOUT)
        self.assertEqual(r.returncode, 0, r)
        for root, dirs, files in os.walk(self.tmp):
            if not (root.startswith(prefix) or root.startswith(bindir)):
                continue
            for name in [root] + [os.path.join(root, f) for f in files]:
                self.assertFalse(os.stat(name).st_mode & 0o022, "%s is writable by others" % name)
        v = subprocess.run([os.path.join(bindir, "park"), "--version"], stdout=subprocess.PIPE,
                           universal_newlines=True, env=self.env)
        self.assertRegex(v.stdout, r"^park \d+\.\d+\.\d+")
        self.assertFalse(os.path.exists(mark), "the prefix ran as code")

    def test_install_sh_refuses_a_wrong_checksum(self):
        with open(os.path.join(self.tree, "park.py"), "a") as f:
            f.write("\n# tampered\n")
        self.serve_tree()
        prefix, bindir = os.path.join(self.tmp, "share", "park"), os.path.join(self.tmp, "bin")
        r = self.install("--base-url", self.env["PARK_BASE_URL"], "--bin-dir", bindir, "--prefix", prefix)
        self.assertNotEqual(r.returncode, 0, r)
        self.assertIn("sha256", r.stderr)
        self.assertFalse(os.path.exists(prefix), "something was installed")
        self.assertFalse(os.path.exists(os.path.join(bindir, "park")))

    def fake_path(self, drop=(), extra=None):
        """A PATH with the tools install.sh uses, minus `drop`, plus scripts in `extra` {name: body}."""
        d = tempfile.mkdtemp(prefix="path-", dir=self.tmp)
        for tool in ("sh", "curl", "uname", "mktemp", "cut", "id", "mkdir", "cp", "chmod", "mv", "rm", "rmdir",
                     "grep", "cat", "sha256sum", "shasum", "python3", "printf"):
            if tool in drop:
                continue
            if tool == "python3":  # the interpreter running the tests (a pyenv shim would need pyenv on PATH)
                real = os.path.realpath(sys.executable)
            else:
                real = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/bin:/bin")
            if real:
                os.symlink(real, os.path.join(d, tool))
        for name, body in (extra or {}).items():
            path = os.path.join(d, name)
            if os.path.lexists(path):
                os.unlink(path)
            with open(path, "w") as f:
                f.write("#!/bin/sh\n" + body)
            os.chmod(path, 0o755)
        env = dict(self.env)
        env["PATH"] = d
        return env

    def test_install_sh_fails_clearly(self):
        self.serve_tree()
        args = ["--base-url", self.env["PARK_BASE_URL"], "--bin-dir", os.path.join(self.tmp, "b"),
                "--prefix", os.path.join(self.tmp, "p")]
        py = os.path.realpath(sys.executable)
        cases = {
            "sha256sum nor shasum": self.fake_path(drop=("sha256sum", "shasum")),
            "python3 is not installed": self.fake_path(drop=("python3",)),
            "needs 3.9 or newer": self.fake_path(extra={"python3": 'exec %s -c "import sys; sys.exit(1)"\n' % py}),
            "does not support Darwin x86_64": self.fake_path(
                extra={"uname": '[ "$1" = -s ] && echo Darwin || echo x86_64\n'}),
        }
        for words, env in cases.items():
            with self.subTest(words=words):
                r = self.install(*args, env=env)
                self.assertEqual(r.returncode, 1, r)
                self.assertIn(words, r.stderr)
                self.assertFalse(os.path.exists(os.path.join(self.tmp, "p")), "something was installed")

    def test_shellcheck_is_clean(self):
        sc = shutil.which("shellcheck")
        if not sc:
            self.live_skip("shellcheck is not installed (CI installs it)")
        r = subprocess.run([sc, os.path.join(HERE, "install.sh")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True)
        self.assertEqual(r.returncode, 0, r.stdout)

    def test_old_pythons_get_a_message(self):
        found = [p for p in (glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/python")) +
                             [shutil.which(n) for n in ("python2", "python3.6", "python3.7", "python3.8")])
                 if p and os.path.exists(p)]
        old = []
        for p in sorted(set(os.path.realpath(x) for x in found)):
            v = subprocess.run([p, "-c", "import sys; print(sys.version_info[0] * 100 + sys.version_info[1])"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
            if v.returncode == 0 and int(v.stdout) < 309:
                old.append(p)
        if not old:
            self.skipTest("no Python older than 3.9 on this machine")
        for p in old:
            with self.subTest(python=p):
                r = subprocess.run([p, PARK, "3000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   universal_newlines=True, env=self.env, timeout=CHILD_TIMEOUT)
                self.assertEqual(r.returncode, 1, r)
                self.assertIn("needs Python 3.9 or newer", r.stderr)
                self.assertNotIn("Traceback", r.stderr)
                self.assertNotIn("SyntaxError", r.stderr)



def without_port(snap):
    """A snapshot with the port numbers taken out, to compare listeners that moved to another port."""
    out = {}
    for pid, recs in snap.items():
        out[pid] = []
        for r in recs:
            r = dict(r, options=dict(r["options"]))
            r["options"].pop("port")
            r.pop("socket")
            out[pid].append(r)
    return out


class TimerTest(LiveTestCase):
    """park PORT --for DURATION."""

    def wait_until(self, what, predicate, timeout=15):
        self.wait_for(predicate, what, timeout)

    def test_for_resumes_by_itself_after_the_shell_exits(self):
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        # The launching shell exits right after park returns; the resumer must outlive it.
        r = subprocess.run(["sh", "-c", '"$0" "$1" "$2" --for 2s; echo shell-done', sys.executable, PARK,
                            str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, env=self.env, timeout=CHILD_TIMEOUT, stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, r)
        self.assertIn("resumes by itself in 2s", r.stdout)
        self.assert_parked(proc.pid)
        e = self.entry(self.port)
        self.assertTrue(0 < e["timer_left"] <= 2, e)
        self.wait_until("the timed resume", lambda: self.is_resumed(proc.pid))
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        self.assertEqual(snapshot(self.port), before)
        self.assertEqual(self.park_list(), [])
        with open(os.path.join(self.home, "keepers", "%d.log" % self.port)) as f:
            self.assertIn("resumed pid %d" % proc.pid, f.read())

    def test_manual_resume_before_the_timer_wins(self):
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, "--for", scaled_for(1), expect=0)
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        log = os.path.join(self.home, "keepers", "%d.log" % self.port)
        self.wait_until("the timer to notice", lambda: "by hand" in open(log).read())
        self.assert_running(proc.pid)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 2))

    def test_timer_with_the_port_taken_stays_parked_and_says_why(self):
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, "--for", scaled_for(1), expect=0)
        blocker = self.start_asyncio(self.port)  # another server takes the port meanwhile
        self.wait_until("the pending note", lambda: (self.entry(self.port) or {}).get("pending"))
        e = self.entry(self.port)
        self.assertEqual(e["status"], "parked")
        self.assertIn("in use by pid %d" % blocker.pid, e["pending"])
        self.assert_parked(proc.pid)
        r = self.park("list", expect=0)
        self.assertIn("in use by pid %d" % blocker.pid, r.stdout)
        self.kill_pid(blocker.pid)
        blocker.wait(10 * TIME_SCALE)
        self.wait_until("the retried resume", lambda: self.is_resumed(proc.pid))
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))

    def test_for_into_a_closed_pipe_still_resumes(self):
        """`park PORT --for 2s | head -1`: head exits after the first line; park's next write meets a closed pipe.
        The timer is the keeper's, set up before anything was printed: the server still comes back."""
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        r = subprocess.run(["sh", "-c", '"$0" "$1" "$2" --for 2s | head -1', sys.executable, PARK, str(self.port)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=self.env,
                           timeout=CHILD_TIMEOUT, stdin=subprocess.DEVNULL)
        self.assertTrue(r.stdout.startswith("parked :%d" % self.port), r)
        self.assertEqual(r.stderr, "")
        self.assert_parked(proc.pid)
        self.wait_until("the timed resume", lambda: self.is_resumed(proc.pid))
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))

    def test_bad_durations(self):
        for bad in ("0", "abc", "5x", "-3", ""):
            with self.subTest(bad=bad):
                self.park(self.port, "--for", bad, expect=2)


class HoldTest(LiveTestCase):
    """park PORT --hold: clients wait on park's listener and are handed to the server, none reset."""

    def start_hold(self):
        hold = subprocess.Popen([sys.executable, PARK, str(self.port), "--hold"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                                universal_newlines=True)
        self.addCleanup(self._stop_proc, hold)
        deadline = time.monotonic() + 20 * TIME_SCALE
        while not (self.entry(self.port) or {}).get("waiting") == 0:
            if hold.poll() is not None or time.monotonic() > deadline:
                self.fail("the hold did not start: %s" % (hold.communicate(timeout=5 * TIME_SCALE),))
            time.sleep(0.05)
        return hold

    def clients(self, host, n):
        """n clients that connect now (while parked) and wait for their answer, in threads."""
        results = []

        def one():
            try:
                results.append(http_get(host, self.port, timeout=30))
            except Exception as e:  # counted as a failure below
                results.append(e)

        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10 * TIME_SCALE
        while (self.entry(self.port) or {}).get("waiting") != n:
            if time.monotonic() > deadline:
                self.fail("%d clients are not waiting on the hold: %s" % (n, self.entry(self.port)))
            time.sleep(0.05)
        return threads, results

    def finish(self, threads, results, n):
        for t in threads:
            t.join(30 * TIME_SCALE)
        self.assertEqual(len(results), n)
        bad = [r for r in results if not (isinstance(r, tuple) and r[0] == 200)]
        self.assertEqual(bad, [], "held clients were not all served")
        return results

    def test_hold_ctrl_c_hands_clients_to_node(self):
        proc = self.start_node(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        hold = self.start_hold()
        self.assert_parked(proc.pid)
        threads, results = self.clients("127.0.0.1", 5)
        hold.send_signal(signal.SIGINT)
        out, err = hold.communicate(timeout=30 * TIME_SCALE)
        self.assertEqual(hold.returncode, 0, err)
        self.assertIn("handed over 5 waiting client(s)", out)
        self.assertNotIn("Traceback", err)
        results = self.finish(threads, results, 5)
        self.assertEqual(sorted(parse_counter(b)[1] for _, b in results), list(range(n + 1, n + 6)))
        self.assert_running(proc.pid)
        self.assertEqual(snapshot(self.port), before)
        self.assertEqual(self.park_list(), [])

    def test_hold_resume_from_elsewhere_poll_server(self):
        root = os.path.join(self.tmp, "www")
        os.mkdir(root)
        proc = self.spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port)], cwd=root)
        self.wait_serving("127.0.0.1", self.port)
        self.wait_quiet(self.port, allow_time_wait=True)
        before = snapshot(self.port)
        hold = self.start_hold()
        threads, results = self.clients("127.0.0.1", 4)
        r = self.park("resume", self.port, expect=0)
        self.assertIn("handed over", r.stdout)
        self.finish(threads, results, 4)
        hold.communicate(timeout=30 * TIME_SCALE)
        self.assertEqual(hold.returncode, 0)
        self.assert_running(proc.pid)
        self.assertEqual(snapshot(self.port), before)

    def test_killing_the_hold_view_keeps_the_clients_waiting(self):
        """The hold's sockets are the keeper's: when the `park PORT --hold` in a terminal dies (kill -9 here; a
        closed terminal is tested in ForegroundTest), its clients keep waiting and the next resume serves them."""
        proc = self.start_node(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        hold = self.start_hold()
        threads, results = self.clients("127.0.0.1", 3)
        self.kill_pid(hold.pid)
        hold.wait(10 * TIME_SCALE)
        self.assert_parked(proc.pid)
        e = self.entry(self.port)
        self.assertEqual((e["status"], e["waiting"]), ("parked", 3))
        r = self.park("resume", self.port, expect=0)
        self.assertIn("handed over 3 waiting client(s)", r.stdout)
        results = self.finish(threads, results, 3)
        self.assertEqual(sorted(parse_counter(b)[1] for _, b in results), list(range(n + 1, n + 4)))


NODE_RAW_KEYS = r'''
// A dev server that owns its terminal as vite does: raw mode, a key answers at once (q quits).
const http = require('http');
let count = 0;
http.createServer((req, res) => {
  count += 1;
  res.end(`pid=${process.pid} count=${count}\n`);
}).listen(Number(process.argv[2]), '127.0.0.1', () => { process.stdout.write('READY\r\n'); });
process.stdin.setRawMode(true);
process.stdin.resume();
process.stdin.on('data', (d) => {
  const key = d.toString();
  if (key === 'q') process.exit(0);
  process.stdout.write(`key:${key} count=${count}\r\n`);
});
'''

FLASK_APP = r'''
import os
from flask import Flask

app = Flask(__name__)
count = [0]


@app.route("/")
def index():
    count[0] += 1
    return "pid=%d count=%d\n" % (os.getpid(), count[0])
'''


class Terminal:
    """A real interactive shell in a pseudo-terminal, typed at as a person would. Closing it hangs the
    terminal up (the master side goes away), as closing a terminal window does."""

    SHELLS = {"bash": ["bash", "--norc", "--noprofile", "-i"], "zsh": ["zsh", "-f", "-i"]}
    PROMPT = b"PROMPT$ "

    def __init__(self, test, shell="bash", env=None, cwd=None):
        import pty
        exe = shutil.which(shell)
        if exe is None:
            test.live_skip("%s is not installed" % shell)
        env = dict(env or os.environ, PS1=self.PROMPT.decode(), TERM="xterm", HISTFILE=os.devnull)
        self.test, self.buf = test, b""
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                # A login terminal starts with every signal at its default. The test runner may have been
                # started in the background of a script, which ignores SIGINT and SIGQUIT: not inherited.
                for signo in (signal.SIGINT, signal.SIGQUIT):
                    signal.signal(signo, signal.SIG_DFL)
                os.chdir(cwd or test.tmp)
                os.execve(exe, [exe] + self.SHELLS[shell][1:], env)
            finally:
                os._exit(127)
        test.addCleanup(self.close)
        self.expect(self.PROMPT)

    def pump(self, seconds=0.05):
        deadline = time.monotonic() + seconds
        while True:
            r, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))
            if r:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the shell side is gone
                    return
                self.buf += data
            if time.monotonic() >= deadline:
                return

    def type(self, text):
        os.write(self.fd, text.encode() if isinstance(text, str) else text)

    def mark(self):
        self.pump()
        return len(self.buf)

    def expect(self, pattern, since=0, timeout=20):
        """Wait until pattern (bytes or regex) shows up after offset `since`; returns the match."""
        rx = re.compile(re.escape(pattern) if isinstance(pattern, bytes) else pattern.encode())
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.buf, since)
            if m:
                return m
            if time.monotonic() > deadline:
                self.test.fail("the terminal never showed %r; it shows:\n%s" % (pattern, self.text(since)))
            self.pump(0.05)

    def text(self, since=0):
        return self.buf[since:].decode("utf-8", "replace")

    def foreground(self):
        """The terminal's foreground process group (tcgetpgrp)."""
        return os.tcgetpgrp(self.fd)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


class ForegroundTest(LiveTestCase):
    """A server in the foreground of a real interactive shell, parked from elsewhere: the shell sees nothing,
    and the server comes back exactly as it was, in its terminal. Driven through a pty as a person types."""

    def start_in(self, term, command, port):
        """Type command at the shell; returns the server's pid (from its answer), stopped at cleanup."""
        term.type(command + "\n")
        body = self.wait_serving("127.0.0.1", port)
        pid = parse_counter(body)[0]
        self.addCleanup(self.kill_pid, pid)
        return pid

    def asyncio_in(self, term, background=False):
        """The asyncio fixture typed at term (with `&` in the background); returns its pid."""
        path = self.write("fixture.py", PY_ASYNCIO)
        return self.start_in(term, "%s %s %d%s" % (sys.executable, path, self.port, " &" if background else ""),
                             self.port)

    def node_in_the_foreground(self, shell):
        if not shutil.which("node"):
            self.live_skip("node is not installed")
        term = Terminal(self, shell)
        path = self.write("server.js", NODE_HTTP)
        pid = self.start_in(term, "node %s %d" % (path, self.port), self.port)
        self.assertEqual(term.foreground(), os.getpgid(pid), "the server is not the terminal's foreground")
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        mark = term.mark()
        self.park_ok(self.port, [pid], "127.0.0.1")
        self.assert_port_free(self.port, [(socket.AF_INET, "127.0.0.1")])
        term.pump(0.5)
        self.assertEqual(term.text(mark), "", "the terminal printed something at park")
        self.assertEqual(term.foreground(), os.getpgid(pid), "the shell took its terminal back")
        self.park("resume", self.port, expect=0)
        term.pump(0.3)
        self.assertEqual(term.text(mark), "", "the terminal printed something at resume")
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        self.assertEqual(snapshot(self.port), before)
        self.assertEqual(term.foreground(), os.getpgid(pid), "after resume the server is not in the foreground")
        term.type("\x03")  # Ctrl+C typed at it reaches it, as before park
        self.wait_for(lambda: proc_state(pid) in (None, "Z"), "Ctrl+C to end the resumed server")
        term.expect(Terminal.PROMPT, since=mark)

    def test_node_in_the_foreground_of_bash(self):
        self.node_in_the_foreground("bash")

    def test_node_in_the_foreground_of_zsh(self):
        self.node_in_the_foreground("zsh")

    def test_ctrl_z_fg_and_bg_while_parked(self):
        """Job control works as always on a parked server: Ctrl+Z gives the shell its prompt back, `bg` and
        `fg` continue the job, and through all of it the server stays parked until park resume."""
        term = Terminal(self, "bash")
        pid = self.asyncio_in(term)
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        mark = term.mark()
        term.type("\x1a")
        term.expect(r"Stopped.*\r?\n.*PROMPT\$ ", since=mark)
        self.assertEqual(term.foreground(), os.getpgid(term.pid), "the shell did not take the terminal back")
        self.assert_parked(pid)
        self.assertEqual(self.entry(self.port)["status"], "parked")
        for command in ("bg", "fg"):
            mark = term.mark()
            term.type(command + "\n")
            term.pump(0.6)
            self.assert_parked(pid)
            self.assertEqual(listen_inodes(self.port), set(), "%s brought the listener back" % command)
        self.assertEqual(term.foreground(), os.getpgid(pid), "fg did not give the terminal to the server")
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        self.assertEqual(term.foreground(), os.getpgid(pid))
        term.type("jobs\n")  # typed at the server (it does not read): the shell reads it once the server ends
        term.type("\x03")
        self.wait_for(lambda: proc_state(pid) in (None, "Z"), "Ctrl+C to end the server")

    def test_raw_mode_server_answers_keys_after_resume(self):
        """A server that reads its terminal in raw mode (as vite does for its shortcut keys) gets its keys after
        resume: it was never moved to the background, so no SIGTTIN stops it."""
        if not shutil.which("node"):
            self.live_skip("node is not installed")
        term = Terminal(self, "bash")
        path = self.write("keys.js", NODE_RAW_KEYS)
        pid = self.start_in(term, "node %s %d" % (path, self.port), self.port)
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        self.park("resume", self.port, expect=0)
        mark = term.mark()
        term.type("h")
        term.expect(b"key:h count=%d" % (n,), since=mark)
        self.assert_running(pid)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        term.type("q")
        self.wait_for(lambda: proc_state(pid) in (None, "Z"), "q to end the server")

    def test_flask_reloader_in_the_foreground(self):
        """`flask run --debug`: the reloader and its child both hold the listener; both are parked, both come
        back, and Ctrl+C ends them as before."""
        try:
            import flask  # noqa: F401  (installed by .ci/run)
        except ImportError:
            self.live_skip("flask is not installed (pip install flask)")
        self.write("app.py", FLASK_APP)
        term = Terminal(self, "bash")
        child = self.start_in(term, "%s -m flask --app app run --debug --host 127.0.0.1 --port %d"
                              % (sys.executable, self.port), self.port)
        pids = sorted(holders_of(listen_inodes(self.port)))
        self.assertIn(child, pids)
        self.assertEqual(len(pids), 2, "the reloader and its child: %s" % pids)
        for p in pids:
            self.addCleanup(self.kill_pid, p)
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        mark = term.mark()
        self.park_ok(self.port, pids, "127.0.0.1")
        self.assert_port_free(self.port, [(socket.AF_INET, "127.0.0.1")])
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (child, n + 1))
        self.assertEqual(snapshot(self.port), before)
        self.assertNotIn("Stopped", term.text(mark))
        self.assertEqual(term.foreground(), os.getpgid(child))
        term.type("\x03")
        for p in pids:
            self.wait_for(lambda: proc_state(p) in (None, "Z"), "Ctrl+C to end pid %d" % p)

    def test_background_server_survives_its_shell_exiting_while_parked(self):
        term = Terminal(self, "bash")
        pid = self.asyncio_in(term, background=True)
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        term.type("exit\n")
        self.wait_for(lambda: proc_state(term.pid) in (None, "Z"), "the shell to exit")
        term.close()
        time.sleep(0.5)
        self.assert_parked(pid)
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))

    def test_ctrl_c_at_a_parked_server_ends_it(self):
        term = Terminal(self, "bash")
        pid = self.asyncio_in(term)
        self.wait_quiet(self.port)
        self.park(self.port, "--for", "5m", expect=0)
        keeper = self.keeper_of(pid)
        term.type("\x03")
        self.wait_for(lambda: proc_state(pid) in (None, "Z"), "Ctrl+C to end the parked server")
        term.expect(Terminal.PROMPT, since=term.mark() - 200)
        e = self.entry(self.port)
        self.assertEqual(e["status"], "gone")
        self.assertIn("SIGINT was sent to pid %d" % pid, e["ended"])
        self.assertIsNone(e["keeper"])
        self.wait_for(lambda: proc_state(keeper) in (None, "Z"), "the keeper (and its timer) to exit")
        r = self.park("list", expect=0)
        self.assertIn("ended: SIGINT was sent to pid %d" % pid, r.stdout)

    def test_closing_the_terminal_of_a_hold_loses_no_client(self):
        if not shutil.which("node"):
            self.live_skip("node is not installed")
        proc = self.start_node(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        term = Terminal(self, "bash", env=self.env)
        term.type("%s %s %d --hold\n" % (sys.executable, PARK, self.port))
        term.expect(b"holding :%d" % self.port)
        results = []

        def one():
            try:
                results.append(http_get("127.0.0.1", self.port, timeout=30))
            except Exception as e:  # counted below
                results.append(e)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        self.wait_for(lambda: (self.entry(self.port) or {}).get("waiting") == 4, "4 clients waiting on the hold")
        term.close()  # the terminal window goes away: hangup, then EIO on its tty
        time.sleep(0.5)
        self.assertEqual(self.entry(self.port)["waiting"], 4)
        self.assert_parked(proc.pid)
        r = self.park("resume", self.port, expect=0)
        self.assertIn("handed over 4 waiting client(s)", r.stdout)
        for t in threads:
            t.join(30 * TIME_SCALE)
        self.assertEqual(sorted(parse_counter(b)[1] for _, b in results), list(range(n + 1, n + 5)))


TWO_PORTS = r"""
import socket, sys
socks = []
for port in sys.argv[1:]:
    s = socket.socket()
    s.bind(("127.0.0.1", int(port)))
    s.listen(8)
    socks.append(s)
print("READY", flush=True)
import time
while True:
    time.sleep(3600)
"""


class RunTest(LiveTestCase):
    """park PORT -- COMMAND: the port is free while COMMAND runs, the server comes back when it ends."""

    def setUp(self):
        super().setUp()
        # COMMAND is park's child, not the test's: whatever still holds the port at the end is stopped by pid.
        self.addCleanup(lambda: [self.kill_pid(p) for p in holders_of(listen_inodes(self.port))])

    def test_command_exit_status_and_the_server_comes_back(self):
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        serve_one = ("import socket, sys\ns = socket.socket()\ns.bind(('127.0.0.1', %d))\ns.listen(1)\n"
                     "s.settimeout(30)\n"
                     "c, _ = s.accept()\nc.recv(4096)\nc.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\ninterim')\n"
                     "c.close()\nsys.exit(3)\n" % self.port)
        park = subprocess.Popen([sys.executable, PARK, str(self.port), "--", sys.executable, "-c", serve_one],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env,
                                universal_newlines=True)
        self.addCleanup(self._stop_proc, park)
        lines = []
        while not any("running:" in l for l in lines):
            lines.append(park.stdout.readline())
            if not lines[-1]:
                self.fail("park exited early: %s" % (park.communicate(timeout=10 * TIME_SCALE),))
        self.assertEqual(self.wait_serving("127.0.0.1", self.port), "interim")
        rest, err = park.communicate(timeout=CHILD_TIMEOUT)
        self.assertEqual(park.returncode, 3, err)
        self.assertIn("resumed :%d  pid %d" % (self.port, pid), rest)
        self.assertEqual(snapshot(self.port), before)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        self.assertEqual(self.park_list(), [])

    def test_ctrl_c_ends_the_command_and_the_server_comes_back(self):
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        term = Terminal(self, "bash", env=self.env)
        term.type("%s %s %d -- %s -c 'import time; time.sleep(60)'\n" % (sys.executable, PARK, self.port,
                                                                          sys.executable))
        term.expect(b"running: ")
        time.sleep(0.5)
        self.assert_parked(proc.pid)
        mark = term.mark()
        term.type("\x03")
        term.expect(b"resumed :%d" % self.port, since=mark)
        term.expect(Terminal.PROMPT, since=mark)
        mark = term.mark()
        term.type("echo status=$?\n")
        term.expect(b"status=130", since=mark)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))

    def test_a_command_that_leaves_the_port_taken(self):
        """COMMAND leaves a server of its own on the port: park says so, exits 1, the server stays parked."""
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        leave = ("import os, socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', %d))\ns.listen(1)\n"
                 "if os.fork():\n    os._exit(0)\nos.setsid()\nprint(os.getpid(), flush=True)\n"
                 "n = os.open(os.devnull, os.O_RDWR)\nos.dup2(n, 1)\nos.dup2(n, 2)\ntime.sleep(60)\n"
                 % self.port)
        r = self.park(self.port, "--", sys.executable, "-c", leave, expect=1)
        left = int(r.stdout.strip().split("\n")[-1])
        self.addCleanup(self.kill_pid, left)
        self.assertIn("cannot be resumed", r.stderr)
        self.assertIn("in use by pid %d" % left, r.stderr)
        self.assert_parked(proc.pid)
        self.kill_pid(left)
        self.wait_for(lambda: not listen_inodes(self.port), "the leftover to go")
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))


class SeveralPortsTest(LiveTestCase):
    def test_two_ports_in_one_call(self):
        """park 3000 5173 parks each on its own; resume both at once; a port that fails is said and the exit
        code says not all succeeded, while the other is still done."""
        other = free_port()
        a, b = self.start_asyncio(self.port), self.start_asyncio(other)
        ca, cb = self.get_count("127.0.0.1", self.port), self.get_count("127.0.0.1", other)
        self.wait_quiet(self.port)
        self.wait_quiet(other)
        r = self.park(self.port, other, expect=0)
        self.assertIn("parked :%d" % self.port, r.stdout)
        self.assertIn("parked :%d" % other, r.stdout)
        self.assert_parked(a.pid)
        self.assert_parked(b.pid)
        r = self.park("resume", self.port, other, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (a.pid, ca[1] + 1))
        self.assertEqual(self.get_count("127.0.0.1", other), (b.pid, cb[1] + 1))
        free = free_port()
        r = subprocess.run([sys.executable, PARK, str(free), str(self.port)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, env=self.env, timeout=CHILD_TIMEOUT)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("nothing is listening on :%d" % free, r.stderr)
        self.assertIn("parked :%d" % self.port, r.stdout)
        self.park("resume", self.port, expect=0)


class DisplayTest(LiveTestCase):
    """How commands are shown: fitted to a terminal, whole in a pipe and in --json, one line per command."""

    LONG = "--some-very-long-option=" + "a" * 280

    def run_in_pty(self, *args, cols=80, env=None):
        """park ARGS with stdout and stderr on a pseudo-terminal of 24 x cols (and COLUMNS=cols); its output."""
        import fcntl
        import termios
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, cols, 0, 0))
        proc = subprocess.Popen([sys.executable, PARK] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                                stdout=slave, stderr=slave, env=dict(env or self.env, COLUMNS=str(cols)))
        os.close(slave)
        self.addCleanup(self._stop_proc, proc)
        data = b""
        while True:
            r, _, _ = select.select([master], [], [], CHILD_TIMEOUT)
            try:
                chunk = os.read(master, 65536) if r else b""
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                break
            data += chunk
        self.assertEqual(proc.wait(timeout=CHILD_TIMEOUT), 0, data)
        return data.decode("utf-8", "replace").replace("\r\n", "\n")

    def start_long(self):
        path = self.write("fixture-long.py", PY_ASYNCIO)
        proc = self.spawn([sys.executable, "-u", path, str(self.port), self.LONG])
        self.read_ready(proc)
        self.wait_serving("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        return proc

    def test_json_keeps_a_300_character_argv_whole(self):
        self.start_long()
        r = self.park(self.port, expect=0)
        self.assertIn(self.LONG, r.stdout, "park's line is cut in a pipe")
        e = self.entry(self.port)
        argv = [sys.executable, "-u", os.path.join(self.tmp, "fixture-long.py"), str(self.port), self.LONG]
        self.assertEqual(e["argv"], argv)
        self.assertEqual(e["holders"][0]["argv"], argv)
        self.assertEqual(e["command"], " ".join([os.path.basename(sys.executable)] + argv[1:]))
        self.assertTrue(e["command"].endswith(self.LONG), "the JSON command is cut")
        self.assertTrue(e["holders"][0]["command"].endswith(self.LONG))
        self.assertIn(self.LONG, self.park("list", expect=0).stdout, "park list is cut in a pipe")
        self.park("resume", self.port, expect=0)

    def test_list_at_80_columns_in_a_terminal_fits(self):
        """In a terminal of 80 columns every line of park list, park and park's own lines fits; the program
        is named by its name, not its directory; piped, the same list keeps the whole command."""
        proc = self.start_long()
        out = self.run_in_pty(self.port)
        self.assertIn("parked :%d  pid %d  %s -u " % (self.port, proc.pid, os.path.basename(sys.executable)), out)
        for args in (("list",), ()):
            with self.subTest(args=args):
                out = self.run_in_pty(*args)
                row = [l for l in out.split("\n") if l.startswith(":%d " % self.port)]
                self.assertEqual(len(row), 1, out)
                self.assertTrue(row[0].endswith("..."), row[0])
                self.assertIn(" %s -u " % os.path.basename(sys.executable), row[0])
                self.assertNotIn(os.path.dirname(sys.executable), row[0])
                long_lines = [l for l in out.split("\n") if len(l) > 80]
                self.assertEqual(long_lines, [], "lines wider than the terminal")
        out = self.run_in_pty("list", cols=120)
        row = [l for l in out.split("\n") if l.startswith(":%d " % self.port)][0]
        self.assertEqual(len(row), 120, "the command does not use the room a wider terminal has")
        self.park("resume", self.port, expect=0)

    def test_holders_with_one_command_are_one_line(self):
        """A prefork server's master and two workers run the same command: one line each in park, park list and
        resume (with how many), not three identical lines; their pids are all named."""
        proc, words = self.start_python(PY_PREFORK, self.port)
        pids = [proc.pid] + sorted(int(w) for w in words)
        for pid in pids[1:]:
            self.addCleanup(self.kill_pid, pid)
        self.wait_serving("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        r = self.park(expect=0)
        rows = [l for l in r.stdout.splitlines() if l.startswith(":%d " % self.port)]
        self.assertEqual(len(rows), 1, r.stdout)
        self.assertRegex(rows[0], r"listening .* (\u00d7|x)3$")
        r = self.park(self.port, expect=0)
        lines = [l for l in r.stdout.splitlines() if l.startswith("parked :")]
        self.assertEqual(len(lines), 1, r.stdout)
        self.assertIn("pid %s  " % ",".join(map(str, pids)), lines[0])
        self.assertRegex(lines[0], r" (\u00d7|x)3$")
        rows = [l for l in self.park("list", expect=0).stdout.splitlines() if l.startswith(":%d " % self.port)]
        self.assertEqual(len(rows), 1)
        self.assertRegex(rows[0], r" (\u00d7|x)3$")
        r = self.park("list", expect=0, env=dict(self.env, PYTHONIOENCODING="ascii"))
        self.assertTrue([l for l in r.stdout.splitlines() if l.startswith(":%d " % self.port)][0].endswith(" x3"),
                        "an ASCII output gets no \u00d7")
        row = [l for l in self.run_in_pty("list").split("\n") if l.startswith(":%d " % self.port)][0]
        self.assertEqual(row.split()[1], "%d+2" % pids[0], "many pids on a terminal: the first and how many more")
        r = self.park("resume", self.port, expect=0)
        self.assertEqual(len([l for l in r.stdout.splitlines() if l.startswith("resumed :")]), 1, r.stdout)


class KeeperTest(LiveTestCase):
    """The keeper that holds a park."""

    def test_killed_keeper_leaves_the_server_running_and_resumable(self):
        proc = self.start_node(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        self.park(self.port, expect=0)
        keeper = self.keeper_of(pid)
        os.kill(keeper, signal.SIGKILL)
        self.wait_for(lambda: (self.entry(self.port) or {}).get("status") == "running", "list to say running")
        self.assert_running(pid)
        self.assertEqual(int(_read_text("/proc/%d/status" % pid).split("TracerPid:")[1].split()[0]), 0)
        e = self.entry(self.port)
        self.assertIn("keeper, pid %d, is gone" % keeper, e["ended"])
        r = self.park("list", expect=0)
        self.assertIn("runs without its listener", r.stdout)
        self.assertEqual(listen_inodes(self.port), set())
        time.sleep(0.5)
        self.assert_running(pid)  # it runs on, without its listener: no SIGTRAP, no injected registers
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        self.assertEqual(snapshot(self.port), before)

    def test_sigkill_while_parked_is_reported(self):
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        keeper = self.keeper_of(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10 * TIME_SCALE)
        self.wait_for(lambda: proc_state(keeper) in (None, "Z"), "the keeper to exit")
        e = self.entry(self.port)
        self.assertEqual((e["status"], e["keeper"]), ("gone", None))
        self.assertIn("pid %d killed by SIGKILL" % proc.pid, e["ended"])

    def test_an_uncaught_deadly_signal_ends_the_park(self):
        """SIGUSR2, which the fixture does not catch, would end the process: it ends the park and does so."""
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        os.kill(proc.pid, signal.SIGUSR2)
        self.assertEqual(proc.wait(10 * TIME_SCALE), -signal.SIGUSR2)
        self.assertIn("SIGUSR2 was sent to pid %d" % proc.pid, self.entry(self.port)["ended"])

    def test_a_caught_signal_waits_for_resume(self):
        """A signal the server catches (SIGUSR1 with a handler) leaves it parked; it is delivered at resume."""
        proc, _ = self.start_python(PY_ACCEPT_TERM.replace("signal.SIGTERM", "signal.SIGUSR1"), self.port)
        self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(1.0)
        self.assert_parked(proc.pid)
        self.park("resume", self.port, expect=0)
        self.assertEqual(proc.wait(10 * TIME_SCALE), 42, "the handler ran once resumed")

    def test_sigterm_to_the_keeper_resumes_the_server(self):
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        keeper = self.keeper_of(proc.pid)
        os.kill(keeper, signal.SIGTERM)
        self.wait_for(lambda: proc_state(keeper) in (None, "Z"), "the keeper to exit")
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))
        self.assertEqual(self.park_list(), [])

    def test_a_signal_queued_before_the_park_does_not_end_it(self):
        """A server that blocks SIGUSR1 and has one queued (say, for a signalfd it reads later) stays parked."""
        src = PY_ASYNCIO.replace("asyncio.run(", "import signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1}); "
                                 "os.kill(os.getpid(), signal.SIGUSR1)\nasyncio.run(", 1)
        self.assertNotEqual(src, PY_ASYNCIO)
        proc, _ = self.start_python(src, self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        time.sleep(1.0)
        self.assert_parked(proc.pid)
        self.park("resume", self.port, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (pid, n + 1))

    def test_stop_signals_that_would_not_stop_it_are_left_alone(self):
        """SIGTSTP to a parked server in an orphaned process group (the kernel discards it there), or one that
        blocks SIGTSTP: the server stays parked, is not stopped by it after resume, and the log says so once."""
        blocked = PY_ASYNCIO.replace("asyncio.run(", "import signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTSTP})"
                                     "\nasyncio.run(", 1)
        for name, source, session in (("orphaned", PY_ASYNCIO, True), ("blocked", blocked, False)):
            with self.subTest(case=name):
                port = free_port()
                path = self.write("fixture-%s.py" % name, source)
                proc = subprocess.Popen([sys.executable, "-u", path, str(port)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        start_new_session=session)
                self.addCleanup(self._stop_proc, proc)
                self.read_ready(proc)
                pid, n = self.get_count("127.0.0.1", port)
                self.wait_quiet(port)
                self.park(port, expect=0)
                os.kill(proc.pid, signal.SIGTSTP)
                time.sleep(1.0)
                self.assert_parked(proc.pid)
                self.park("resume", port, expect=0)
                time.sleep(0.3)
                self.assert_running(proc.pid)
                self.assertEqual(self.get_count("127.0.0.1", port), (pid, n + 1))
                with open(os.path.join(self.home, "keepers", "%d.log" % port)) as f:
                    self.assertEqual(f.read().count("does not stop it"), 1)

    def test_stop_and_continue_in_a_rush_keep_it_parked(self):
        """SIGTSTP and SIGCONT sent back to back, 30 times (a SIGCONT can land while the keeper lets the stop
        happen): the keeper lives on, the server stays parked, and SIGTERM still ends the park."""
        proc, _ = self.start_python(PY_ACCEPT_TERM, self.port)
        self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        keeper = self.keeper_of(proc.pid)
        for i in range(30):
            os.kill(proc.pid, signal.SIGTSTP)
            time.sleep(random.uniform(0, 0.3))
            os.kill(proc.pid, signal.SIGCONT)
        time.sleep(0.6)
        self.assertNotIn(proc_state(keeper), (None, "Z"), "the keeper died")
        self.assert_parked(proc.pid)
        os.kill(proc.pid, signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=10 * TIME_SCALE), 42)

    def test_a_process_parked_on_one_port_is_named_on_another(self):
        other = free_port()
        path = self.write("two.py", TWO_PORTS)
        proc = self.spawn([sys.executable, "-u", path, str(self.port), str(other)])
        self.read_ready(proc)
        self.park(self.port, expect=0)
        keeper = self.keeper_of(proc.pid)
        r = self.park(other, expect=1)
        self.assertIn("pid %d (python3) is already parked on :%d (held by keeper pid %d)" % (proc.pid, self.port,
                                                                                             keeper), r.stderr)
        self.assertIn("park resume %d, then park %d" % (self.port, other), r.stderr)
        self.park("resume", self.port, expect=0)

    def test_list_names_the_keeper(self):
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        keeper = self.keeper_of(proc.pid)
        self.assertEqual(self.entry(self.port)["keeper"], keeper)
        r = self.park("list", expect=0)
        self.assertEqual(r.stdout.split("\n")[0].split()[5], "KEEPER")
        self.assertEqual(r.stdout.split("\n")[1].split()[5], str(keeper))
        self.park("resume", self.port, expect=0)
        self.wait_for(lambda: proc_state(keeper) in (None, "Z"), "the keeper to exit after resume")



# "rerun" is reached on arm64 only (Tracer._rerun)
KILL_STEPS = ("seek", "entry", "queued", "injected", "running", "exit", "restored", "back", "delivery", "settle",
              "rerun")


class KillTest(LiveTestCase):
    """SIGKILL of the keeper inside each step of an injected call (PARK_FAILPOINT=pause:STEP:N pauses it
    there and writes its pid to PARK_FAILPOINT_FILE), during park and during resume: the target never dies,
    never runs with injected registers, and the next `park resume` (the interrupted one itself, for a kill
    during resume) brings it back whole: same pid, counter going on, the same listener, no fd left over.
    By default each step is tried at its first three occurrences and every sixth after that;
    PARK_KILL_MATRIX=1 tries every step of every call."""

    def test_sigkill_at_each_injected_step_is_recovered(self):
        proc = self.start_node(self.port)
        self.run_matrix(proc.pid)

    def test_sigkill_in_a_single_threaded_epoll_server_is_recovered(self):
        proc = self.start_asyncio(self.port)
        self.run_matrix(proc.pid, steps=("entry", "injected", "exit", "restored", "delivery"))

    def test_sigkill_in_a_prefork_server_is_recovered(self):
        """Three holders of one socket (a master and two epoll workers, one under a second fd number): the
        other holders get the socket with SCM_RIGHTS at resume, through an injected socket, connect and
        recvmsg. (A worker blocked in accept() itself would get EBADF whenever it runs without its listener,
        as after a keeper killed while parked, and this fixture's workers would die of that.)"""
        proc, words = self.start_python(PY_PREFORK_EPOLL, self.port)
        self.get_count("127.0.0.1", self.port)
        self.run_matrix(proc.pid, steps=("queued", "exit"), others=[int(w) for w in words])

    def run_matrix(self, pid, steps=KILL_STEPS, others=()):
        full = os.environ.get("PARK_KILL_MATRIX") == "1"
        self.wait_quiet(self.port)
        pids = [pid] + list(others)
        before = snapshot(self.port)
        fds = {p: sorted(os.listdir("/proc/%d/fd" % p)) for p in pids}
        results = []
        for step in steps:
            for n in range(1, 64):
                if not full and n > 3 and n % 6 and step not in ("seek", "settle"):
                    continue  # most of the later calls: only with PARK_KILL_MATRIX=1
                where = self.kill_at(pids, step, n, before, fds)
                if where is None:
                    break
                results.append((step, n, where))
        sys.stderr.write("\n  killed the keeper at %d points (%d in park, %d in resume); all recovered\n"
                         % (len(results), sum(w == "park" for _, _, w in results),
                            sum(w == "resume" for _, _, w in results)))
        self.assertTrue(any(w == "park" for _, _, w in results) and any(w == "resume" for _, _, w in results))

    def kill_at(self, pids, step, n, before, fds):
        """One kill at the nth time the keeper reaches step; None when it never got there (the whole park
        and resume ran). Returns "park" or "resume", after checking the recovery."""
        pid = pids[0]
        count = self.counted(pids)
        self.wait_quiet(self.port)
        mark = os.path.join(self.tmp, "failpoint")
        if os.path.exists(mark):
            os.unlink(mark)
        env = dict(self.env, PARK_FAILPOINT="pause:%s:%d" % (step, n), PARK_FAILPOINT_FILE=mark)
        what = "%s:%d" % (step, n)
        cli = subprocess.Popen([sys.executable, PARK, str(self.port)], stdin=subprocess.DEVNULL, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        where = "park"
        keeper = self.wait_mark(mark, cli)
        if keeper is None:
            out, err = cli.communicate(timeout=CHILD_TIMEOUT)
            self.assertEqual(cli.returncode, 0, "%s: %s" % (what, err))
            cli = subprocess.Popen([sys.executable, PARK, "resume", str(self.port)], stdin=subprocess.DEVNULL,
                                   env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   universal_newlines=True)
            where = "resume"
            keeper = self.wait_mark(mark, cli)
            if keeper is None:
                out, err = cli.communicate(timeout=CHILD_TIMEOUT)
                self.assertEqual(cli.returncode, 0, "%s: %s" % (what, err))
                self.assertEqual(self.counted(pids), count + 1, what)
                return None
        os.kill(keeper, signal.SIGKILL)
        out, err = cli.communicate(timeout=CHILD_TIMEOUT)
        self.assertNotIn("Traceback", err, what)
        for p in pids:
            self.assertNotIn(proc_state(p), (None, "Z", "X"), "%s: pid %d died" % (what, p))
        if where == "park":
            self.assertEqual(cli.returncode, 1, "%s: %s" % (what, err))
            self.wait_for(lambda: proc_state(keeper) in (None, "Z"), "the keeper to be gone")
            time.sleep(0.2)
            for p in pids:
                self.assertNotIn(proc_state(p), (None, "Z", "X"), "%s: pid %d died" % (what, p))
            if "runs as it was" in err:  # killed before its first change: nothing to undo
                self.assertEqual(self.park_list(), [], what)
            else:
                listed = self.park("list", expect=0).stdout
                self.assertIn("park resume %d" % self.port, listed, what)
                self.assertIn("park resume %d" % self.port, err, what)
                self.park("resume", self.port, expect=0)
        else:
            self.assertEqual(cli.returncode, 0, "%s: the interrupted resume did not recover: %s" % (what, err))
        for p in pids:
            self.assertNotIn(proc_state(p), ("T", "t", "Z", "X", None), "%s: %s" % (what, thread_states(p)))
            self.assertEqual(int(_read_text("/proc/%d/status" % p).split("TracerPid:")[1].split()[0]), 0)
        self.assertEqual(self.counted(pids), count + 1, what)
        self.wait_quiet(self.port)
        self.assertEqual(snapshot(self.port), before, what)
        for p in pids:
            self.assertEqual(sorted(os.listdir("/proc/%d/fd" % p)), fds[p], "%s: fds left over in %d" % (what, p))
        self.assertEqual(self.park_list(), [], what)
        return where

    def counted(self, pids):
        """The server's request count (one process: its counter; several: requests served, from one
        connection's answer each) after one more request; it must come from one of pids."""
        served, n = self.get_count("127.0.0.1", self.port)
        self.assertIn(served, pids)
        if len(pids) == 1:
            return n
        self._served = getattr(self, "_served", 0) + 1
        return self._served

    def wait_mark(self, mark, cli, timeout=CHILD_TIMEOUT):
        """The pid of the park process paused at the failpoint, or None once cli has exited without it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(mark) as f:
                    text = f.read()
                if text.endswith("\n"):
                    return int(text.split()[0])
            except (OSError, ValueError):
                pass
            if cli.poll() is not None and not os.path.exists(mark):
                return None
            time.sleep(0.01)
        self.fail("park neither paused nor ended")


def users_python():
    """A python3 that the test users can run: this one, unless it lives in a private directory (pyenv in
    /root), then the system's."""
    for exe in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        d, ok = os.path.realpath(exe), True
        while d != "/":
            d = os.path.dirname(d)
            ok = ok and bool(os.stat(d).st_mode & 0o001)
        if ok and os.path.exists(exe) and os.stat(os.path.realpath(exe)).st_mode & 0o005 == 0o005:
            return exe
    return None


class TwoUsersTestCase(LiveTestCase):
    """Two real unprivileged users, made for these tests and deleted after (A and B), and park run as either
    of them or as root."""

    users = []

    @classmethod
    def setUpClass(cls):
        cls.users = []
        if os.geteuid() != 0 or not shutil.which("useradd"):
            return
        import pwd
        cls.homes = tempfile.mkdtemp(prefix="park-users-")
        os.chmod(cls.homes, 0o755)
        for tag in ("a", "b"):
            name = "parkt%s%d" % (tag, os.getpid() % 100000)
            home = os.path.join(cls.homes, name)
            r = subprocess.run(["useradd", "-M", "-d", home, "-s", "/bin/sh", name],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if r.returncode != 0:
                break
            user = pwd.getpwnam(name)
            os.mkdir(home, 0o700)
            os.chown(home, user.pw_uid, user.pw_gid)
            cls.users.append(user)

    @classmethod
    def tearDownClass(cls):
        for u in cls.users:
            subprocess.run(["userdel", u.pw_name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cls.users = []
        if getattr(cls, "homes", None):
            shutil.rmtree(cls.homes, ignore_errors=True)

    def setUp(self):
        super().setUp()
        if len(self.users) != 2:
            self.live_skip("needs root and useradd to make two test users")
        self.a, self.b = self.users
        os.chmod(self.tmp, 0o755)
        self.pub = os.path.join(self.tmp, "pub")  # readable by the test users: park, its backend, fixtures
        os.mkdir(self.pub, 0o755)
        for f in (PARK,) + BACKEND_PATHS:
            shutil.copy(f, self.pub)
        self.park_py = os.path.join(self.pub, "park.py")
        self.python = users_python()
        if self.python is None:
            self.live_skip("no python3 that other users may run (this one lives in a private directory)")
        self.home_a = self.user_dir(self.a, "home-a")
        self.home_b = self.user_dir(self.b, "home-b")

    def user_dir(self, user, name, mode=0o700):
        path = os.path.join(self.tmp, name)
        os.mkdir(path)
        os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(path, mode)
        return path

    def as_user(self, user):
        def drop():
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        return drop

    def run_park(self, *args, user=None, home=None, env=None, expect=None):
        e = dict(env or self.env)
        if home is not None:
            e["PARK_HOME"] = home
        argv = [self.python, self.park_py] + [str(a) for a in args]
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=e,
                           timeout=CHILD_TIMEOUT, stdin=subprocess.DEVNULL, cwd=self.pub,
                           preexec_fn=self.as_user(user) if user else None)
        what = "park %s (as %s) -> %d\nstdout: %s\nstderr: %s" % (" ".join(map(str, args)), user.pw_name if user
                                                                 else "root", r.returncode, r.stdout, r.stderr)
        self.check_output_form(r, what)
        self.assertNotIn("unexpected error", r.stderr, what)
        if expect is not None:
            self.assertEqual(r.returncode, expect, what)
        return r

    def server_as(self, user, port):
        """An asyncio fixture running as user (SIGUSR1 would kill it: it has no handler)."""
        path = os.path.join(self.pub, "fixture-%d.py" % port)
        with open(path, "w") as f:
            f.write(PY_ASYNCIO)
        os.chmod(path, 0o644)
        log = open(os.path.join(self.tmp, "log-%d.txt" % port), "w+")
        self.addCleanup(log.close)
        proc = subprocess.Popen([self.python, "-u", path, str(port)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=log, cwd=self.pub, preexec_fn=self.as_user(user))
        proc.log = log
        self.addCleanup(self._stop_proc, proc)
        self.read_ready(proc)
        self.wait_serving("127.0.0.1", port)
        return proc

    def write_as(self, user, path, data):
        """Write a file as user (as that user would plant it)."""
        code = "import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read())"
        subprocess.run([self.python, "-c", code, path], input=data, check=True, preexec_fn=self.as_user(user))

    def hostile(self, port, pid, start, **extra):
        rec = good_record(load_module("park_sec", PARK), port=port, pid=pid, start=start)
        rec.update(extra)
        return json.dumps(rec).encode()

    def start_of(self, pid):
        return int(_read_text("/proc/%d/stat" % pid).rsplit(")", 1)[1].split()[19])


class SecurityTest(TwoUsersTestCase):
    """A, whose state directory root may use, and B, whose processes nothing of A's may touch. Every attack is
    a real file, link or process."""

    def test_hostile_state_files_make_root_refuse(self):
        """Root using A's state directory, where A wrote state files that name B's running server, pid 1 of a
        pid namespace, A's own server that was never parked, or a fake hold: every command refuses, and the
        victims keep running untouched (B's server gets no SIGUSR1, no new fd, no signal)."""
        victim = self.server_as(self.b, self.port)
        before = (snapshot(self.port), sorted(_fd_links(victim.pid).items()))
        own_port = free_port()
        own = self.server_as(self.a, own_port)
        os.mkdir(os.path.join(self.home_a, "parked"))
        os.chown(os.path.join(self.home_a, "parked"), self.a.pw_uid, self.a.pw_gid)
        os.chmod(os.path.join(self.home_a, "parked"), 0o700)
        cases = {
            "B's server": (self.port, victim.pid, self.start_of(victim.pid), {}),
            "B's server as a hold": (self.port, own.pid, self.start_of(own.pid),
                                     {"hold": {"pid": victim.pid, "starttime": self.start_of(victim.pid),
                                               "sockets": [{"inode": 1, "family": 2}]}}),
            "pid 1": (self.port, 1, 0, {}),
            "A's server, never parked": (own_port, own.pid, self.start_of(own.pid), {}),
            "a timer due long ago": (self.port, victim.pid, self.start_of(victim.pid), {"timer": {"until": 1.0}}),
        }
        for name, (port, pid, start, extra) in cases.items():
            with self.subTest(case=name):
                data = self.hostile(port, max(pid, 2), start, **extra)
                if pid == 1:
                    data = data.replace(b'"pid": 2,', b'"pid": 1,')
                self.write_as(self.a, os.path.join(self.home_a, "parked", "%d.json" % port), data)
                for args in (["resume", port], ["release", port, "--kill", "--force"], ["release", port],
                             ["swap", port, own_port if port != own_port else self.port]):
                    r = self.run_park(*args, home=self.home_a)
                    if args[0] != "release" or "--kill" in args:
                        self.assertEqual(r.returncode, 1, r)
                time.sleep(0.3)
                self.assert_running(victim.pid)
                self.assert_running(own.pid)
                self.assertEqual((snapshot(self.port), sorted(_fd_links(victim.pid).items())), before,
                                 "B's server was changed")
                self.assertEqual(self.get_count("127.0.0.1", own_port)[0], own.pid)
                try:
                    os.unlink(os.path.join(self.home_a, "parked", "%d.json" % port))
                except FileNotFoundError:
                    pass

    def test_root_with_a_users_state_acts_only_on_that_users_processes(self):
        """PARK_HOME (or HOME) owned by A: root may park A's server there, its files end up A's, and root's own
        server is refused."""
        mine = self.spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(self.port)],
                          cwd=self.pub)
        self.wait_serving("127.0.0.1", self.port)
        before = snapshot(self.port)
        r = self.run_park(self.port, env=dict(self.env, HOME=self.home_a, PARK_HOME=""), expect=1)
        self.assertIn("belongs to uid 0, but the state directory %s/.park" % self.home_a, r.stderr)
        self.assertEqual(os.stat(os.path.join(self.home_a, ".park")).st_uid, self.a.pw_uid,
                         "root made ~/.park in A's HOME, but not as A's")
        self.assertEqual(snapshot(self.port), before)
        self.assert_running(mine.pid)
        port = free_port()
        theirs = self.server_as(self.a, port)
        r = self.run_park(port, home=self.home_a, expect=0)
        self.assertIn("park: note: using %s, which belongs to uid %d" % (self.home_a, self.a.pw_uid), r.stderr)
        self.assert_parked(theirs.pid, self.keeper_of_in(self.home_a, theirs.pid))
        for root, dirs, files in os.walk(self.home_a):
            for n in dirs + files:
                st = os.lstat(os.path.join(root, n))
                self.assertEqual(st.st_uid, self.a.pw_uid, "%s is not A's" % os.path.join(root, n))
        self.run_park("resume", port, home=self.home_a, expect=0)
        self.assertEqual(self.get_count("127.0.0.1", port)[0], theirs.pid)

    def keeper_of_in(self, home, pid):
        with open(os.path.join(home, "parked", "%d.json" % [int(n[:-5]) for n in os.listdir(
                os.path.join(home, "parked")) if n.endswith(".json")][0])) as f:
            return json.load(f)["keeper"]["pid"]

    def test_a_fake_keeper_cannot_steer_root(self):
        """A writes a state file naming a stopped root process as the holder and its own process as the keeper,
        which answers on the keeper's socket: root's release --kill and resume touch nothing."""
        victim = subprocess.Popen(["sleep", "60"])
        self.addCleanup(self._stop_proc, victim)
        os.kill(victim.pid, signal.SIGSTOP)
        self.wait_for(lambda: proc_state(victim.pid) == "T", "the victim to stop")
        port = free_port()
        for sub in ("parked", "keepers"):
            os.mkdir(os.path.join(self.home_a, sub), 0o700)
            os.chown(os.path.join(self.home_a, sub), self.a.pw_uid, self.a.pw_gid)
        fake = os.path.join(self.pub, "fake_keeper.py")
        with open(fake, "w") as f:
            f.write(FAKE_KEEPER)
        os.chmod(fake, 0o644)
        keeper = subprocess.Popen([self.python, fake, os.path.join(self.home_a, "keepers", "%d.sock" % port),
                                   str(victim.pid)], preexec_fn=self.as_user(self.a), stdout=subprocess.PIPE)
        self.addCleanup(self._stop_proc, keeper)
        self.assertEqual(keeper.stdout.readline().strip(), b"READY")
        data = self.hostile(port, victim.pid, self.start_of(victim.pid),
                            keeper={"pid": keeper.pid, "starttime": self.start_of(keeper.pid)})
        self.write_as(self.a, os.path.join(self.home_a, "parked", "%d.json" % port), data)
        for args in (["release", port, "--kill"], ["resume", port]):
            r = self.run_park(*args, home=self.home_a, expect=1)
            self.assertNotIn("sent SIGTERM", r.stdout)
            self.assertNotIn("resumed", r.stdout)
        self.assertEqual(proc_state(victim.pid), "T", "root's stopped process was signalled")

    def test_a_planted_fifo_does_not_hang_root(self):
        port = free_port()
        for sub in ("parked", "keepers"):
            os.mkdir(os.path.join(self.home_a, sub), 0o700)
            os.chown(os.path.join(self.home_a, sub), self.a.pw_uid, self.a.pw_gid)
        for rel in ("parked/%d.json" % port, "keepers/%d.log" % port):
            subprocess.run(["mkfifo", os.path.join(self.home_a, rel)], check=True, preexec_fn=self.as_user(self.a))
        theirs = self.server_as(self.a, port)
        for args in (["list"], ["resume", port], [port]):
            r = self.run_park(*args, home=self.home_a)  # a hang would time out (CHILD_TIMEOUT)
            self.assertEqual(r.returncode, 1, r)
            self.assertIn("not a plain file", r.stderr)
        self.assert_running(theirs.pid)

    def test_state_directory_is_checked_like_ssh(self):
        """A symlinked, foreign-owned, group- or world-writable PARK_HOME is refused in one line naming it."""
        loose = self.user_dir(self.a, "loose", 0o770)
        world = self.user_dir(self.b, "world", 0o777)
        link = os.path.join(self.tmp, "link")
        os.symlink(world, link)
        plain = os.path.join(self.tmp, "plain-file")
        with open(plain, "w") as f:
            f.write("x")
        cases = [(self.a, link, "is a symlink"), (None, link, "is a symlink"),
                 (self.a, self.home_b, "belongs to uid %d" % self.b.pw_uid),
                 (self.a, loose, "writable by its group"), (None, world, "writable by others"),
                 (None, plain, "is not a directory")]
        for user, home, says in cases:
            with self.subTest(user=user and user.pw_name, home=home):
                before = sorted(os.listdir(os.path.realpath(home))) if os.path.isdir(home) else None
                r = self.run_park("list", user=user, home=home, expect=1)
                self.assertIn(says, r.stderr)
                self.assertIn(home, r.stderr)
                if before is not None:
                    self.assertEqual(sorted(os.listdir(os.path.realpath(home))), before, "park wrote there")

    def test_planted_symlinks_are_not_followed(self):
        """A plants symlinks in its state directory where root's park would write (the lock, the keeper's log,
        the state file itself): the files they point at stay as they were, or are not created."""
        port = free_port()
        theirs = self.server_as(self.a, port)
        target = os.path.join(self.tmp, "root-file")
        with open(target, "w") as f:
            f.write("root's\n")
        missing = os.path.join(self.tmp, "never-created")
        for sub in ("locks", "keepers", "parked"):
            os.mkdir(os.path.join(self.home_a, sub))
            os.chown(os.path.join(self.home_a, sub), self.a.pw_uid, self.a.pw_gid)
            os.chmod(os.path.join(self.home_a, sub), 0o700)
        before = os.stat(target)
        links = {"locks/%d.lock" % port: missing, "keepers/%d.log" % port: target, "parked/%d.json" % port: target}
        for rel, to in links.items():
            subprocess.run(["ln", "-s", to, os.path.join(self.home_a, rel)], check=True,
                           preexec_fn=self.as_user(self.a))
        r = self.run_park(port, home=self.home_a, expect=1)
        self.assertIn("symlink", r.stderr + r.stdout)
        os.unlink(os.path.join(self.home_a, "locks", "%d.lock" % port))
        r = self.run_park(port, home=self.home_a)  # past the lock: the state file and the log are links
        self.run_park("resume", port, home=self.home_a)
        after = os.stat(target)
        self.assertEqual((after.st_size, after.st_mtime_ns, after.st_mode), (before.st_size, before.st_mtime_ns,
                                                                             before.st_mode))
        with open(target) as f:
            self.assertEqual(f.read(), "root's\n")
        self.assertFalse(os.path.exists(missing))
        self.assert_running(theirs.pid)
        self.assertEqual(self.get_count("127.0.0.1", port)[0], theirs.pid)

    def test_sudo_resume_of_a_server_the_user_parked(self):
        """A parks its own server; `sudo park resume` (root, HOME=/root, SUDO_UID=A) finds it in A's state and
        says which directory it used."""
        home = os.path.join(self.a.pw_dir, ".park")  # in A's home, as passwd names it
        self.addCleanup(shutil.rmtree, home, True)
        port = free_port()
        theirs = self.server_as(self.a, port)
        _, n = self.get_count("127.0.0.1", port)
        env = dict(self.env, HOME=self.a.pw_dir)
        env.pop("PARK_HOME")
        self.run_park(port, user=self.a, env=env, expect=0)
        root_env = dict(self.env, HOME=self.tmp, SUDO_UID=str(self.a.pw_uid), SUDO_USER=self.a.pw_name)
        root_env.pop("PARK_HOME")
        r = self.run_park("resume", port, env=root_env, expect=0)
        self.assertIn("using %s, the state of uid %d" % (home, self.a.pw_uid), r.stderr)
        self.assertEqual(self.get_count("127.0.0.1", port), (theirs.pid, n + 1))

    def test_a_user_is_told_when_root_holds_their_server(self):
        port = free_port()
        theirs = self.server_as(self.a, port)
        self.run_park(port, expect=0)  # root parks A's server, in root's state
        r = self.run_park("resume", port, user=self.a, home=self.home_a, expect=1)
        self.assertIn("sudo park resume %d" % port, r.stderr)
        self.assertIn("pid %d of yours is held by a park run as root" % theirs.pid, r.stderr)
        for args in (("list",), ()):  # park list, and park with no arguments
            r = self.run_park(*args, user=self.a, home=self.home_a, expect=0)
            self.assertIn("pid %d of yours is held by a park run as root" % theirs.pid, r.stdout)
            self.assertIn("sudo park list", r.stdout)
        self.run_park("resume", port, expect=0)

    def test_the_hand_over_cannot_be_reached_by_another_user(self):
        """While root resumes a prefork server (the listener goes to each worker through a unix socket), B tries
        to connect to every unix socket park could be using: none accepts B, and every resume succeeds."""
        proc, _ = self.start_python(PY_PREFORK, self.port)
        watcher = os.path.join(self.pub, "watch.py")
        with open(watcher, "w") as f:
            f.write(HAND_OVER_THIEF)
        os.chmod(watcher, 0o644)
        out = os.path.join(self.user_dir(self.b, "thief"), "got")
        thief = subprocess.Popen([self.python, watcher, out], preexec_fn=self.as_user(self.b),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(self._stop_proc, thief)
        for i in range(5):
            self.park(self.port, expect=0)
            self.park("resume", self.port, expect=0)
            self.get_count("127.0.0.1", self.port)
        self.kill_pid(thief.pid)
        thief.wait(10 * TIME_SCALE)
        with open(out) as f:
            tried, got = f.read().split()
        self.assertGreater(int(tried), 0, "the thief never saw a socket to try")
        self.assertEqual(int(got), 0, "another user connected to park's hand-over")

    def test_a_hung_injected_call_is_interrupted(self):
        """PARK_FAILPOINT=hang:connect:1 makes the first injected connect() (the hand-over, at resume) a call
        that never returns: park interrupts it at its deadline, says which call hung, and the server stays
        parked; the next resume works."""
        proc, _ = self.start_python(PY_PREFORK, self.port)
        pids = sorted(holders_of(listen_inodes(self.port)))
        _, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        before = snapshot(self.port)
        self.park(self.port, expect=0, env=dict(self.env, PARK_FAILPOINT="hang:connect:1"))
        t0 = time.monotonic()
        r = self.park("resume", self.port, expect=1)
        self.assertLess(time.monotonic() - t0, 20)
        self.assertIn("the injected connect() in pid", r.stderr)
        self.assertIn("did not return within", r.stderr)
        for pid in pids:
            self.assert_parked(pid)
        self.assertEqual(listen_inodes(self.port), set())
        self.park("resume", self.port, expect=0)
        self.assertEqual(snapshot(self.port), before)
        self.get_count("127.0.0.1", self.port)

    def test_escape_sequences_in_a_servers_command_line_are_escaped(self):
        """A server whose command line holds escape sequences (here its argv[0], through a symlink's name)."""
        path = self.write("fixture.py", PY_ASYNCIO)
        exe = os.path.join(self.tmp, "py\x1b]0;owned\x07\x1b[2J")
        os.symlink(sys.executable, exe)
        proc = self.spawn([exe, "-u", path, str(self.port)])
        self.read_ready(proc)
        self.wait_quiet(self.port)
        outputs = [self.park(self.port, expect=0).stdout, self.park("list", expect=0).stdout]
        rows = self.park_list()
        outputs.append(self.park("resume", self.port, expect=0).stdout)
        for text in outputs:
            self.assertNotIn("\x1b", text)
            self.assertIn("\\x1b]0;owned\\x07", text)
        self.assertIn("\\x1b", rows[0]["command"])

    def test_malformed_state_files_through_the_cli(self):
        """Every malformed variant of a state file: one line naming the file and a fix, never a traceback."""
        p = load_module("park_sec", PARK)
        os.makedirs(os.path.join(self.home, "parked"), 0o700)
        for name, bad in bad_records(good_record(p)):
            with self.subTest(variant=name):
                with open(os.path.join(self.home, "parked", "3000.json"), "wb") as f:
                    f.write(bad if isinstance(bad, bytes) else json.dumps(bad).encode())
                for args in (["list"], ["resume", "3000"], ["release", "3000", "--kill"]):
                    r = self.park(*args, expect=1)
                    self.assertIn("3000.json", r.stderr)
                    self.assertNotIn("unexpected error", r.stderr)

    def test_a_state_directory_under_a_search_only_parent(self):
        """PARK_HOME inside a directory A may search but not read (0711): park needs no more than a path does."""
        parent = os.path.join(self.tmp, "search-only")
        os.mkdir(parent, 0o711)
        home = os.path.join(parent, "park")
        os.mkdir(home, 0o700)
        os.chown(home, self.a.pw_uid, self.a.pw_gid)
        r = self.run_park("list", user=self.a, home=home, expect=0)
        self.assertIn("nothing is parked", r.stdout)

    def test_one_damaged_state_file_does_not_hide_the_others(self):
        proc = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        with open(os.path.join(self.home, "parked", "3000.json"), "wb") as f:
            f.write(b"{not json")
        r = self.park("list", expect=1)
        self.assertIn(":%d" % self.port, r.stdout)
        self.assertIn("3000.json", r.stderr)
        self.park("resume", self.port, expect=0)

    def test_environment_problems_are_one_line(self):
        unreadable = self.user_dir(self.a, "unreadable", 0o000)
        for user, env, says in ((None, dict(self.env, PARK_HOME=__file__), "is not a directory"),
                                (self.a, dict(self.env, PARK_HOME=unreadable), "cannot open the state directory")):
            with self.subTest(says=says):
                r = self.run_park("list", user=user, env=env, expect=1)
                self.assertIn(says, r.stderr)
        r = self.park("9" * 100000, expect=2)
        self.assertIn("not a port", r.stderr)


FAKE_KEEPER = r"""
# Runs as the attacker: answers every request on the keeper socket path of a hostile state file.
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(8)
print("READY", flush=True)
while True:
    c, _ = s.accept()
    c.makefile("rb").readline()
    c.sendall(json.dumps({"ok": True, "pids": [int(sys.argv[2])], "held": 0.0, "notes": [],
                          "addresses": ["127.0.0.1:1"]}).encode() + b"\n")
    c.close()
"""


HAND_OVER_THIEF = r"""
# Runs as another user: connect to every unix socket in /proc/net/unix that has a path or an abstract name
# under /tmp/park-* (where park's hand-over would be), and count the connections that were accepted.
import os, socket, sys, time
out = sys.argv[1]
tried = got = 0
seen = set()
def save():
    with open(out + ".tmp", "w") as f:
        f.write("%d %d" % (tried, got))
    os.replace(out + ".tmp", out)
save()
while True:
    names = set()
    try:
        for line in open("/proc/net/unix").read().splitlines()[1:]:
            f = line.split()
            if len(f) >= 8 and ("park" in f[7]):
                names.add(f[7])
    except OSError:
        pass
    for root in ("/tmp",):
        try:
            for d in os.listdir(root):
                if d.startswith("park-"):
                    names.add(os.path.join(root, d, "s"))
        except OSError:
            pass
    for name in names - seen:
        tried += 1
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.2)
        try:
            s.connect("\0" + name[1:] if name.startswith("@") else name)
            got += 1
        except OSError:
            pass
        finally:
            s.close()
    seen |= names
    save()
    time.sleep(0.0005)
"""


class YamaTest(TwoUsersTestCase):
    """Every Yama ptrace_scope, as root and as a user: park works where the kernel lets it, and where it does
    not it says what the scope means and gives a fix that works there. Needs a kernel with Yama, as root: it
    runs in CI's Debian guest (`python3 test_park.py YamaTest`), not in the default run, and it leaves the
    scope at 3, which only a reboot lowers."""

    explicit = True  # run only when named

    def setUp(self):
        super().setUp()
        if not os.path.exists(YAMA_SCOPE):
            self.live_skip("this kernel has no Yama (%s)" % YAMA_SCOPE)

    def scope(self, n):
        with open(YAMA_SCOPE, "w") as f:
            f.write("%d\n" % n)

    def test_every_scope_as_root_and_as_a_user(self):
        port = free_port()
        theirs = self.server_as(self.a, port)
        pid, n = self.get_count("127.0.0.1", port)
        user = dict(self.env, HOME=self.a.pw_dir)  # A's own state, in A's home, as a login gives it
        user.pop("PARK_HOME")
        home = os.path.join(self.a.pw_dir, ".park")
        self.addCleanup(shutil.rmtree, home, True)
        sudo = dict(self.env, HOME=self.tmp, SUDO_UID=str(self.a.pw_uid), SUDO_USER=self.a.pw_name)
        sudo.pop("PARK_HOME")

        def served():
            nonlocal n
            n += 1
            self.assertEqual(self.get_count("127.0.0.1", port), (pid, n))

        self.scope(0)
        self.run_park(port, user=self.a, env=user, expect=0)
        self.scope(1)  # parked at 0, resumed at 1: the keeper still traces it, nothing new is attached
        self.run_park("resume", port, user=self.a, env=user, expect=0)
        served()

        r = self.run_park(port, user=self.a, env=user, expect=1)
        self.assertIn("ptrace_scope is 1, so only a process's ancestors may trace it", r.stderr)
        self.assertIn("fix: sudo park %d, or for every program until reboot: echo 0 | sudo tee %s"
                      % (port, YAMA_SCOPE), r.stderr)
        self.run_park(port, env=sudo, expect=0)  # the first fix works
        self.run_park("resume", port, env=sudo, expect=0)
        served()

        # The keeper of A's park dies; at scope 1, A cannot attach again to resume; `sudo park resume` finds
        # A's state and does.
        self.scope(0)
        self.run_park(port, user=self.a, env=user, expect=0)
        os.kill(self.keeper_of(pid), signal.SIGKILL)
        self.wait_for(lambda: proc_state(pid) not in ("t", "T"), "the server to run without its keeper")
        self.scope(1)
        r = self.run_park("resume", port, user=self.a, env=user, expect=1)
        self.assertIn("only a process's ancestors", r.stderr)
        self.assertIn("fix: sudo park resume %d" % port, r.stderr)
        self.run_park("resume", port, env=sudo, expect=0)
        served()

        self.scope(2)
        r = self.run_park(port, user=self.a, env=user, expect=1)
        self.assertIn("ptrace_scope is 2, so only root may trace processes", r.stderr)
        self.assertIn("fix: sudo park %d" % port, r.stderr)
        self.run_park(port, env=sudo, expect=0)
        self.run_park("resume", port, env=sudo, expect=0)
        served()

        self.scope(3)
        for who, env, args in (("root", sudo, {}), ("A", user, {"user": self.a})):
            with self.subTest(who=who):
                r = self.run_park(port, env=env, expect=1, **args)
                self.assertIn("ptrace_scope is 3, so no process may be traced, not even by root, and the "
                              "setting cannot be lowered until reboot", r.stderr)
                self.assertNotIn("tee", r.stderr)
        with self.assertRaises(OSError):  # what the message says is true
            self.scope(0)
        self.assert_running(theirs.pid)
        served()

    def keeper_of(self, pid):
        for path in glob.glob(os.path.join(self.a.pw_dir, ".park", "parked", "*.json")):
            with open(path) as f:
                data = json.load(f)
            if any(h["pid"] == pid for h in data["holders"]):
                return data["keeper"]["pid"]
        self.fail("no state of A's names pid %d" % pid)


class SwapTest(LiveTestCase):
    """park swap PORT1 PORT2."""

    def test_swap_ipv4_and_dual_stack_servers(self):
        p1, p2 = self.port, free_port()
        a = self.start_asyncio(p1)
        b, _ = self.start_python(PY_DUAL_STACK, p2)
        self.wait_serving("127.0.0.1", p2)
        na, nb = self.get_count("127.0.0.1", p1)[1], self.get_count("127.0.0.1", p2)[1]
        self.wait_quiet(p1)
        self.wait_quiet(p2)
        s1, s2 = snapshot(p1), snapshot(p2)
        r = self.park("swap", p1, p2, expect=0)
        self.assertIn("swapped :%d and :%d" % (p1, p2), r.stdout)
        self.assert_running(a.pid)
        self.assert_running(b.pid)
        self.assertEqual(self.get_count("127.0.0.1", p1), (b.pid, nb + 1))
        self.assertEqual(self.get_count("127.0.0.1", p2), (a.pid, na + 1))
        self.wait_quiet(p1)
        self.wait_quiet(p2)
        self.assertEqual(without_port(snapshot(p2)), without_port(s1), "the IPv4 listener changed on its way")
        self.assertEqual(without_port(snapshot(p1)), without_port(s2), "the dual-stack listener changed")
        self.assertEqual(snapshot(p1)[b.pid][0]["options"]["IPV6_V6ONLY"], 0)
        self.park("swap", p2, p1, expect=0)  # and back
        self.assertEqual(self.get_count("127.0.0.1", p1), (a.pid, na + 2))
        self.assertEqual(self.park_list(), [])

    def test_swap_within_one_process(self):
        p1, p2 = self.port, free_port()
        path = self.write("two.py", PY_TWO_PORTS)
        proc = self.spawn([sys.executable, "-u", path, str(p1), str(p2)])
        self.read_ready(proc)
        self.assertIn("sock=A", http_get("127.0.0.1", p1)[1])
        self.wait_quiet(p1)
        self.wait_quiet(p2)
        s1, s2 = snapshot(p1), snapshot(p2)
        self.park("swap", p1, p2, expect=0)
        self.assertIn("sock=A", http_get("127.0.0.1", p2)[1])
        self.assertIn("sock=B", http_get("127.0.0.1", p1)[1])
        self.wait_quiet(p1)
        self.wait_quiet(p2)
        self.assertEqual(without_port(snapshot(p2)), without_port(s1))
        self.assertEqual(without_port(snapshot(p1)), without_port(s2))

    def test_failed_swap_leaves_both_as_they_were(self):
        p1, p2 = self.port, free_port()
        a = self.start_node(p1)
        b = self.start_asyncio(p2)
        na, nb = self.get_count("127.0.0.1", p1)[1], self.get_count("127.0.0.1", p2)[1]
        self.wait_quiet(p1)
        self.wait_quiet(p2)
        s1, s2 = snapshot(p1), snapshot(p2)
        env = dict(self.env, PARK_FAILPOINT="bind:2")  # the second rebind fails (as EADDRINUSE)
        r = self.park("swap", p1, p2, expect=1, env=env)
        self.assertIn("Address already in use", r.stderr)
        self.assert_running(a.pid)
        self.assert_running(b.pid)
        self.assertEqual(self.get_count("127.0.0.1", p1), (a.pid, na + 1))
        self.assertEqual(self.get_count("127.0.0.1", p2), (b.pid, nb + 1))
        self.wait_quiet(p1)
        self.wait_quiet(p2)
        self.assertEqual((snapshot(p1), snapshot(p2)), (s1, s2))
        self.assertEqual(self.park_list(), [])

    def test_swap_needs_two_listeners(self):
        proc = self.start_asyncio(self.port)
        r = self.park("swap", self.port, free_port(), expect=1)
        self.assertIn("nothing is listening", r.stderr)
        self.assert_running(proc.pid)
        self.park("swap", self.port, self.port, expect=2)



ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()*+][0-~]|[@-Z\\-_=>78])")


class TermScreen:
    """A small VT100/xterm screen: enough of what ncurses sends for TERM=xterm-256color to know what the user
    sees. ncurses repaints only changed cells (cursor moves, ECH, REP, scrolling), so the raw output with the
    escapes stripped shows a row whole only the first time; this grid shows it every time."""

    def __init__(self, rows, cols):
        self.rows, self.cols = rows, cols
        self.grid = [[" "] * cols for _ in range(rows)]
        self.y = self.x = 0
        self.top, self.bottom = 0, rows - 1
        self.saved = (0, 0)
        self.last = " "
        self.wrap = False

    def resize(self, rows, cols):
        self.grid = [(self.grid[y][:cols] + [" "] * max(0, cols - self.cols)) if y < self.rows else [" "] * cols
                     for y in range(rows)]
        self.rows, self.cols = rows, cols
        self.top, self.bottom = 0, rows - 1
        self.y, self.x = min(self.y, rows - 1), min(self.x, cols - 1)

    def lines(self):
        return ["".join(r).rstrip() for r in self.grid]

    def text(self):
        return "\n".join(self.lines())

    def _scroll(self, n, top=None):
        top = self.top if top is None else top
        for _ in range(n):  # up: the line at top goes, a blank one comes in at bottom
            del self.grid[top]
            self.grid.insert(self.bottom, [" "] * self.cols)

    def _scroll_down(self, n, top=None):
        top = self.top if top is None else top
        for _ in range(n):
            del self.grid[self.bottom]
            self.grid.insert(top, [" "] * self.cols)

    def _index(self):
        if self.y == self.bottom:
            self._scroll(1)
        elif self.y < self.rows - 1:
            self.y += 1

    def _put(self, ch):
        if self.wrap:
            self.x, self.wrap = 0, False
            self._index()
        self.grid[self.y][self.x] = ch
        self.last = ch
        if self.x == self.cols - 1:
            self.wrap = True  # xterm's deferred wrap (am + xenl)
        else:
            self.x += 1

    def feed(self, text):
        i = 0
        while i < len(text):
            m = ANSI.match(text, i) if text[i] == "\x1b" else None
            if m:
                self._escape(m.group(0))
                i = m.end()
                continue
            ch = text[i]
            i += 1
            if ch == "\r":
                self.x, self.wrap = 0, False
            elif ch == "\n":
                self._index()
                self.wrap = False
            elif ch == "\b":
                self.x, self.wrap = max(0, self.x - 1), False
            elif ch == "\t":
                self.x = min(self.cols - 1, (self.x // 8 + 1) * 8)
            elif ch >= " " and ch != "\x7f":
                self._put(ch)

    def _escape(self, seq):
        self.wrap = False
        if seq[1] != "[":
            if seq[1] == "7":
                self.saved = (self.y, self.x)
            elif seq[1] == "8":
                self.y, self.x = self.saved
            elif seq[1] == "M":  # reverse index
                if self.y == self.top:
                    self._scroll_down(1)
                else:
                    self.y = max(0, self.y - 1)
            elif seq[1] == "D":
                self._index()
            elif seq[1] == "E":
                self.x = 0
                self._index()
            return
        body, final = seq[2:-1], seq[-1]
        if body.startswith("?") or body.startswith(">"):
            return  # private modes: alternate screen, cursor keys, cursor visibility
        nums = [int(p) if p.isdigit() else 0 for p in body.split(";")] if body else []
        n = nums[0] if nums and nums[0] else 1
        row = self.grid[self.y]
        if final in "Hf":
            self.y = min(self.rows - 1, max(1, nums[0] if nums else 1) - 1)
            self.x = min(self.cols - 1, max(1, nums[1] if len(nums) > 1 else 1) - 1)
        elif final == "A":
            self.y = max(0, self.y - n)
        elif final == "B":
            self.y = min(self.rows - 1, self.y + n)
        elif final == "C":
            self.x = min(self.cols - 1, self.x + n)
        elif final == "D":
            self.x = max(0, self.x - n)
        elif final == "G":
            self.x = min(self.cols - 1, n - 1)
        elif final == "d":
            self.y = min(self.rows - 1, n - 1)
        elif final == "K":
            mode = nums[0] if nums else 0
            lo, hi = {0: (self.x, self.cols), 1: (0, self.x + 1), 2: (0, self.cols)}.get(mode, (0, 0))
            row[lo:hi] = [" "] * (hi - lo)
        elif final == "J":
            mode = nums[0] if nums else 0
            if mode == 0:
                row[self.x:] = [" "] * (self.cols - self.x)
                for y in range(self.y + 1, self.rows):
                    self.grid[y] = [" "] * self.cols
            elif mode == 1:
                row[:self.x + 1] = [" "] * (self.x + 1)
                for y in range(self.y):
                    self.grid[y] = [" "] * self.cols
            else:
                self.grid = [[" "] * self.cols for _ in range(self.rows)]
        elif final == "X":
            hi = min(self.cols, self.x + n)
            row[self.x:hi] = [" "] * (hi - self.x)
        elif final == "b":
            for _ in range(n):
                self._put(self.last)
        elif final == "@":
            row[self.x:self.x] = [" "] * n
            del row[self.cols:]
        elif final == "P":
            del row[self.x:self.x + n]
            row.extend([" "] * (self.cols - len(row)))
        elif final == "L" and self.top <= self.y <= self.bottom:
            self._scroll_down(n, top=self.y)
        elif final == "M" and self.top <= self.y <= self.bottom:
            self._scroll(n, top=self.y)
        elif final == "S":
            self._scroll(n)
        elif final == "T":
            self._scroll_down(n)
        elif final == "r":
            self.top = max(1, nums[0] if nums else 1) - 1
            self.bottom = min(self.rows, nums[1] if len(nums) > 1 and nums[1] else self.rows) - 1
            self.y = self.x = 0
        # m (attributes and colours), h/l (modes), n, c, t: nothing visible to track


class UiTest(LiveTestCase):
    """`park ui` in a real pseudo-terminal (24x80, TERM=xterm-256color), driven by keys like a user."""

    HEADER = re.compile(r"^park ui (\u2014|-) (\d+) parked, (\d+) listening (\u2014|-) q quit")

    def setUp(self):
        super().setUp()
        self.ui = None

    def start_ui(self, rows=24, cols=80, env=None):
        import fcntl
        import termios
        master, slave = os.openpty()
        self.addCleanup(lambda: os.close(self.master))  # self.master: a test may have swapped it
        self.addCleanup(os.close, slave)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.tty_before = termios.tcgetattr(slave)
        env = dict(env or self.env, TERM="xterm-256color")
        proc = subprocess.Popen([sys.executable, PARK, "ui"], stdin=slave, stdout=slave, stderr=slave, env=env,
                                cwd=self.tmp, start_new_session=True)
        self.addCleanup(self._stop_proc, proc)
        self.ui, self.master, self.slave = proc, master, slave
        self.raw = ""
        self.screen = TermScreen(rows, cols)
        return proc

    def pump(self, seconds=0.05):
        """Read whatever the ui wrote within `seconds` into the raw text and the screen."""
        if self.ui is None:  # no ui yet: just wait
            time.sleep(seconds)
            return
        deadline = time.monotonic() + seconds
        while True:
            left = max(0.0, deadline - time.monotonic())
            r, _, _ = select.select([self.master], [], [], left)
            if not r:
                return
            try:
                data = os.read(self.master, 65536).decode("utf-8", "replace")
            except OSError:  # EIO: the ui exited and nobody else has the terminal open
                return
            self.raw += data
            self.screen.feed(data)

    def wait_screen(self, check, what, timeout=10):
        """Pump until check(lines) is true; fail showing the screen."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            if check(self.screen.lines()):
                return self.screen.lines()
            if time.monotonic() > deadline or self.ui.poll() is not None:
                self.fail("%s: not on the screen (ui rc %s):\n%s\nraw tail: %r"
                          % (what, self.ui.poll(), self.screen.text(), ANSI.sub("", self.raw)[-800:]))

    def wait_until(self, check, what, timeout=10):
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                self.fail("%s; screen:\n%s" % (what, self.screen.text()))
            self.pump()

    def press(self, keys):
        os.write(self.master, keys.encode())

    def rows_on_screen(self, lines):
        """[(line index, port, section)] for every entry row on the screen.

        The body scrolls to keep the selection visible, so a section title may be off the screen: rows above the
        first visible title belong to the other section, and with no title visible they are LISTENING rows (the
        tests park at most two servers, while the machine may list many)."""
        titles = [(i, l.strip()) for i, l in enumerate(lines) if l.strip() in ("PARKED", "LISTENING")]
        out = []
        for i, line in enumerate(lines):
            m = re.match(r"^[> ] :(\d+)\b", line)
            if not m:
                continue
            above = [t for j, t in titles if j < i]
            if above:
                where = above[-1]
            elif titles:
                where = "PARKED" if titles[0][1] == "LISTENING" else "LISTENING"
            else:
                where = "LISTENING"
            out.append((i, int(m.group(1)), where))
        return out

    def row_of(self, lines, port, section=None):
        """The index of the screen line for :port (in section 'PARKED' or 'LISTENING' if given), or None."""
        for i, p, where in self.rows_on_screen(lines):
            if p == port and section in (None, where):
                return i
        return None

    def selected(self, lines):
        return [i for i, l in enumerate(lines) if l.startswith("> :")]

    def select_port(self, port, section):
        """Move the selection with j/k onto :port in section, as a user would (scrolling if need be)."""
        for _ in range(200):
            lines = self.wait_screen(lambda l: self.selected(l), "a selected row")
            sel = self.selected(lines)[0]
            want = self.row_of(lines, port, section)
            if want == sel:
                return lines
            if want is not None:
                key = "j" if want > sel else "k"
            else:  # off the screen: each section is sorted by port, PARKED above LISTENING
                same = [p for _, p, where in self.rows_on_screen(lines) if where == section]
                key = ("j" if max(same) < port else "k") if same else "k" if section == "PARKED" else "j"
            before = (sel, lines[sel])
            self.press(key)
            self.wait_screen(lambda l: self.selected(l) and (self.selected(l)[0], l[self.selected(l)[0]]) != before,
                             "the selection moving")
        self.fail("could not select :%d in %s" % (port, section))

    def quit_ui(self):
        self.press("q")
        try:
            rc = self.ui.wait(timeout=10 * TIME_SCALE)
        except subprocess.TimeoutExpired:
            self.fail("q did not end park ui; screen:\n%s" % self.screen.text())
        self.pump(0.1)
        self.assertEqual(rc, 0, "park ui exit code; output: %r" % ANSI.sub("", self.raw)[-800:])
        self.assertNotIn("Traceback", ANSI.sub("", self.raw))
        return rc

    def parked_fixture(self):
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.park(self.port, expect=0)
        self.assert_parked(proc.pid)
        return proc, n

    def test_parked_server_shows_and_r_resumes_it(self):
        proc, n = self.parked_fixture()
        self.start_ui()
        lines = self.wait_screen(lambda l: self.row_of(l, self.port, "PARKED") is not None, "the parked row")
        row = lines[self.row_of(lines, self.port, "PARKED")]
        self.assertIn(str(proc.pid), row.split())
        self.assertIn("parked", row.split())
        self.assertTrue(row.startswith(">"), "the first row is not selected: %r" % row)
        self.assertEqual(self.HEADER.match(lines[0]).group(2), "1", lines[0])
        self.press("r")
        self.wait_until(lambda: self.is_resumed(proc.pid), "r did not resume pid %d" % proc.pid)
        self.assert_running(proc.pid)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (proc.pid, n + 1), "the counter did not continue")
        self.assertEqual(self.park_list(), [])
        lines = self.wait_screen(lambda l: any(x.startswith("resumed :%d" % self.port) for x in l)
                                 and self.row_of(l, self.port, "LISTENING") is not None,
                                 "'resumed' in the status line and the server under LISTENING")
        self.assertIsNone(self.row_of(lines, self.port, "PARKED"))
        self.quit_ui()

    def test_q_quits_and_restores_the_terminal(self):
        import termios
        self.start_ui()
        lines = self.wait_screen(lambda l: self.HEADER.match(l[0]) and "q quit" in l[23], "header and footer")
        self.assertIn("r resume", lines[23])
        self.assertTrue(all(len(l) < 80 for l in lines), "a line reaches the last column")
        self.quit_ui()
        self.assertEqual(termios.tcgetattr(self.slave), self.tty_before, "terminal modes not restored")
        self.assertGreater(self.raw.rfind("\x1b[?1049l"), self.raw.rfind("\x1b[?1049h"),
                           "the alternate screen was not left")
        # NO_COLOR is set (env_for): no colour escapes at all (the default-colour reset sequence aside)
        self.assertEqual(re.findall(r"\x1b\[[0-9;]*(?:3[0-7]|4[0-7]|38;5;\d+)m", self.raw), [])

    def test_resize_is_followed(self):
        import fcntl
        import termios
        proc, _ = self.parked_fixture()
        self.start_ui()
        self.wait_screen(lambda l: self.row_of(l, self.port, "PARKED") is not None, "the parked row")
        for rows, cols in ((30, 100), (20, 60)):
            fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            self.screen.resize(rows, cols)
            os.kill(self.ui.pid, signal.SIGWINCH)
            lines = self.wait_screen(lambda l: len(l) == rows and "q quit" in l[rows - 1]
                                     and self.HEADER.match(l[0]) and self.row_of(l, self.port, "PARKED"),
                                     "the layout at %dx%d" % (rows, cols))
            self.assertTrue(all(len(l) < cols for l in lines), "a line reaches column %d" % cols)
        # still refreshing: the parked-for time goes on changing at the new size
        lines = self.screen.lines()
        before = lines[self.row_of(lines, self.port, "PARKED")]
        self.wait_screen(lambda l: self.row_of(l, self.port, "PARKED") and l[self.row_of(l, self.port, "PARKED")]
                         != before, "a refresh after the resize", timeout=5)
        self.assert_parked(proc.pid)
        self.quit_ui()

    def test_p_parks_a_listening_server_and_r_resumes_it(self):
        proc = self.start_asyncio(self.port)
        pid, n = self.get_count("127.0.0.1", self.port)
        self.wait_quiet(self.port)
        self.start_ui()
        lines = self.select_port(self.port, "LISTENING")
        self.assertIn(str(proc.pid), lines[self.row_of(lines, self.port, "LISTENING")].split())
        self.press("p")
        # The keeper stops the threads, then closes the listener: parked means both.
        self.wait_until(lambda: proc_state(proc.pid) == "t" and self.keeper_of(proc.pid)
                        and not listen_inodes(self.port), "p did not park pid %d" % proc.pid)
        self.assert_parked(proc.pid)
        lines = self.wait_screen(lambda l: self.row_of(l, self.port, "PARKED") in self.selected(l),
                                 "the parked row, selected")
        self.assertTrue(any(l.startswith("parked :%d" % self.port) for l in lines), "status line")
        self.press("r")
        self.wait_until(lambda: self.is_resumed(proc.pid), "r did not resume pid %d" % proc.pid)
        self.assertEqual(self.get_count("127.0.0.1", self.port), (proc.pid, n + 1))
        self.assertEqual(self.park_list(), [])
        self.quit_ui()

    def test_timer_and_hold_columns(self):
        """LEFT shows a --for timer, WAIT the clients on a --hold listener (whose park is not listed as a
        server); r on each resumes it: the timer then ends by itself, the hold hands its client over."""
        timed = self.start_asyncio(self.port)
        self.wait_quiet(self.port)
        self.park(self.port, "--for", "10m", expect=0)
        port2 = free_port()
        held = self.start_asyncio(port2)
        self.wait_quiet(port2)
        hold = subprocess.Popen([sys.executable, PARK, str(port2), "--hold"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env)
        self.addCleanup(self._stop_proc, hold)
        self.wait_until(lambda: (self.entry(port2) or {}).get("waiting") == 0, "the hold did not start")
        client = socket.create_connection(("127.0.0.1", port2), timeout=10)
        self.addCleanup(client.close)
        self.wait_until(lambda: (self.entry(port2) or {}).get("waiting") == 1, "the client is not waiting")
        self.start_ui()

        def columns(lines, port):
            i = self.row_of(lines, port, "PARKED")
            return lines[i][2:].split() if i is not None else []

        lines = self.wait_screen(lambda l: len(columns(l, self.port)) > 6 and len(columns(l, port2)) > 6,
                                 "both parked rows")
        port_, pids, _, left, wait, status = columns(lines, self.port)[:6]
        self.assertEqual((pids, wait, status), (str(timed.pid), "-", "parked"))
        self.assertRegex(left, r"^(9m[0-5]\ds|10m00s)$")
        port_, pids, _, left, wait, status = columns(lines, port2)[:6]
        self.assertEqual((pids, left, wait, status), (str(held.pid), "-", "1", "parked"))
        self.assertIsNone(self.row_of(lines, port2, "LISTENING"), "the holding park is listed as a server")
        self.assertEqual(self.HEADER.match(lines[0]).group(2), "2")
        self.select_port(self.port, "PARKED")
        self.press("r")
        self.wait_until(lambda: self.is_resumed(timed.pid), "r did not resume the timed server")
        self.select_port(port2, "PARKED")
        self.press("r")
        self.assertEqual(hold.wait(timeout=20 * TIME_SCALE), 0, "the holding park did not end after the hand-over")
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"pid=%d count=" % held.pid, client.recv(4096), "the held client was not served")
        self.assertEqual(self.park_list(), [])
        self.quit_ui()

    def test_kill_asks_first(self):
        proc, _ = self.parked_fixture()
        self.start_ui()
        self.wait_screen(lambda l: self.row_of(l, self.port, "PARKED") in self.selected(l), "the parked row")
        self.press("K")
        self.wait_screen(lambda l: any(x.startswith("kill pid %d (" % proc.pid) and x.endswith("? y/n") for x in l),
                         "the kill question")
        self.press("n")
        self.wait_screen(lambda l: any(x.startswith("not killed") for x in l), "'not killed'")
        time.sleep(0.3)
        self.assert_parked(proc.pid)
        self.assertIsNotNone(self.entry(self.port))
        self.press("K")
        self.wait_screen(lambda l: any(x.endswith("? y/n") for x in l), "the kill question again")
        self.press("y")
        self.assertEqual(proc.wait(timeout=10 * TIME_SCALE), -signal.SIGTERM)
        self.assertEqual(self.park_list(), [])
        self.wait_screen(lambda l: self.row_of(l, self.port) is None and "nothing is parked" in "\n".join(l),
                         "the killed entry gone")
        self.quit_ui()

    def test_the_selection_stays_on_its_server(self):
        """The selection never moves to another server by itself: after x the released server stays selected
        (listed as released); after a resume from elsewhere it follows that server to LISTENING; when its
        server goes away nothing is selected, and a key then acts on no one."""
        a, b, c = self.start_asyncio(self.port), self.start_asyncio(free_port()), self.start_asyncio(free_port())
        ports = {p.pid: int(p.args[-1]) for p in (a, b, c)}
        for proc in (a, b):
            self.wait_quiet(ports[proc.pid])
            self.park(ports[proc.pid], expect=0)
        self.start_ui()

        def selected_row(lines):
            sel = self.selected(lines)
            return [(p, where, lines[i]) for i, p, where in self.rows_on_screen(lines) if i in sel]

        self.select_port(ports[b.pid], "PARKED")
        self.press("x")
        lines = self.wait_screen(lambda l: any(x.startswith("continued pid %d" % b.pid) for x in l), "x's answer")
        self.wait_until(lambda: (self.entry(ports[b.pid]) or {}).get("status") == "released", "the release")
        lines = self.wait_screen(lambda l: "released" in "".join(r[2] for r in selected_row(l)),
                                 "the released row, still selected")
        self.assertEqual([r[0] for r in selected_row(lines)], [ports[b.pid]])
        time.sleep(1.5)  # two refreshes: it stays there
        self.pump()
        self.assertEqual([r[0] for r in selected_row(self.screen.lines())], [ports[b.pid]])
        self.select_port(ports[a.pid], "PARKED")
        self.park("resume", ports[a.pid], expect=0)  # from elsewhere
        lines = self.wait_screen(lambda l: self.row_of(l, ports[a.pid], "LISTENING") is not None
                                 and self.row_of(l, ports[a.pid], "PARKED") is None, "the resumed server listening")
        self.pump(1.2)
        self.assertEqual([r[:2] for r in selected_row(self.screen.lines())], [(ports[a.pid], "LISTENING")],
                         "the selection left the resumed server")
        self.kill_pid(a.pid)
        a.wait(timeout=10 * TIME_SCALE)
        self.wait_screen(lambda l: self.row_of(l, ports[a.pid]) is None, "the killed server gone")
        self.pump(1.2)
        self.assertEqual(selected_row(self.screen.lines()), [], "another row was selected in its place")
        self.press("p")
        self.wait_screen(lambda l: any(x.startswith("nothing is selected") for x in l), "the answer to p")
        time.sleep(0.5)
        self.assertNotIn(proc_state(c.pid), ("t", "T"), "p parked a server nobody selected")
        self.assertIsNone(self.entry(ports[c.pid]))
        # j selects a row again (where the lost one was; on a shared machine that row may itself be a server
        # that comes and goes, so press again until one stays), and then keys act on the row chosen
        for _ in range(10):
            self.press("j")
            deadline = time.monotonic() + 2 * TIME_SCALE
            while time.monotonic() < deadline and not selected_row(self.screen.lines()):
                self.pump()
            if selected_row(self.screen.lines()):
                break
        self.select_port(ports[c.pid], "LISTENING")
        self.press("p")
        self.wait_until(lambda: proc_state(c.pid) == "t" and self.keeper_of(c.pid), "p did not park the chosen row")
        self.park("resume", ports[c.pid], expect=0)
        self.quit_ui()

    def test_errors_go_to_the_status_line(self):
        """A damaged state file and a key that cannot apply are reported on the status line; the ui goes on."""
        self.start_ui()
        self.wait_screen(lambda l: self.HEADER.match(l[0]), "the header")
        parked = os.path.join(self.home, "parked")
        os.makedirs(parked, exist_ok=True)
        bad = os.path.join(parked, "%d.json" % self.port)
        with open(bad, "w") as f:
            f.write("{not json")
        # the error and its fix, whole, wrapped above the footer (the path is longer than the screen is wide)
        lines = self.wait_screen(lambda l: any(x.startswith("park: state file " + bad[:40]) for x in l)
                                 and l[22].startswith("  fix: rm "), "the error and its fix")
        first = [i for i, x in enumerate(lines) if x.startswith("park: state file")][0]
        block = "".join(lines[first:23]).replace(" ", "")
        self.assertIn("damaged(notvalidJSON)fix:rm" + bad.replace(" ", ""), block, "the error or its fix is cut off")
        self.assertTrue(all(len(x) < 80 for x in lines))
        os.unlink(bad)
        self.wait_screen(lambda l: l[22] == "", "the error cleared once the state reads again")
        self.press("x")
        self.wait_screen(lambda l: l[22] != "", "a message for x with nothing parked")
        self.quit_ui()

    def test_closed_terminal_ends_it(self):
        """When the terminal goes away (its master side closed), park ui ends instead of spinning."""
        self.start_ui()
        self.wait_screen(lambda l: self.HEADER.match(l[0]), "the header")
        os.close(self.master)
        self.master = os.open("/dev/null", os.O_RDONLY)  # what the cleanup closes instead
        try:
            self.ui.wait(timeout=10 * TIME_SCALE)
        except subprocess.TimeoutExpired:
            self.fail("park ui still runs after its terminal was closed (state %s)" % proc_state(self.ui.pid))

    def test_without_curses(self):
        fake = os.path.join(self.tmp, "nocurses")
        os.makedirs(os.path.join(fake, "curses"))
        with open(os.path.join(fake, "curses", "__init__.py"), "w") as f:
            f.write("raise ImportError('No module named _curses')\n")
        env = dict(self.env, PYTHONPATH=fake)
        r = self.park("ui", expect=1, env=env)
        self.assertEqual(r.stderr.splitlines()[0],
                         "park: park ui needs the curses module, which this Python does not have")
        self.assertEqual(r.stdout, "")

    def test_not_a_terminal(self):
        r = self.park("ui", expect=1)
        self.assertIn("terminal", r.stderr.splitlines()[0])
        self.assertIn("park list", r.stderr)


# ---------------------------------------------------------------------------------------------------------
# The macOS arm64 backend. No Mac here: these tests check what can be checked on any OS, against numbers
# written down independently of the module, from ../shared/reference/macos-mach.md (xnu-11417.101.15):
# struct sizes and offsets, the prototypes' argument widths, the stub's bytes (re-assembled with binutils), the
# parsers on buffers built field by field, and park/resume/swap/release on FakeMac, a simulated kernel that
# runs each injected system call by decoding the thread state and data page the backend wrote. What runs only
# on a Mac (the ctypes calls into libSystem, the kernel's real answers) is not tested here.

DARWIN_BACKEND = os.path.join(HERE, "park_darwin_arm64.py")

# From the facts file (bsd/kern/syscalls.master, bsd/sys/*.h, osfmk/mach/*.h), not from the module.
MAC_SYSCALLS = {6: "close", 90: "dup2", 92: "fcntl", 97: "socket", 104: "bind", 105: "setsockopt", 106: "listen",
                363: "kevent", 369: "kevent64"}
MAC_AF_INET, MAC_AF_INET6 = 2, 30
MAC_SOL_SOCKET, MAC_IPPROTO_IPV6, MAC_IPV6_V6ONLY = 0xFFFF, 41, 27
MAC_SO_ACCEPTCONN, MAC_SO_REUSEADDR, MAC_SO_KEEPALIVE, MAC_SO_LINGER, MAC_SO_REUSEPORT = 0x2, 0x4, 0x8, 0x80, 0x200
MAC_EBADF, MAC_EPERM, MAC_ESRCH, MAC_EINVAL, MAC_EADDRINUSE = 9, 1, 3, 22, 48
MAC_KQ32, MAC_KQ64, MAC_KQQOS = 0x8, 0x10, 0x20
MAC_EV_ADD, MAC_EV_DISABLE, MAC_EV_CLEAR, MAC_EV_EOF = 0x1, 0x8, 0x20, 0x8000
MAC_SRUN, MAC_SSTOP = 2, 4
MAC_CPU_ARM64 = 0x0100000C
MAC_STUB_WORDS = (0xD4001001, 0xAA0003F3, 0x1A9F37F4, 0x92800000, 0x92800B30, 0xD4001001, 0x17FFFFFD)
MASK64 = (1 << 64) - 1
PID_A, PID_B, PID_C = 4194305, 4194306, 4194307  # above any Linux pid_max: never this test's own pid
MAC_STUB_TEXT = "svc #0x80\nmov x19, x0\ncset w20, hs\n1: mov x0, #-1\nmov x16, #-90\nsvc #0x80\nb 1b\n"


def mac_socket_fdinfo(so, family=MAC_AF_INET, host="127.0.0.1", port=3000, listening=True,
                      options=MAC_SO_ACCEPTCONN | MAC_SO_REUSEADDR, qlen=0, qlimit=128, v6only=False, vflag=None,
                      openflags=0x3, status=0, kind=2):
    """struct socket_fdinfo (792 bytes), field by field at the facts file's offsets."""
    buf = bytearray(792)
    struct.pack_into("<II", buf, 0, openflags, status)  # pfi.fi_openflags, fi_status
    struct.pack_into("<Q", buf, 160, so)  # soi_so
    struct.pack_into("<ii", buf, 176, 1, 6)  # soi_type, soi_protocol
    struct.pack_into("<i", buf, 184, family)  # soi_family
    struct.pack_into("<H", buf, 188, options)  # soi_options
    struct.pack_into("<h", buf, 194, qlen)  # soi_qlen
    struct.pack_into("<h", buf, 198, qlimit)  # soi_qlimit
    struct.pack_into("<i", buf, 256, kind)  # soi_kind (SOCKINFO_TCP 2)
    struct.pack_into(">H", buf, 268, port)  # insi_lport, network byte order
    struct.pack_into("<I", buf, 280, 0x8000 if v6only else 0)  # insi_flags: IN6P_IPV6_V6ONLY
    struct.pack_into("<B", buf, 288, vflag if vflag is not None else (1 if family == MAC_AF_INET else 3))
    if family == MAC_AF_INET:
        buf[324:328] = socket.inet_pton(socket.AF_INET, host)  # i46a_addr4
    else:
        buf[312:328] = socket.inet_pton(socket.AF_INET6, host)  # insi_laddr
    struct.pack_into("<i", buf, 344, 1 if listening else 4)  # tcpsi_state: TSI_S_LISTEN 1, ESTABLISHED 4
    return bytes(buf)


def mac_extinfo(ident, filt, flags, udata, fflags=0, sdata=0, status=0):
    """struct kevent_extinfo (104 bytes) as kevent_extinfo_emit fills it: filter sign-extended, data and xflags
    zeroed, the registered fflags and data in kqext_sfflags / kqext_sdata (kevent_qos_s.fflags is the output)."""
    buf = bytearray(104)
    struct.pack_into("<QHHi", buf, 0, ident, (filt & 0xFFFF) | 0xFF00, flags, 0)
    struct.pack_into("<QII", buf, 16, udata, 0xA5A5, 0)  # udata @16, fflags (output) @24, xflags @28
    struct.pack_into("<Qii", buf, 72, sdata, status, fflags)  # kqext_sdata, kqext_status, kqext_sfflags
    return bytes(buf)


def mac_bsdinfo(pid, ppid=1, uid=501, status=MAC_SRUN, flags=0x10, comm=b"server", name=b"", start=(1700000000, 42)):
    buf = bytearray(136)
    struct.pack_into("<IIIIII", buf, 0, flags, status, 0, pid, ppid, uid)  # pbi_flags .. pbi_uid @20
    struct.pack_into("<I", buf, 28, uid)  # pbi_ruid
    buf[48:48 + len(comm)] = comm
    buf[64:64 + len(name)] = name
    struct.pack_into("<QQ", buf, 120, start[0], start[1])  # pbi_start_tvsec, pbi_start_tvusec
    return bytes(buf)


def mac_shortbsdinfo(pid, ppid=1, uid=501, status=MAC_SRUN, comm=b"server", flags=0):
    buf = bytearray(64)
    struct.pack_into("<IIII", buf, 0, pid, ppid, pid, status)
    buf[16:16 + len(comm)] = comm
    struct.pack_into("<II", buf, 32, flags, uid)  # pbsi_flags, pbsi_uid @36
    return bytes(buf)


def mac_thread_state(x=None, pc=0, sp=0, lr=0, cpsr=0, flags=0):
    """ARM_THREAD_STATE64: x0..x28 @0, fp @232, lr @240, sp @248, pc @256, cpsr @264, flags @268."""
    buf = bytearray(272)
    for i, v in (x or {}).items():
        struct.pack_into("<Q", buf, 8 * i, v)
    struct.pack_into("<QQQIi", buf, 240, lr, sp, pc, cpsr, flags)
    return bytes(buf)


class _FFile:
    """An open file: a socket or a kqueue, with its status flags (O_NONBLOCK)."""

    def __init__(self, obj, nonblock=False, hidden_refs=0):
        self.obj, self.nonblock, self.hidden_refs = obj, nonblock, hidden_refs


class _FSock:
    def __init__(self, so, family, host="", port=0, backlog=0, options=0, v6only=False, listening=False, qlen=0):
        self.so, self.family, self.host, self.port = so, family, host, port
        self.backlog, self.options, self.v6only, self.listening, self.qlen = backlog, options, v6only, listening, qlen
        self.bound = listening


class _FKqueue:
    def __init__(self, state):
        self.state, self.knotes = state, []


class _FProc:
    def __init__(self, pid, uid, threads, arch, cs, start, uniqueid, flags, ppid, argv):
        self.pid, self.uid, self.arch, self.cs, self.start, self.uniqueid = pid, uid, arch, cs, start, uniqueid
        self.flags, self.ppid, self.argv = flags, ppid, argv
        self.status = MAC_SRUN
        self.fds = {}  # fd -> {"file": _FFile, "cloexec": bool, "guarded": bool}
        self.threads = [{"count": 0, "alive": True, "injected": False} for _ in range(threads)]
        for fd in (0, 1, 2):
            self.fds[fd] = {"file": _FFile("tty"), "cloexec": False, "guarded": False}
        self.task_suspended = 0
        self.workq, self.dyn = [], {}


class FakeMac:
    """Stands in for the backend's Mach layer (the Mach class): a small simulated macOS with processes, fds,
    sockets, kqueues, threads with suspend counts, pages with protections and port references. It runs an
    injected system call by decoding the 272-byte thread state and the data page the backend wrote, at the
    facts file's offsets, and records every call in self.log. violations collects anything a real kernel would
    punish (a W+X page, an injection while a thread runs, a wrong kevent family is EINVAL as in xnu)."""

    def __init__(self, euid=0):
        self.euid_ = euid
        self.log, self.violations, self.procs = [], [], {}
        self.ports, self.urefs = {}, {}
        self.pages = {}  # page address -> {"prot": int, "data": bytearray, "task": pid}
        self.next_port, self.next_so, self.next_addr = 0x1103, 0x5EED0000, 0x100000000
        self.fail = {}  # (name, nth) -> errno (system calls) or kern_return_t (Mach calls)
        self.calls = {}
        self.polls_before_done = 2
        self.unseen = 0  # this many injected calls, from the first, run but never show as finished
        self.n_injected = 0
        self.probe = 0  # what probe_task_for_pid answers (None: no answer in time)
        self.masks = []
        self.injected = []  # [pid, name, args...] of every injected system call that ran
        self.accepting = set()  # pids whose server accepts its queued clients whenever a thread of it can run
        self.arrivals = []  # accept-queue lengths that clients make appear, one per task_suspend

    # -- building the simulated system --
    def add_proc(self, pid, uid=501, threads=3, arch=(MAC_CPU_ARM64, 0), cs=0x20003, start=(1700000000, 42),
                 flags=0x10, ppid=1, argv=("./server", "-addr", ":3000")):
        p = _FProc(pid, uid, threads, arch, cs, start, 90000 + pid, flags, ppid, list(argv))
        self.procs[pid] = p
        return p

    def add_listener(self, p, fds, family=MAC_AF_INET, host="127.0.0.1", port=3000, backlog=128,
                     options=MAC_SO_REUSEADDR, v6only=False, nonblock=True, cloexec=True, hidden_refs=0):
        sock = _FSock(self.new_so(), family, host, port, backlog, options | MAC_SO_ACCEPTCONN, v6only, True)
        f = _FFile(sock, nonblock, hidden_refs)
        for fd in fds:
            p.fds[fd] = {"file": f, "cloexec": cloexec, "guarded": False}
        return sock

    def add_kqueue(self, p, fd, state=MAC_KQ32):
        kq = _FKqueue(state)
        p.fds[fd] = {"file": _FFile(kq), "cloexec": True, "guarded": False}
        return kq

    def new_so(self):
        self.next_so += 0x40
        return self.next_so

    def _port(self, obj):
        for name, o in self.ports.items():
            if o == obj:
                self.urefs[name] += 1
                return name
        self.next_port += 4
        self.ports[self.next_port] = obj
        self.urefs[self.next_port] = 1
        return self.next_port

    def leaks(self):
        """Port references and pages the backend did not give back."""
        out = ["port %#x (%s) has %d references" % (n, self.ports[n][0], c) for n, c in self.urefs.items() if c]
        return out + ["page %#x was not deallocated" % a for a in sorted(self.pages)]

    def counts(self, pid):
        return [t["count"] for t in self.procs[pid].threads if not t["injected"]]

    def names(self, kind):
        return [e[1] for e in self.log if e[0] == kind]

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1
        return self.fail.get((name, self.calls[name]))

    def _mach(self, name, *args):
        self.log.append(("mach", name) + args)
        kr = self._count(name)
        if kr:
            raise self.MachError(name, kr)

    def _proc(self, pid, same_user=True):
        p = self.procs.get(pid)
        if p is None:
            raise OSError(MAC_ESRCH, "No such process")
        if same_user and self.euid_ != 0 and p.uid != self.euid_:
            raise OSError(MAC_EPERM, "Operation not permitted")
        return p

    def _shared(self, f):
        refs = sum(1 for p in self.procs.values() for e in p.fds.values() if e["file"] is f)
        return refs + f.hidden_refs > 1

    # -- libproc, csops, sysctl, signals --
    def euid(self):
        return self.euid_

    def kill(self, pid, sig):
        self.log.append(("kill", pid, sig))
        p = self._proc(pid, False)
        if sig == signal.SIGSTOP and p.status != MAC_SSTOP:
            p.status, p.task_suspended = MAC_SSTOP, p.task_suspended + 1  # stop(): task_suspend_internal
        elif sig == signal.SIGCONT and p.status == MAC_SSTOP:
            p.status, p.task_suspended = MAC_SRUN, p.task_suspended - 1

    def listpids(self):
        return sorted(self.procs)

    def pidinfo(self, pid, flavor, arg, size):
        self.log.append(("libproc", "pidinfo", pid, flavor))
        if flavor == 13:  # PROC_PIDT_SHORTBSDINFO: any user
            p = self._proc(pid, False)
            return 64, mac_shortbsdinfo(pid, p.ppid, p.uid, p.status, flags=2 if p.flags & 2 else 0)[:size]
        p = self._proc(pid, flavor not in (17, 19))
        if flavor == 1:  # PROC_PIDLISTFDS
            if not size:
                return (len(p.fds) + 20) * 8, b""
            kinds = {_FSock: 2, _FKqueue: 5}
            raw = b"".join(struct.pack("<iI", fd, kinds.get(type(e["file"].obj), 1))
                           for fd, e in sorted(p.fds.items()))[:size]
            return len(raw), raw + bytes(size - len(raw))
        if flavor == 3:
            return 136, mac_bsdinfo(pid, p.ppid, p.uid, p.status, p.flags, start=p.start)
        if flavor == 17:  # PROC_PIDUNIQIDENTIFIERINFO: p_uniqueid @16
            return 56, bytes(16) + struct.pack("<QQ", p.uniqueid, 0) + bytes(24)
        if flavor == 19:  # PROC_PIDARCHINFO
            return 8, struct.pack("<II", *p.arch)
        if flavor == 27:  # PROC_PIDLISTDYNKQUEUES: the count, which may exceed the buffer
            ids = sorted(p.dyn)
            return len(ids), b"".join(struct.pack("<Q", i) for i in ids[:size // 8]).ljust(size, b"\0")
        raise AssertionError("unexpected proc_pidinfo flavor %d" % flavor)

    def pidfdinfo(self, pid, fd, flavor, size):
        self.log.append(("libproc", "pidfdinfo", pid, fd, flavor))
        p = self._proc(pid)
        if flavor == 9 and fd == -1:  # the workq kqueue
            return self._ext(p.workq, size)
        e = p.fds.get(fd)
        if e is None:
            raise OSError(MAC_EBADF, "Bad file descriptor")
        obj = e["file"].obj
        status = (2 if e["cloexec"] else 0) | (1 if self._shared(e["file"]) else 0) | (4 if e["guarded"] else 0)
        if flavor == 3 and isinstance(obj, _FSock):
            if pid in self.accepting and any(t["count"] == 0 and not t["injected"] for t in p.threads):
                obj.qlen = 0
            return 792, mac_socket_fdinfo(obj.so, obj.family, obj.host or ("0.0.0.0" if obj.family == 2 else "::"),
                                          obj.port, obj.listening, obj.options, obj.qlen, obj.backlog, obj.v6only,
                                          openflags=0x3 | (4 if e["file"].nonblock else 0), status=status)
        if flavor == 7 and isinstance(obj, _FKqueue):
            buf = bytearray(168)
            struct.pack_into("<I", buf, 160, obj.state)  # kq_state
            return 168, bytes(buf)
        if flavor == 9 and isinstance(obj, _FKqueue):
            return self._ext(obj.knotes, size)
        raise OSError(MAC_EBADF, "wrong fd type")

    def piddynkqueueinfo(self, pid, flavor, kqid, size):
        self.log.append(("libproc", "piddynkqueueinfo", pid, kqid))
        return self._ext(self._proc(pid).dyn[kqid], size)

    def _ext(self, knotes, size):
        raw = b"".join(mac_extinfo(k["ident"], k["filter"], k["flags"], k["udata"], k.get("fflags", 0),
                                   k.get("data", 0), k.get("status", 0)) for k in knotes[:size // 104])
        return len(knotes), raw.ljust(size, b"\0")

    def csops_status(self, pid):
        return self._proc(pid, False).cs

    def procargs(self, pid):
        p = self._proc(pid)
        return struct.pack("<i", len(p.argv)) + b"/Users/me/bin/server\0\0\0\0" + \
            b"".join(a.encode() + b"\0" for a in p.argv) + b"HOME=/Users/me\0"

    # -- Mach --
    def task_for_pid(self, pid):
        self._mach("task_for_pid", pid)
        self._proc(pid, False)
        return self._port(("task", pid))

    def probe_task_for_pid(self, pid, timeout):
        self.log.append(("mach", "probe_task_for_pid", pid))
        return self.probe

    def _task(self, port):
        kind, pid = self.ports[port]
        assert kind == "task", "a task port was expected"
        return self.procs[pid]

    def task_suspend(self, task):
        self._mach("task_suspend", task)
        p = self._task(task)
        p.task_suspended += 1
        if self.arrivals:
            for e in p.fds.values():
                if isinstance(e["file"].obj, _FSock) and e["file"].obj.listening:
                    e["file"].obj.qlen = self.arrivals[0]
            del self.arrivals[0]

    def task_resume(self, task):
        self._mach("task_resume", task)
        self._task(task).task_suspended -= 1

    def task_threads(self, task):
        self._mach("task_threads", task)
        p = self._task(task)
        return [self._port(("thread", p.pid, i)) for i, t in enumerate(p.threads) if t["alive"]]

    def _thread(self, port):
        kind, pid, i = self.ports[port]
        return self.procs[pid], self.procs[pid].threads[i]

    def thread_suspend(self, thread):
        self._mach("thread_suspend", thread)
        self._thread(thread)[1]["count"] += 1

    def thread_resume(self, thread):
        self._mach("thread_resume", thread)
        t = self._thread(thread)[1]
        if t["count"] == 0:
            raise self.MachError("thread_resume", 5)
        t["count"] -= 1

    def thread_suspend_count(self, thread):
        self._mach("thread_info", thread)
        return self._thread(thread)[1]["count"]

    def thread_terminate(self, thread):
        self._mach("thread_terminate", thread)
        self._thread(thread)[1]["alive"] = False

    def vm_allocate(self, task, size):
        self._mach("mach_vm_allocate", size)
        addr = self.next_addr
        self.next_addr += 0x1000000
        for off in range(0, size, 0x4000):
            self.pages[addr + off] = {"prot": 3, "data": bytearray(0x4000), "task": self._task(task).pid}
        return addr

    def vm_deallocate(self, task, addr, size):
        self._mach("mach_vm_deallocate", addr, size)
        for off in range(0, size, 0x4000):
            del self.pages[addr + off]

    def vm_protect(self, task, addr, size, prot):
        self._mach("mach_vm_protect", addr, size, prot)
        if prot & 2 and prot & 4:
            self.violations.append("W+X protection requested at %#x" % addr)
        for off in range(0, size, 0x4000):
            self.pages[addr + off]["prot"] = prot

    def vm_write(self, task, addr, data):
        self._mach("mach_vm_write", addr, len(data))
        page = self.pages[addr & ~0x3FFF]
        if not page["prot"] & 2:
            raise self.MachError("mach_vm_write", 2)
        page["data"][addr & 0x3FFF:(addr & 0x3FFF) + len(data)] = data

    def port_deallocate(self, port):
        self._mach("mach_port_deallocate", port)
        self.urefs[port] -= 1
        if self.urefs[port] < 0:
            self.violations.append("port %#x deallocated once too often" % port)

    def thread_create_running(self, task, state):
        self._mach("thread_create_running", task)
        p = self._task(task)
        self.masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        assert len(state) == 272, "ARM_THREAD_STATE64 is 272 bytes"
        x = struct.unpack_from("<29Q", state, 0)
        lr, sp, pc, cpsr, flags = struct.unpack_from("<QQQII", state, 240)
        code = self.pages.get(pc)
        if code is None or code["prot"] != 5 or bytes(code["data"][:28]) != struct.pack("<7I", *MAC_STUB_WORDS):
            self.violations.append("pc %#x is not the stub on an R|X page" % pc)
        data = self.pages.get((sp - 1) & ~0x3FFF)
        if data is None or data["prot"] != 3 or sp % 16 or (sp - 1) & ~0x3FFF == pc:
            self.violations.append("sp %#x is not in a separate RW data page" % sp)
        if flags != 1 or lr != 0:
            self.violations.append("flags %#x / lr %#x: want NO_PTRAUTH and lr 0" % (flags, lr))
        if any(t["count"] == 0 for t in p.threads if t["alive"] and not t["injected"]):
            self.violations.append("a system call was injected while a thread of pid %d could run" % p.pid)
        self.n_injected += 1
        p.threads.append({"count": 0, "alive": True, "injected": True, "pc": pc, "polls": 0, "final": None,
                          "unseen": self.n_injected <= self.unseen})
        t = p.threads[-1]
        if p.task_suspended == 0:  # a suspended task holds the new thread (thread_create_running_internal)
            result, err = self._syscall(p, x[16], x[:8])
            t["final"] = mac_thread_state({19: result, 20: 1 if err else 0}, pc=pc + 0x18, sp=sp)
        return self._port(("thread", p.pid, len(p.threads) - 1))

    def thread_get_state(self, thread):
        self._mach("thread_get_state", thread)
        _, t = self._thread(thread)
        t["polls"] += 1
        if t["final"] is None or t["polls"] <= self.polls_before_done or t.get("unseen"):
            return mac_thread_state(pc=t["pc"] + 4)  # still inside the svc
        return t["final"]

    # -- the injected system calls --
    def _mem(self, addr, size):
        page = self.pages[addr & ~0x3FFF]
        return bytes(page["data"][addr & 0x3FFF:(addr & 0x3FFF) + size])

    def _syscall(self, p, nr, a):
        name = MAC_SYSCALLS.get(nr)
        if name is None:
            self.violations.append("unknown system call %d" % nr)
            return 78, True
        self.injected.append([p.pid, name] + list(a))
        self.log.append(("syscall", name, p.pid) + tuple(a[:3]))
        err = self._count(name)
        if err:
            return err, True
        try:
            return getattr(self, "sys_" + name)(p, *a), False
        except OSError as e:
            return e.errno, True

    def _entry(self, p, fd):
        if fd not in p.fds:
            raise OSError(MAC_EBADF, "")
        return p.fds[fd]

    def _close(self, p, fd):
        del p.fds[fd]
        for e in p.fds.values():  # close removes the fd's knotes (knote_fdclose)
            if isinstance(e["file"].obj, _FKqueue):
                e["file"].obj.knotes = [k for k in e["file"].obj.knotes
                                        if k["ident"] != fd or k["filter"] not in (-1, -2, -4, -13, -15)]

    def sys_close(self, p, fd, *_):
        self._entry(p, fd)
        self._close(p, fd)
        return 0

    def sys_socket(self, p, domain, kind, proto, *_):
        if domain not in (MAC_AF_INET, MAC_AF_INET6) or kind != 1 or proto != 6:
            raise OSError(MAC_EINVAL, "")
        fd = min(set(range(len(p.fds) + 1)) - set(p.fds))
        p.fds[fd] = {"file": _FFile(_FSock(self.new_so(), domain)), "cloexec": False, "guarded": False}
        return fd

    def sys_setsockopt(self, p, fd, level, name, ptr, size, *_):
        s = self._entry(p, fd)["file"].obj
        if size != 4:
            raise OSError(MAC_EINVAL, "")
        value = struct.unpack("<i", self._mem(ptr, 4))[0]
        if level == MAC_SOL_SOCKET and name in (0x1, 0x4, 0x8, 0x10, 0x20, 0x40, 0x100, 0x200, 0x400):
            s.options = s.options | name if value else s.options & ~name
        elif level == MAC_IPPROTO_IPV6 and name == MAC_IPV6_V6ONLY and s.family == MAC_AF_INET6:
            s.v6only = bool(value)
        else:
            raise OSError(42, "")
        return 0

    def sys_bind(self, p, fd, ptr, size, *_):
        s = self._entry(p, fd)["file"].obj
        raw = self._mem(ptr, size)
        length, family, port = raw[0], raw[1], struct.unpack(">H", raw[2:4])[0]
        if family != s.family or length != size or size != (16 if family == MAC_AF_INET else 28):
            raise OSError(MAC_EINVAL, "")
        host = socket.inet_ntop(socket.AF_INET, raw[4:8]) if family == MAC_AF_INET else \
            socket.inet_ntop(socket.AF_INET6, raw[8:24])
        for q in self.procs.values():
            for e in q.fds.values():
                o = e["file"].obj
                if isinstance(o, _FSock) and o is not s and o.bound and o.port == port and o.host == host:
                    raise OSError(MAC_EADDRINUSE, "")
        s.host, s.port, s.bound = host, port, True
        return 0

    def sys_listen(self, p, fd, backlog, *_):
        s = self._entry(p, fd)["file"].obj
        if not s.bound:
            raise OSError(MAC_EINVAL, "")
        s.listening, s.backlog, s.options = True, backlog, s.options | MAC_SO_ACCEPTCONN
        return 0

    def sys_dup2(self, p, old, new, *_):
        e = self._entry(p, old)
        if new in p.fds:
            self._close(p, new)
        p.fds[new] = {"file": e["file"], "cloexec": False, "guarded": False}
        return new

    def sys_fcntl(self, p, fd, cmd, arg, *_):
        e = self._entry(p, fd)
        if cmd == 4:  # F_SETFL
            e["file"].nonblock = bool(arg & 4)
        elif cmd == 2:  # F_SETFD
            e["cloexec"] = bool(arg & 1)
        else:
            raise OSError(MAC_EINVAL, "")
        return 0

    def _kevent(self, p, kq, ptr, n, size, legacy):
        kqueue = self._entry(p, kq)["file"].obj
        if not isinstance(kqueue, _FKqueue):
            raise OSError(MAC_EBADF, "")
        if legacy != bool(kqueue.state & MAC_KQ32):  # kern_event.c kevent_get_kqfile
            raise OSError(MAC_EINVAL, "")
        for i in range(n):
            ident, filt, flags, fflags, data, udata = struct.unpack("<QhHIqQ", self._mem(ptr + i * size, 32))
            if not flags & MAC_EV_ADD or ident not in p.fds:
                raise OSError(MAC_EBADF, "")
            kqueue.knotes.append({"ident": ident, "filter": filt, "flags": flags, "fflags": fflags, "data": data,
                                  "udata": udata, "status": 4 if flags & MAC_EV_DISABLE else 0})
        return 0

    def sys_kevent(self, p, kq, ptr, n, events, nevents, timeout, *_):
        return self._kevent(p, kq, ptr, n, 32, True)

    def sys_kevent64(self, p, kq, ptr, n, events, nevents, flags, timeout, *_):
        return self._kevent(p, kq, ptr, n, 48, False)


class DarwinStaticTest(ParkTestCase):
    """The macOS module on this OS: parses as 3.9, imports without a macOS library, layouts, prototypes, stub."""

    @classmethod
    def setUpClass(cls):
        cls.b = load_module("park_darwin_arm64_under_test", DARWIN_BACKEND)

    def test_parses_as_python_3_9(self):
        with open(DARWIN_BACKEND, encoding="utf-8") as f:
            ast.parse(f.read(), filename=DARWIN_BACKEND, feature_version=(3, 9))

    def test_imports_without_any_macos_library(self):
        """A fresh interpreter imports it with every dlopen recorded: none happens, and a contract call made
        off macOS is a one-line Error, not a traceback from ctypes."""
        code = r'''
import ctypes, importlib.util, json, sys
opened = []
real = ctypes.CDLL.__init__
def spy(self, name, *args, **kwargs):
    opened.append(name)
    return real(self, name, *args, **kwargs)
ctypes.CDLL.__init__ = spy
spec = importlib.util.spec_from_file_location("park_darwin_arm64", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
errors = []
for call in (lambda: m.listeners(3000), lambda: m.process(1), lambda: m.release([1])):
    try:
        call()
    except m.Error as e:
        errors.append(str(e))
print(json.dumps({"opened": opened, "errors": errors, "park": "park" in sys.modules}))
'''
        r = subprocess.run([sys.executable, "-c", code, DARWIN_BACKEND], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout)
        self.assertEqual(got["opened"], [], "the module must not load any library when imported or off macOS")
        self.assertEqual(len(got["errors"]), 3)
        for e in got["errors"]:
            self.assertIn("runs on macOS only", e)
        self.assertFalse(got["park"], "a backend never imports park")

    def test_contract_names(self):
        for name in ("Error", "listeners", "ports_listening", "process", "stopped", "inspect", "park", "resume",
                     "swap", "hold_socket", "queue_lengths", "time_wait", "ptrace_scope", "release"):
            self.assertTrue(callable(getattr(self.b, name, None)), name)
        e = self.b.Error("m", fix="f", errno=48, parked=True)
        self.assertEqual((str(e), e.fix, e.errno, e.parked), ("m", "f", 48, True))
        self.assertIsNone(self.b.ptrace_scope())
        self.assertEqual(self.b.time_wait({"address": ["127.0.0.1", 3000]}), [])
        self.assertTrue(self.b.stopped({"state": "T"}))
        self.assertFalse(self.b.stopped({"state": "S"}))

    def test_struct_sizes_and_offsets_match_the_facts_file(self):
        b = self.b
        sizes = {"arm_thread_state64": 272, "kevent": 32, "kevent64_s": 48, "kevent_qos_s": 72, "kevent_extinfo": 104,
                 "socket_fdinfo": 792, "proc_bsdinfo": 136, "kqueue_fdinfo": 168, "proc_bsdshortinfo": 64,
                 "proc_uniqidentifierinfo": 56, "proc_archinfo": 8, "proc_fdinfo": 8, "thread_basic_info": 40}
        for name, size in sizes.items():
            with self.subTest(struct=name):
                self.assertEqual(ctypes.sizeof(getattr(b, name)), size)

        def at(struct_, *path):
            off, t = 0, struct_
            for field in path:
                off += getattr(t, field).offset
                t = dict((f[0], f[1]) for f in t._fields_)[field]
            return off

        offsets = [
            (b.arm_thread_state64, ("fp",), 232), (b.arm_thread_state64, ("lr",), 240),
            (b.arm_thread_state64, ("sp",), 248), (b.arm_thread_state64, ("pc",), 256),
            (b.arm_thread_state64, ("cpsr",), 264), (b.arm_thread_state64, ("flags",), 268),
            (b.kevent, ("filter",), 8), (b.kevent, ("flags",), 10), (b.kevent, ("fflags",), 12),
            (b.kevent, ("data",), 16), (b.kevent, ("udata",), 24), (b.kevent64_s, ("udata",), 24),
            (b.kevent64_s, ("ext",), 32), (b.kevent_qos_s, ("qos",), 12), (b.kevent_qos_s, ("udata",), 16),
            (b.kevent_qos_s, ("fflags",), 24), (b.kevent_qos_s, ("xflags",), 28), (b.kevent_qos_s, ("data",), 32),
            (b.kevent_qos_s, ("ext",), 40), (b.kevent_extinfo, ("kqext_sdata",), 72),
            (b.kevent_extinfo, ("kqext_status",), 80), (b.kevent_extinfo, ("kqext_sfflags",), 84),
            (b.kevent_extinfo, ("kqext_reserved",), 88),
            (b.socket_fdinfo, ("pfi", "fi_openflags"), 0), (b.socket_fdinfo, ("pfi", "fi_status"), 4),
            (b.socket_fdinfo, ("pfi", "fi_guardflags"), 20), (b.socket_fdinfo, ("psi", "soi_so"), 160),
            (b.socket_fdinfo, ("psi", "soi_type"), 176), (b.socket_fdinfo, ("psi", "soi_protocol"), 180),
            (b.socket_fdinfo, ("psi", "soi_family"), 184), (b.socket_fdinfo, ("psi", "soi_options"), 188),
            (b.socket_fdinfo, ("psi", "soi_state"), 192), (b.socket_fdinfo, ("psi", "soi_qlen"), 194),
            (b.socket_fdinfo, ("psi", "soi_qlimit"), 198), (b.socket_fdinfo, ("psi", "soi_kind"), 256),
            (b.socket_fdinfo, ("psi", "soi_proto"), 264),
            (b.socket_fdinfo, ("psi", "soi_proto", "pri_in", "insi_fport"), 264),
            (b.socket_fdinfo, ("psi", "soi_proto", "pri_in", "insi_lport"), 268),
            (b.socket_fdinfo, ("psi", "soi_proto", "pri_in", "insi_flags"), 280),
            (b.socket_fdinfo, ("psi", "soi_proto", "pri_in", "insi_vflag"), 288),
            (b.socket_fdinfo, ("psi", "soi_proto", "pri_in", "insi_faddr"), 296),
            (b.socket_fdinfo, ("psi", "soi_proto", "pri_in", "insi_laddr"), 312),
            (b.socket_fdinfo, ("psi", "soi_proto", "pri_in", "insi_laddr", "ina_46", "i46a_addr4"), 324),
            (b.socket_fdinfo, ("psi", "soi_proto", "pri_tcp", "tcpsi_state"), 344),
            (b.kqueue_fdinfo, ("kqueueinfo", "kq_state"), 160),
            (b.proc_bsdinfo, ("pbi_status",), 4), (b.proc_bsdinfo, ("pbi_pid",), 12),
            (b.proc_bsdinfo, ("pbi_uid",), 20), (b.proc_bsdinfo, ("pbi_ruid",), 28),
            (b.proc_bsdinfo, ("pbi_comm",), 48), (b.proc_bsdinfo, ("pbi_name",), 64),
            (b.proc_bsdinfo, ("pbi_start_tvsec",), 120), (b.proc_bsdinfo, ("pbi_start_tvusec",), 128),
            (b.proc_bsdshortinfo, ("pbsi_uid",), 36), (b.proc_uniqidentifierinfo, ("p_uniqueid",), 16),
            (b.proc_uniqidentifierinfo, ("p_idversion",), 32), (b.thread_basic_info, ("suspend_count",), 32),
        ]
        for struct_, path, want in offsets:
            with self.subTest(field="%s.%s" % (struct_.__name__, ".".join(path))):
                self.assertEqual(at(struct_, *path), want)

    def test_prototypes_have_the_widths_of_the_c_declarations(self):
        """Every foreign function's argument and result widths, against the facts file's C declarations: a
        64-bit address declared 32-bit would be truncated silently."""
        u32, i32, u64, ptr = "u32", "i32", "u64", "ptr"
        facts = {
            "task_for_pid": (i32, [u32, i32, ptr]), "task_suspend": (i32, [u32]), "task_resume": (i32, [u32]),
            "task_threads": (i32, [u32, ptr, ptr]), "thread_suspend": (i32, [u32]), "thread_resume": (i32, [u32]),
            "thread_terminate": (i32, [u32]), "thread_info": (i32, [u32, u32, ptr, ptr]),
            "thread_get_state": (i32, [u32, i32, ptr, ptr]),
            "thread_create_running": (i32, [u32, i32, ptr, u32, ptr]),
            "mach_vm_allocate": (i32, [u32, ptr, u64, i32]), "mach_vm_deallocate": (i32, [u32, u64, u64]),
            "mach_vm_protect": (i32, [u32, u64, u64, i32, i32]), "mach_vm_write": (i32, [u32, u64, u64, u32]),
            "vm_deallocate": (i32, [u32, u64, u64]), "mach_port_deallocate": (i32, [u32, u32]),
            "proc_listpids": (i32, [u32, u32, ptr, i32]), "proc_pidinfo": (i32, [i32, i32, u64, ptr, i32]),
            "proc_pidfdinfo": (i32, [i32, i32, i32, ptr, i32]),
            "proc_piddynkqueueinfo": (i32, [i32, i32, u64, ptr, i32]), "csops": (i32, [i32, u32, ptr, u64]),
            "sysctl": (i32, [ptr, u32, ptr, ptr, ptr, u64]),
        }

        def kind(t):
            if t is ctypes.c_void_p or hasattr(t, "_type_") and not isinstance(t._type_, str):
                return ptr
            size, signed = ctypes.sizeof(t), t(-1).value < 0
            return {(4, True): i32, (4, False): u32, (8, False): u64}.get((size, signed), "%s?" % t.__name__)

        table = {name: (kind(res), [kind(a) for a in args]) for name, res, args in self.b.PROTOTYPES}
        self.assertEqual(table, facts)

    def test_stub_matches_the_facts_file(self):
        b = self.b
        self.assertEqual(b.STUB, struct.pack("<7I", *MAC_STUB_WORDS))
        self.assertEqual(b.STUB_DONE, (0x0C, 0x18), "done once the result is saved; the wait's svc+4 is 0x18")
        self.assertEqual(b.STUB[:4], bytes.fromhex("011000d4"), "svc #0x80")

    def test_stub_matches_an_independent_assembler(self):
        """binutils' aarch64 assembler, from the instructions as text (CI installs binutils-aarch64-linux-gnu)."""
        gas, objcopy = shutil.which("aarch64-linux-gnu-as"), shutil.which("aarch64-linux-gnu-objcopy")
        if not gas or not objcopy:
            self.live_skip("aarch64-linux-gnu-as is not installed (apt-get install binutils-aarch64-linux-gnu)")
        src, obj, out = (os.path.join(self.tmp, n) for n in ("stub.s", "stub.o", "stub.bin"))
        with open(src, "w") as f:
            f.write(MAC_STUB_TEXT)
        subprocess.run([gas, "-o", obj, src], check=True, timeout=60)
        subprocess.run([objcopy, "-O", "binary", "-j", ".text", obj, out], check=True, timeout=60)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), self.b.STUB)


class DarwinParserTest(unittest.TestCase):
    """The libproc and kqueue parsers on buffers built field by field from the documented layouts."""

    @classmethod
    def setUpClass(cls):
        cls.b = load_module("park_darwin_arm64_under_test", DARWIN_BACKEND)

    def test_socket_fdinfo(self):
        p = self.b.parse_socket_fdinfo
        s = p(mac_socket_fdinfo(0xABCDEF0123, host="127.0.0.1", port=3000, qlen=2, qlimit=511,
                                options=MAC_SO_ACCEPTCONN | MAC_SO_REUSEADDR | MAC_SO_REUSEPORT,
                                openflags=0x7, status=0x3))
        want = {"so": 0xABCDEF0123, "family": 2, "host": "127.0.0.1", "port": 3000, "listening": True, "qlen": 2,
                "qlimit": 511, "options": 0x206, "nonblock": True, "cloexec": True, "shared": True, "guarded": False}
        self.assertEqual({k: s[k] for k in want}, want)
        six = p(mac_socket_fdinfo(1, MAC_AF_INET6, "::", 8080, v6only=False))
        self.assertEqual((six["family"], six["host"], six["port"], six["v6only"]), (30, "::", 8080, False))
        only = p(mac_socket_fdinfo(1, MAC_AF_INET6, "::1", 65535, v6only=True, status=4))
        self.assertEqual((only["host"], only["port"], only["v6only"], only["guarded"]), ("::1", 65535, True, True))
        mapped = bytearray(mac_socket_fdinfo(1, MAC_AF_INET6, "::", 80, vflag=1))
        mapped[324:328] = bytes([10, 0, 0, 7])
        self.assertEqual(p(bytes(mapped))["host"], "::ffff:10.0.0.7", "in4in6 form of a v4-mapped bind")
        self.assertFalse(p(mac_socket_fdinfo(1, listening=False))["listening"])
        self.assertFalse(p(mac_socket_fdinfo(1, kind=1))["listening"], "SOCKINFO_IN (UDP) is no TCP listener")

    def test_kqueue_state_and_registrations(self):
        b = self.b
        buf = bytearray(168)
        struct.pack_into("<I", buf, 160, MAC_KQ32 | 0x1)
        self.assertEqual(b.parse_kqueue_state(bytes(buf)), MAC_KQ32 | 0x1)
        go = 0xC000_1234_5678_9ABC  # a tagged *pollDesc: the top bit set must survive
        raw = mac_extinfo(3, -1, MAC_EV_ADD | MAC_EV_CLEAR | MAC_EV_EOF, go, fflags=7, sdata=9, status=4) + \
            mac_extinfo(3, -2, MAC_EV_ADD | MAC_EV_CLEAR, go + 1) + mac_extinfo(12, -7, MAC_EV_ADD, 5)
        got = b.parse_extinfo(raw, 3)
        self.assertEqual(got[0], {"ident": 3, "filter": -1, "flags": 0x8021, "udata": go, "fflags": 7, "data": 9,
                                  "status": 4})
        self.assertEqual([(k["filter"], k["udata"]) for k in got], [(-1, go), (-2, go + 1), (-7, 5)])
        self.assertEqual(len(b.parse_extinfo(raw, 9)), 3, "a count larger than the buffer reads what is there")

    def test_process_records(self):
        b = self.b
        info = b.parse_bsdinfo(mac_bsdinfo(PID_A, ppid=77, uid=501, status=MAC_SSTOP, flags=0x12, comm=b"node",
                                           start=(1700000123, 456789)))
        self.assertEqual(info, {"pid": PID_A, "ppid": 77, "status": 4, "flags": 0x12, "uid": 501, "name": "node",
                                "start": 1700000123456789})
        self.assertEqual(b.parse_bsdinfo(mac_bsdinfo(1, comm=b"a-very-long-comm", name=b"a-very-long-name"))["name"],
                         "a-very-long-name", "pbi_name (32) wins over the 16-byte comm")
        short = b.parse_shortbsdinfo(mac_shortbsdinfo(9, ppid=1, uid=0, status=MAC_SSTOP, comm=b"launchd", flags=2))
        self.assertEqual((short["uid"], short["status"], short["name"], short["flags"]), (0, 4, "launchd", 2))
        self.assertEqual(b.parse_uniqueid(bytes(16) + struct.pack("<Q", 0x1122334455) + bytes(32)), 0x1122334455)
        self.assertEqual(b.parse_archinfo(struct.pack("<II", 0x0100000C, 0x80000002)), (0x0100000C, 0x80000002))
        self.assertEqual(b.parse_fdlist(struct.pack("<iIiI", 0, 1, 5, 5) + b"\0\0"), [(0, 1), (5, 5)])
        info = bytearray(40)
        struct.pack_into("<i", info, 32, 2)
        self.assertEqual(b.parse_thread_basic_info(bytes(info)), 2)
        args = struct.pack("<i", 3) + b"/opt/homebrew/bin/node\0\0\0\0\0node\0server.js\0--port=3000\0PATH=/bin\0"
        self.assertEqual(b.parse_procargs(args), ["node", "server.js", "--port=3000"])
        self.assertEqual(b.parse_procargs(b"\x01"), [])

    def test_changelist_and_sockaddr_bytes(self):
        b = self.b
        reg = {"ident": 7, "filter": -1, "flags": MAC_EV_CLEAR | 0x4000, "fflags": 3, "data": 2,
               "udata": 0xFEDC_BA98_7654_3210, "disabled": True}
        ev = b.changelist("kevent", [reg])
        self.assertEqual(len(ev), 32)
        self.assertEqual(struct.unpack("<QhHIqQ", ev), (7, -1, MAC_EV_ADD | MAC_EV_CLEAR | MAC_EV_DISABLE, 3, 2,
                                                         0xFEDC_BA98_7654_3210))
        ev64 = b.changelist("kevent64", [reg, dict(reg, filter=-2, disabled=False)])
        self.assertEqual(len(ev64), 96)
        self.assertEqual(struct.unpack_from("<QhHIqQQQ", ev64, 48), (7, -2, MAC_EV_ADD | MAC_EV_CLEAR, 3, 2,
                                                                     0xFEDC_BA98_7654_3210, 0, 0))
        self.assertEqual(b.sockaddr(MAC_AF_INET, ["127.0.0.1", 3000]),
                         bytes([16, 2, 0x0B, 0xB8, 127, 0, 0, 1]) + bytes(8))
        six = b.sockaddr(MAC_AF_INET6, ["::1", 443, 0, 0])
        self.assertEqual((len(six), six[:4], six[8:24]), (28, bytes([28, 30, 1, 0xBB]),
                                                         socket.inet_pton(socket.AF_INET6, "::1")))


class DarwinOrchestrationTest(unittest.TestCase):
    """park, resume, swap and release on FakeMac: holds, order of injected calls, rollbacks, refusals."""

    @classmethod
    def setUpClass(cls):
        cls.b = load_module("park_darwin_arm64_under_test", DARWIN_BACKEND)
        FakeMac.MachError = cls.b.MachError

    def go_server(self, euid=0, **kw):
        """A Go net/http-like server: one listener at fd 3 (O_NONBLOCK, FD_CLOEXEC), its READ and WRITE
        registrations with EV_CLEAR and tagged-pointer udata in a kqueue stamped for legacy kevent(), and a
        client connection at fd 7 that is registered too and must be left alone."""
        fake = FakeMac(euid)
        p = fake.add_proc(PID_A)
        fake.add_listener(p, [3], **kw)
        kq = fake.add_kqueue(p, 4)
        p.fds[7] = {"file": _FFile(_FSock(fake.new_so(), 2, "127.0.0.1", 3000)), "cloexec": True, "guarded": False}
        kq.knotes += [{"ident": 3, "filter": -1, "flags": MAC_EV_ADD | MAC_EV_CLEAR, "udata": 0xC000_0001_2345_6780},
                      {"ident": 3, "filter": -2, "flags": MAC_EV_ADD | MAC_EV_CLEAR, "udata": 0xC000_0001_2345_6781},
                      {"ident": 7, "filter": -1, "flags": MAC_EV_ADD | MAC_EV_CLEAR, "udata": 0xC000_0009_0000_0000}]
        return fake, p, kq

    def plan_for(self, fake, port=3000, force=False):
        found = self.b.listeners(port, mach=fake)
        plan = [self.b.inspect(l, force, mach=fake) for l in found]
        return json.loads(json.dumps(plan))  # what park.py writes to the state file and reads back

    def snapshot(self, fake, pid):
        """What a test compares: each fd's socket (address, backlog, options, flags) and every knote."""
        p = fake.procs[pid]
        fds = {}
        for fd, e in sorted(p.fds.items()):
            o = e["file"].obj
            if isinstance(o, _FSock):
                fds[fd] = (o.family, o.host, o.port, o.listening, o.backlog, o.options, o.v6only, e["file"].nonblock,
                           e["cloexec"])
        knotes = sorted((fd, k["ident"], k["filter"], k["flags"], k["udata"]) for fd, e in p.fds.items()
                        if isinstance(e["file"].obj, _FKqueue) for k in e["file"].obj.knotes)
        return fds, knotes

    def assertClean(self, fake):
        self.assertEqual(fake.leaks(), [])
        self.assertEqual(fake.violations, [])

    def assertRunning(self, fake, pid):
        self.assertEqual(fake.counts(pid), [0] * len(fake.counts(pid)), "every thread released")
        self.assertEqual(fake.procs[pid].status, MAC_SRUN)

    def assertParked(self, fake, pid, stopped=False):
        """Every thread held once (the park hold); no SIGSTOP (a shell would see a stopped job), unless job
        control had stopped it before."""
        self.assertEqual(fake.counts(pid), [1] * len(fake.counts(pid)), "every thread held once (the park hold)")
        self.assertEqual(fake.procs[pid].status, MAC_SSTOP if stopped else MAC_SRUN)
        self.assertNotIn(3, fake.procs[pid].fds)

    def check_holds_bracket_injection(self, fake, pid):
        """Every thread held before the first injected call; the next thread_resume only after the last."""
        entries = [e for e in fake.log if e[0] in ("mach", "syscall")]
        first = next(i for i, e in enumerate(entries) if e[:2] == ("mach", "thread_create_running"))
        last = max(i for i, e in enumerate(entries) if e[:2] == ("mach", "thread_terminate"))
        suspended = {e[2] for e in entries[:first] if e[1] == "thread_suspend"}
        originals = {n for n, o in fake.ports.items()
                     if o[0] == "thread" and not fake.procs[o[1]].threads[o[2]]["injected"]}
        self.assertEqual(suspended, originals)
        self.assertFalse([e for e in entries[first:last] if e[1] == "thread_resume"], "no hold lifted meanwhile")

    def test_listeners_and_process(self):
        fake, p, _ = self.go_server()
        fake.add_listener(p, [9, 10], MAC_AF_INET6, "::", 3000)  # a second listener on :3000, dup'd
        other = fake.add_proc(PID_B, uid=502, flags=0x12, ppid=88)
        fake.add_listener(other, [5], port=8080)
        self.assertEqual([(l["family"], l["host"], l["port"], l["holders"]) for l in self.b.listeners(3000, fake)],
                         [(2, "127.0.0.1", 3000, {PID_A: [3]}), (30, "::", 3000, {PID_A: [9, 10]})])
        self.assertEqual(self.b.ports_listening(fake), {3000: [PID_A], 8080: [PID_B]})
        info = self.b.process(PID_A, fake)
        self.assertEqual({k: info[k] for k in ("pid", "name", "argv", "state", "uid", "start", "kernel", "tracer",
                                               "seccomp")},
                         {"pid": PID_A, "name": "server", "argv": ["./server", "-addr", ":3000"], "state": "S",
                          "uid": 501, "start": 1700000000000042, "kernel": False, "tracer": 0, "seccomp": 0})
        self.assertEqual(self.b.process(PID_B, fake)["tracer"], 88, "traced: its parent is the tracer")
        self.assertIsNone(self.b.process(999, fake))
        fake.euid_ = 501  # libproc shows another user's process only as a short record
        short = self.b.process(PID_B, fake)
        self.assertEqual((short["uid"], short["start"], short["argv"]), (502, 0, []))

    def test_a_hidden_holder_is_reported_without_a_pid(self):
        """As non-root libproc hides other users' fds; a port taken by such a process is not 'free'."""
        fake = FakeMac(euid=501)
        fake.add_listener(fake.add_proc(PID_C, uid=0), [3], port=1)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
            fake.procs[PID_C].fds[3]["file"].obj.port = port
            got = self.b.listeners(port, fake)
        self.assertEqual([(l["holders"], l["port"]) for l in got], [({}, port)])

    def test_inspect_records_everything_resume_needs(self):
        fake, p, _ = self.go_server(options=MAC_SO_REUSEADDR | MAC_SO_KEEPALIVE, backlog=4096)
        (l,) = self.plan_for(fake)
        self.assertEqual((l["family"], l["address"], l["backlog"], l["nonblock"]), (2, ["127.0.0.1", 3000], 4096, True))
        self.assertEqual(l["options"], [[0xFFFF, "SO_REUSEADDR", 4, "int", 1], [0xFFFF, "SO_KEEPALIVE", 8, "int", 1]])
        (h,) = l["holders"]
        self.assertEqual((h["pid"], h["uniqueid"], h["fds"]), (PID_A, 90000 + PID_A, [{"fd": 3, "cloexec": True,
                                                                               "nonblock": True}]))
        self.assertEqual([(r["kq"], r["api"], r["ident"], r["filter"], r["flags"], r["udata"]) for r in h["kqueue"]],
                         [(4, "kevent", 3, -1, MAC_EV_CLEAR, 0xC000_0001_2345_6780),
                          (4, "kevent", 3, -2, MAC_EV_CLEAR, 0xC000_0001_2345_6781)])

    def test_park_then_resume_restores_the_listener_exactly(self):
        fake, p, _ = self.go_server()
        before = self.snapshot(fake, PID_A)
        plan = self.plan_for(fake)
        fake.log.clear()
        result = self.b.park(plan, drain=0, mach=fake)
        self.assertEqual(result["reset"], 0)
        self.assertEqual(fake.injected, [[PID_A, "close", 3, 0, 0, 0, 0, 0, 0, 0]])
        self.assertParked(fake, PID_A)
        self.assertEqual([k[1] for k in self.snapshot(fake, PID_A)[1]], [7], "close removed the listener's knotes")
        self.check_holds_bracket_injection(fake, PID_A)
        self.assertEqual(fake.log[-1][:2], ("mach", "mach_port_deallocate"))
        self.assertNotIn("kill", [e[0] for e in fake.log], "no signal: a shell must not see a stopped job")
        self.assertClean(fake)
        fake.log.clear()
        fake.injected.clear()
        self.b.resume(plan, mach=fake)
        self.assertEqual([c[1] for c in fake.injected],
                         ["socket", "setsockopt", "bind", "listen", "fcntl", "fcntl", "kevent"])
        self.assertEqual(fake.injected[0][2:5], [2, 1, 6], "socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)")
        self.assertEqual(fake.injected[1][2:5], [3, 0xFFFF, 4],
                         "SO_REUSEADDR (recorded 1, so not cleared again)")
        self.assertEqual(fake.injected[3][2:4], [3, 128], "listen with the old backlog")
        self.assertEqual(fake.injected[4][2:5], [3, 4, 4], "fcntl(F_SETFL, O_NONBLOCK)")
        self.assertEqual(fake.injected[5][2:5], [3, 2, 1], "fcntl(F_SETFD, FD_CLOEXEC)")
        self.assertEqual(fake.injected[6][2], 4, "kevent on the listener's kqueue")
        self.assertEqual(fake.injected[6][4:8], [2, 0, 0, 0], "2 changes, no event list: nothing waits")
        self.assertEqual(self.snapshot(fake, PID_A), before, "same fd, address, backlog, options, flags and knotes")
        self.assertRunning(fake, PID_A)
        self.assertEqual([e for e in fake.log if e[0] == "kill"], [], "it was not stopped: nothing to continue")
        self.check_holds_bracket_injection(fake, PID_A)
        self.assertClean(fake)
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGALRM, signal.SIGCHLD}
        for mask in fake.masks:
            self.assertTrue(blocked <= set(mask), "signals blocked while the thread is created")
        self.assertNotIn(signal.SIGUSR1, signal.pthread_sigmask(signal.SIG_BLOCK, []), "and unblocked after")

    def test_ipv6_dup_fds_and_kevent64(self):
        """A dual-stack listener at fds 5 and 6 (fd 3 free, so socket() gets 3: dup2 to both, then close 3),
        SO_REUSEPORT, V6ONLY clear, SO_REUSEADDR clear (borrowed for the bind, then cleared), and a kqueue
        stamped for kevent64: the 48-byte struct, the udata unchanged."""
        fake = FakeMac()
        p = fake.add_proc(PID_A)
        fake.add_listener(p, [5, 6], MAC_AF_INET6, "::", 3000, 1024, MAC_SO_REUSEPORT, nonblock=False, cloexec=False)
        p.fds[6]["cloexec"] = True
        kq = fake.add_kqueue(p, 4, MAC_KQ64)
        kq.knotes.append({"ident": 6, "filter": -1, "flags": MAC_EV_ADD | MAC_EV_DISABLE, "udata": MASK64,
                          "fflags": 0, "status": 4})
        before = self.snapshot(fake, PID_A)
        plan = self.plan_for(fake)
        self.b.park(plan, drain=0, mach=fake)
        self.assertEqual([c[1:3] for c in fake.injected], [["close", 5], ["close", 6]])
        fake.injected.clear()
        self.b.resume(plan, mach=fake)
        self.assertEqual([c[1] for c in fake.injected],
                         ["socket", "setsockopt", "setsockopt", "setsockopt", "bind", "listen", "setsockopt", "dup2",
                          "dup2", "close", "fcntl", "kevent64"])
        self.assertEqual([c[3:5] for c in fake.injected if c[1] == "setsockopt"],
                         [[0xFFFF, 0x200], [41, 27], [0xFFFF, 4], [0xFFFF, 4]])
        self.assertEqual([c[2:4] for c in fake.injected if c[1] == "dup2"], [[3, 5], [3, 6]])
        self.assertEqual(self.snapshot(fake, PID_A), before)
        self.assertEqual(kq.knotes[0]["status"], 4, "a disabled registration comes back disabled")
        self.assertRunning(fake, PID_A)
        self.assertClean(fake)

    def test_the_kevent_call_follows_the_kqueue_stamp(self):
        for state, call in ((MAC_KQ32, "kevent"), (MAC_KQ64, "kevent64"), (MAC_KQQOS, "kevent64")):
            with self.subTest(state=state):
                fake, p, kq = self.go_server()
                kq.state = state
                plan = self.plan_for(fake)
                self.assertEqual({r["api"] for r in plan[0]["holders"][0]["kqueue"]}, {call})
                self.b.park(plan, drain=0, mach=fake)
                self.b.resume(plan, mach=fake)
                self.assertEqual(fake.injected[-1][1], call)
                self.assertEqual(sorted(k["udata"] for k in kq.knotes if k["ident"] == 3),
                                 [0xC000_0001_2345_6780, 0xC000_0001_2345_6781])
                self.assertClean(fake)

    def test_every_failed_resume_step_leaves_it_parked(self):
        steps = ["socket", "setsockopt", "bind", "listen", "fcntl", "fcntl", "kevent"]
        for n, name in enumerate(steps):
            with self.subTest(step=n, call=name):
                fake, p, _ = self.go_server()
                plan = self.plan_for(fake)
                self.b.park(plan, drain=0, mach=fake)
                parked = self.snapshot(fake, PID_A)
                fake.fail[(name, steps[:n + 1].count(name))] = MAC_EADDRINUSE if name == "bind" else MAC_EINVAL
                with self.assertRaises(self.b.Error) as cm:
                    self.b.resume(plan, mach=fake)
                if name == "bind":
                    self.assertEqual(cm.exception.errno, MAC_EADDRINUSE, "park.py waits or names the port's holder")
                self.assertEqual(self.snapshot(fake, PID_A), parked, "what was created is closed again")
                self.assertParked(fake, PID_A)
                self.assertClean(fake)

    def test_every_failed_park_step_leaves_it_running(self):
        cases = [("task_for_pid", 5), ("task_suspend", 5), ("task_threads", 5), ("thread_suspend", 2),
                 ("mach_vm_allocate", 3), ("mach_vm_write", 2), ("mach_vm_protect", 2), ("thread_create_running", 53),
                 ("thread_create_running", 2), ("close", MAC_EBADF)]
        for name, code in cases:
            with self.subTest(call=name, code=code):
                fake, p, _ = self.go_server()
                before = self.snapshot(fake, PID_A)
                plan = self.plan_for(fake)
                fake.fail[(name, 1 if name != "thread_suspend" else 2)] = code
                with self.assertRaises(self.b.Error) as cm:
                    self.b.park(plan, drain=0, mach=fake)
                self.assertFalse(cm.exception.parked)
                self.assertEqual(self.snapshot(fake, PID_A), before)
                self.assertRunning(fake, PID_A)
                self.assertClean(fake)
                if (name, code) == ("thread_create_running", 53):
                    self.assertIn("security policy", str(cm.exception))
                if (name, code) == ("thread_create_running", 2):
                    self.assertIn("arm64e", str(cm.exception))
                if name == "mach_vm_protect":
                    self.assertIn("executable", str(cm.exception))

    def test_a_failed_second_close_puts_the_first_back(self):
        fake = FakeMac()
        p = fake.add_proc(PID_A)
        fake.add_listener(p, [3, 5])
        kq = fake.add_kqueue(p, 4)
        kq.knotes.append({"ident": 3, "filter": -1, "flags": MAC_EV_ADD | MAC_EV_CLEAR, "udata": 0xC0DE})
        before = self.snapshot(fake, PID_A)
        so = p.fds[3]["file"].obj.so
        plan = self.plan_for(fake)
        fake.fail[("close", 2)] = MAC_EBADF
        with self.assertRaises(self.b.Error):
            self.b.park(plan, drain=0, mach=fake)
        self.assertEqual(self.snapshot(fake, PID_A), before)
        self.assertEqual(p.fds[3]["file"].obj.so, so, "the very same socket, dup2'ed back from fd 5")
        self.assertEqual([c[1:3] for c in fake.injected],
                         [["close", 3], ["close", 5], ["dup2", 5], ["fcntl", 3], ["kevent", 4]])
        self.assertEqual([c[3] for c in fake.injected if c[1] in ("dup2", "fcntl")], [3, 2], "dup2(5, 3), F_SETFD")
        self.assertRunning(fake, PID_A)
        self.assertClean(fake)

    def test_completion_is_polled_and_a_call_that_never_ends_is_abandoned(self):
        fake, p, _ = self.go_server()
        fake.polls_before_done = 5
        plan = self.plan_for(fake)
        self.b.park(plan, drain=0, mach=fake)
        self.assertEqual(fake.names("mach").count("thread_get_state"), 6)
        fake, p, _ = self.go_server()
        plan = self.plan_for(fake)
        fake.polls_before_done = 10 ** 9
        old = self.b.CALL_TIMEOUT
        self.b.CALL_TIMEOUT = 0.05
        try:
            with self.assertRaises(self.b.Error) as cm:
                self.b.park(plan, drain=0, mach=fake)
        finally:
            self.b.CALL_TIMEOUT = old
        # The simulated close did run although park never saw it finish: park must not count it as "not
        # closed" and let the server run without its listener. Every later call hangs too, so the listener
        # cannot be put back: the server stays parked, and says so.
        self.assertIn("did not finish", str(cm.exception))
        self.assertTrue(cm.exception.parked, "a close that ran unseen must not be taken for one that did not")
        self.assertEqual(fake.names("mach")[-1], "mach_port_deallocate")
        self.assertFalse([t for t in p.threads if t["injected"] and t["alive"]], "the stuck thread is terminated")
        self.assertParked(fake, PID_A)
        self.assertClean(fake)

    def test_a_close_seen_late_is_put_back(self):
        """The close runs but its completion is not seen; the calls after it work: the listener comes back,
        exactly as it was, and the server runs."""
        fake, p, _ = self.go_server()
        plan = self.plan_for(fake)
        before = self.snapshot(fake, PID_A)
        fake.unseen = 1  # the close
        old = self.b.CALL_TIMEOUT
        self.b.CALL_TIMEOUT = 0.05
        try:
            with self.assertRaises(self.b.Error) as cm:
                self.b.park(plan, drain=0, mach=fake)
        finally:
            self.b.CALL_TIMEOUT = old
        self.assertFalse(cm.exception.parked)
        self.assertRunning(fake, PID_A)
        self.assertEqual(self.snapshot(fake, PID_A), before)
        self.assertClean(fake)

    def test_queued_clients_are_let_in_before_the_close(self):
        """Connections in the accept queue when the threads are held: park lets the server run again (it
        accepts them) and holds it anew; when the drain time is over it closes anyway and counts the reset."""
        fake, p, _ = self.go_server()
        plan = self.plan_for(fake)
        fake.accepting.add(PID_A)
        fake.arrivals = [2]  # two clients connect just as park holds the threads
        self.assertEqual(self.b.park(plan, drain=5, mach=fake)["reset"], 0)
        self.assertEqual(fake.names("mach").count("thread_resume"), 3, "released once, then held again")
        self.assertParked(fake, PID_A)
        self.assertClean(fake)
        fake, p, _ = self.go_server()
        plan = self.plan_for(fake)
        fake.arrivals = [2, 2, 2, 2, 2]  # and a server that does not accept them
        self.assertEqual(self.b.park(plan, drain=0.05, mach=fake)["reset"], 2)
        self.assertParked(fake, PID_A)
        self.assertClean(fake)

    def test_a_stopped_process_is_continued_for_the_injection_and_stopped_again(self):
        fake, p, _ = self.go_server()
        fake.kill(PID_A, signal.SIGSTOP)  # Ctrl+Z'ed before park: a stopped task would hold the injected thread
        plan = self.plan_for(fake)
        fake.log.clear()
        self.b.park(plan, drain=0, mach=fake)
        self.assertParked(fake, PID_A, stopped=True)
        self.assertEqual([e for e in fake.log if e[0] == "kill"],
                         [("kill", PID_A, signal.SIGCONT), ("kill", PID_A, signal.SIGSTOP)])
        self.assertClean(fake)

    def test_release_lifts_parks_holds_and_injects_nothing(self):
        fake, p, _ = self.go_server()
        plan = self.plan_for(fake)
        self.b.park(plan, drain=0, mach=fake)
        fake.injected.clear()
        self.b.release([PID_A], mach=fake)
        self.assertEqual(fake.counts(PID_A), [0, 0, 0])
        self.assertEqual(fake.injected, [])
        self.assertClean(fake)

    def test_swap_moves_each_listener_and_rolls_back(self):
        fake, p, _ = self.go_server()
        q = fake.add_proc(PID_C)
        fake.add_listener(q, [3], port=3001)
        plans = (self.plan_for(fake, 3000), self.plan_for(fake, 3001))
        self.b.swap(*plans, mach=fake)
        self.assertEqual((p.fds[3]["file"].obj.port, q.fds[3]["file"].obj.port), (3001, 3000))
        self.assertRunning(fake, PID_A)
        self.assertRunning(fake, PID_C)
        self.assertClean(fake)
        fake, p, _ = self.go_server()
        q = fake.add_proc(PID_C)
        fake.add_listener(q, [3], port=3001)
        plans = (self.plan_for(fake, 3000), self.plan_for(fake, 3001))
        before = (self.snapshot(fake, PID_A), self.snapshot(fake, PID_C))
        fake.fail[("bind", 2)] = MAC_EADDRINUSE
        with self.assertRaises(self.b.Error):
            self.b.swap(*plans, mach=fake)
        self.assertEqual((self.snapshot(fake, PID_A), self.snapshot(fake, PID_C)), before)
        self.assertRunning(fake, PID_A)
        self.assertRunning(fake, PID_C)
        self.assertClean(fake)

    def test_refusals(self):
        b = self.b

        def refused(setup, words, force=False):
            fake, p, kq = self.go_server()
            setup(fake, p, kq)
            with self.assertRaises(b.Error) as cm:
                self.plan_for(fake, force=force)
            self.assertIn(words, str(cm.exception))
            self.assertFalse([e for e in fake.log if e[0] == "mach"], "refused before task_for_pid")
            return cm.exception

        cases = {
            "arm64e": lambda f, p, kq: setattr(p, "arch", (MAC_CPU_ARM64, 0x80000002)),
            "Rosetta": lambda f, p, kq: setattr(p, "arch", (0x01000007, 3)),
            "code-signing enforcement": lambda f, p, kq: setattr(p, "cs", 0x1 | 0x100 | 0x200 | 0x10000),
            "guards its listener": lambda f, p, kq: p.fds[3].update(guarded=True),
            "libdispatch": lambda f, p, kq: p.dyn.update({77: [{"ident": 3, "filter": -1, "flags": 1, "udata": 1}]}),
            "cannot see": lambda f, p, kq: setattr(p.fds[3]["file"], "hidden_refs", 1),
            "one process only": lambda f, p, kq: f.add_proc(5000).fds.update({3: p.fds[3]}),
            "filter -15": lambda f, p, kq: kq.knotes.append({"ident": 3, "filter": -15, "flags": 1, "udata": 0}),
            "options park cannot restore": lambda f, p, kq: setattr(p.fds[3]["file"].obj, "options", 0x86),
        }
        for words, setup in cases.items():
            with self.subTest(refusal=words):
                e = refused(setup, words)
                if words == "filter -15":
                    self.assertIn("--force", e.fix)
        workq = lambda f, p, kq: p.workq.append({"ident": 3, "filter": -1, "flags": 1, "udata": 9})  # noqa: E731
        refused(workq, "libdispatch", force=True)
        fake, p, kq = self.go_server()
        p.fds[3]["file"].obj.options |= MAC_SO_LINGER
        self.assertEqual([o[1] for o in self.plan_for(fake, force=True)[0]["options"]], ["SO_REUSEADDR"],
                         "--force leaves SO_LINGER out")

    def test_task_for_pid_cannot_hang_park(self):
        b = self.b
        fake, p, _ = self.go_server(euid=501)
        plan = self.plan_for(fake)
        fake.probe = None  # the child never answered: taskgated or a password prompt
        with self.assertRaises(b.Error) as cm:
            b.park(plan, drain=0, mach=fake)
        self.assertIn("did not let park at pid %d" % PID_A, str(cm.exception))
        self.assertIn("sudo park 3000", cm.exception.fix)
        self.assertIn("com.apple.security.cs.debugger", cm.exception.fix)
        self.assertNotIn("task_for_pid", fake.names("mach"), "never called in park's own process")
        fake.probe = 5
        with self.assertRaises(b.Error) as cm:
            b.resume(plan, mach=fake)
        self.assertIn("KERN_FAILURE (5)", str(cm.exception))
        self.assertIn("sudo park resume 3000", cm.exception.fix)
        self.assertClean(fake)
        fake, p, _ = self.go_server(euid=0)
        plan = self.plan_for(fake)
        fake.fail[("task_for_pid", 1)] = 5
        with self.assertRaises(b.Error) as cm:
            b.park(plan, drain=0, mach=fake)
        self.assertIn("even as root", str(cm.exception))
        self.assertIn("get-task-allow", cm.exception.fix)
        self.assertNotIn("probe_task_for_pid", fake.names("mach"), "root needs no probe")

    def test_given_sockets_and_hold_are_refused_with_a_fix(self):
        fake, p, _ = self.go_server()
        plan = self.plan_for(fake)
        with self.assertRaises(self.b.Error) as cm:
            self.b.resume(plan, given=[9], mach=fake)
        self.assertEqual(cm.exception.fix, "park resume 3000")
        with self.assertRaises(self.b.Error) as cm:
            self.b.hold_socket(plan[0])
        self.assertIn("park resume 3000", cm.exception.fix)
        self.assertEqual(fake.log[-1][0], "libproc", "nothing was touched")

    def test_resume_refuses_a_reused_pid_or_fd(self):
        fake, p, _ = self.go_server()
        plan = self.plan_for(fake)
        self.b.park(plan, drain=0, mach=fake)
        p.uniqueid += 1
        with self.assertRaises(self.b.Error) as cm:
            self.b.resume(plan, mach=fake)
        self.assertIn("different process", str(cm.exception))
        p.uniqueid -= 1
        p.fds[3] = {"file": _FFile(_FSock(fake.new_so(), 2)), "cloexec": False, "guarded": False}
        with self.assertRaises(self.b.Error) as cm:
            self.b.resume(plan, mach=fake)
        self.assertIn("reused fd 3", str(cm.exception))
        self.assertEqual(fake.counts(PID_A), [1, 1, 1], "still parked")
        self.assertClean(fake)

    def test_mach_wrapper_through_ctypes_with_the_prototype_table(self):
        """The Mach class's ctypes code, run for real: each libSystem function is replaced by a C callback built
        from the module's own prototype table, so every argument goes through ctypes' conversion to C and back
        (a wrong type is an ArgumentError) and every out-parameter is written through a real pointer."""
        b = self.b
        calls, keep, arrays, memory = {}, [], [], {}

        def task_for_pid(me, pid, port):
            calls["task_for_pid"] = (me, pid)
            port[0] = 0x907
            return 0

        def task_threads(task, arr, count):
            a = (ctypes.c_uint32 * 3)(0x1507, 0x160B, 0x170F)
            arrays.append(a)
            arr[0] = ctypes.cast(a, ctypes.POINTER(ctypes.c_uint32))
            count[0] = 3
            return 0

        def vm_deallocate(me, addr, size):
            calls["vm_deallocate"] = (me, addr == ctypes.addressof(arrays[0]), size)
            return 0

        def thread_info(thread, flavor, info, count):
            calls["thread_info"] = (thread, flavor, count[0])
            ctypes.memmove(info + 32, ctypes.byref(ctypes.c_int32(2)), 4)  # suspend_count @32
            return 0

        def thread_get_state(thread, flavor, state, count):
            calls["thread_get_state"] = (flavor, count[0])
            ctypes.memmove(state + 256, ctypes.byref(ctypes.c_uint64(0x1_0000_4018)), 8)  # pc @256
            return 0

        def thread_create_running(task, flavor, state, count, child):
            calls["thread_create_running"] = (task, flavor, count, ctypes.string_at(state + 256, 8))
            child[0] = 0x2203
            return 0

        def mach_vm_allocate(task, addr, size, flags):
            calls["mach_vm_allocate"] = (task, size, flags)
            addr[0] = 0x1_2345_0000  # above 4 GiB: a 32-bit type anywhere would lose it
            return 0

        def mach_vm_write(task, addr, data, count):
            memory[addr] = ctypes.string_at(data, count)
            return 0

        def mach_vm_protect(task, addr, size, set_max, prot):
            calls["mach_vm_protect"] = (addr, size, set_max, prot)
            return 0

        def mach_port_deallocate(me, port):
            calls["mach_port_deallocate"] = (me, port)
            return 17  # KERN_INVALID_RIGHT

        impls = {f.__name__: f for f in (task_for_pid, task_threads, vm_deallocate, thread_info, thread_get_state,
                                         thread_create_running, mach_vm_allocate, mach_vm_write, mach_vm_protect,
                                         mach_port_deallocate)}
        lib = type("FakeLibSystem", (), {})()
        for name, restype, argtypes in b.PROTOTYPES:
            if name in impls:
                fn = ctypes.CFUNCTYPE(restype, *argtypes)(impls[name])
                keep.append(fn)
                fn.restype, fn.argtypes = restype, argtypes  # as _libsystem() applies the table
                setattr(lib, name, fn)

        class M(b.Mach):
            def _self(self):
                return 0x103

        m = M(lib)
        self.assertEqual(m.task_for_pid(4242), 0x907)
        self.assertEqual(calls["task_for_pid"], (0x103, 4242))
        self.assertEqual(m.task_threads(0x907), [0x1507, 0x160B, 0x170F])
        self.assertEqual(calls["vm_deallocate"], (0x103, True, 12), "the out-of-line array: count * 4 bytes")
        self.assertEqual(m.thread_suspend_count(0x1507), 2)
        self.assertEqual(calls["thread_info"], (0x1507, 3, 10), "THREAD_BASIC_INFO, count 10")
        self.assertEqual(struct.unpack_from("<Q", m.thread_get_state(0x2203), 256)[0], 0x1_0000_4018)
        self.assertEqual(calls["thread_get_state"], (6, 68), "ARM_THREAD_STATE64, count exactly 68")
        state = b.arm_thread_state64()
        state.pc = 0x1_2345_0000
        self.assertEqual(m.thread_create_running(0x907, bytes(state)), 0x2203)
        self.assertEqual(calls["thread_create_running"], (0x907, 6, 68, struct.pack("<Q", 0x1_2345_0000)))
        base = m.vm_allocate(0x907, 0x8000)
        self.assertEqual((base, calls["mach_vm_allocate"]), (0x1_2345_0000, (0x907, 0x8000, 1)))
        m.vm_write(0x907, base + 0x4000, b"\x10\x02\x0b\xb8")
        self.assertEqual(memory, {base + 0x4000: b"\x10\x02\x0b\xb8"})
        m.vm_protect(0x907, base, 0x4000, 5)
        self.assertEqual(calls["mach_vm_protect"], (base, 0x4000, 0, 5), "R|X, current protection only")
        with self.assertRaises(b.MachError) as cm:
            m.port_deallocate(0x1507)
        self.assertEqual((cm.exception.call, cm.exception.kr), ("mach_port_deallocate", 17))
        self.assertEqual(str(cm.exception), "mach_port_deallocate: KERN_INVALID_RIGHT (17)")
        self.assertEqual(calls["mach_port_deallocate"], (0x103, 0x1507))


@unittest.skipUnless(LINUX, "uses this OS's backend")
class DarwinFrontTest(ParkTestCase):
    """park.py's side of the macOS contract, run here with a stand-in backend in place of this platform's:
    `release` lifts the backend's holds before it signals (a signal does not undo a thread_suspend hold), and a
    failure to lift them is a one-line error that keeps the process parked and its state."""

    def setUp(self):
        super().setUp()
        self.park = load_module("park_logic_under_test", PARK)
        name = self.park.BACKENDS[("linux", MACHINE)][-1]
        saved = sys.modules.get(name)
        self.addCleanup(lambda: sys.modules.__setitem__(name, saved) if saved else sys.modules.pop(name, None))
        old = os.environ.get("PARK_HOME")
        os.environ["PARK_HOME"] = self.home
        self.addCleanup(lambda: os.environ.__setitem__("PARK_HOME", old) if old else os.environ.pop("PARK_HOME"))
        self.child = subprocess.Popen(["sleep", "60"])
        self.addCleanup(self.child.wait)
        self.addCleanup(self.child.kill)
        os.kill(self.child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10 * TIME_SCALE
        while proc_state(self.child.pid) != "T":  # the stop takes effect asynchronously
            if time.monotonic() > deadline:
                self.fail("the stand-in process did not stop")
            time.sleep(0.01)
        self.calls = []
        fake = type(sys)(name)
        fake.Error = type("Error", (Exception,), {"fix": None, "errno": None, "parked": False})
        fake.process = lambda pid: {"pid": pid, "start": 7, "state": "T", "name": "sleep", "argv": ["sleep"],
                                    "uid": os.geteuid(), "kernel": False, "tracer": 0, "seccomp": 0}
        fake.stopped = lambda info: True
        fake.held = lambda info, keeper: keeper is not None
        fake.release = self.calls.append
        sys.modules[name] = fake
        self.fake = fake
        self.park.write_state({"kind": self.park.KIND, "schema": self.park.SCHEMA, "port": 3000, "parked_at": 1.0,
                               "holders": [{"pid": self.child.pid, "starttime": 7, "uid": 0, "name": "sleep",
                                            "argv": ["sleep", "60"]}], "listeners": []})

    def main(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = self.park.main(list(argv))
        return rc, out.getvalue(), err.getvalue()

    def test_release_lifts_the_backends_holds_and_leaves_job_control_alone(self):
        """The keeper is gone (this record names none), so release lifts the thread holds itself; a process
        job control had stopped (the stand-in is SIGSTOPped) stays stopped: park never sent that stop."""
        rc, out, err = self.main("release", "3000")
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual(self.calls, [[self.child.pid]])
        self.assertIn("continued pid %d" % self.child.pid, out)
        self.assertEqual(proc_state(self.child.pid), "T", "no SIGCONT: park did not stop it")
        self.assertFalse(os.path.exists(self.park.state_path(3000)))

    def test_a_failed_release_keeps_it_parked(self):
        def refuse(pids):
            e = self.fake.Error("macOS refused park access to pid %d" % pids[0])
            e.fix = "sudo park release %d" % pids[0]
            raise e
        self.fake.release = refuse
        rc, out, err = self.main("release", "3000")
        self.assertEqual(rc, 1)
        self.assertEqual(err, "park: macOS refused park access to pid %d\n  fix: sudo park release %d\n"
                         % (self.child.pid, self.child.pid))
        self.assertEqual(proc_state(self.child.pid), "T", "no signal was sent")
        self.assertTrue(os.path.exists(self.park.state_path(3000)))


# ---------------------------------------------------------------------------------------------------------
# Runner: `python3 test_park.py` ends with one line "N passed, N failed, N skipped".

class _TallyResult(unittest.TextTestResult):
    """Counts each test once: failed (any failure or error, also in a subtest), skipped, or passed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = {}

    def _mark(self, test, outcome):
        if self.outcomes.get(test.id()) != "failed":
            self.outcomes[test.id()] = outcome

    def addSuccess(self, test):
        super().addSuccess(test)
        self._mark(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._mark(test, "failed")

    def addError(self, test, err):
        super().addError(test, err)
        self._mark(test, "failed")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._mark(test, "failed")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._mark(test, "skipped")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._mark(test, "passed")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._mark(test, "failed")


def run_all(argv=None):
    """Run every test (or the names given), print the tally as the last line; 1 if anything failed."""
    loader = unittest.TestLoader()
    module = sys.modules[__name__]
    names = list(argv or [])
    if names:
        suite = loader.loadTestsFromNames(names, module)
    else:  # a class that says explicit = True (it needs another kernel) runs only when named
        suite = unittest.TestSuite(loader.loadTestsFromTestCase(c) for _, c in sorted(vars(module).items())
                                   if isinstance(c, type) and issubclass(c, unittest.TestCase)
                                   and not c.__dict__.get("explicit"))
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=_TallyResult)
    started = time.monotonic()
    result = runner.run(suite)
    counts = {k: sum(1 for v in result.outcomes.values() if v == k) for k in ("passed", "failed", "skipped")}
    sys.stdout.write("(%.1f s)\n" % (time.monotonic() - started))
    sys.stdout.write("%d passed, %d failed, %d skipped\n" % (counts["passed"], counts["failed"], counts["skipped"]))
    sys.stdout.flush()
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(run_all(sys.argv[1:]))
