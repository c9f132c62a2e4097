#!/usr/bin/env python3
"""Benchmark park against a node HTTP server with about 10 threads.

Measures, over --rounds interleaved rounds:
  1. wall time of the whole `park PORT` and `park resume PORT` processes, beside `PYTHON -c pass` run in the
     same round (each round: `-c pass`, park, resume), and the per-round ratios park/bare and resume/bare;
  2. how long park keeps the target's threads stopped by ptrace (the PARK_DEBUG=1 line of park and resume);
  3. the time from spawning `park resume PORT` to the first HTTP 200 served by the resumed server (measured in
     a second park/resume pair per round, so the client's polling does not disturb the wall times of 1.).

After the rounds, the server is parked once more and park's keeper (the process that holds a park) is left idle
for --keeper-idle seconds: its CPU time over that span (utime+stime from /proc/PID/stat) and its resident memory
(VmRSS) are reported.

Every round checks that the server is held by the keeper and its port free after park, and that after resume the same
PID answers with a request counter that keeps increasing. PYTHON is the real interpreter binary
(os.path.realpath(sys.executable), never a pyenv shim) unless --python is given. The node server is always
resumed (if parked) and killed by its PID at the end, also on errors, SIGTERM and Ctrl+C.

Standard library only; Python 3.9+.
    python3 bench/bench_park.py [--rounds 20] [--python PATH] [--node /usr/bin/node] [--threads 10]
        [--processes N [--processes-cgroup own|same]]

With --processes N, N idle processes run meanwhile (in a cgroup of their own unless told otherwise), and the
report shows how long park took to find the listener's holders among them.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PARK = os.path.join(os.path.dirname(HERE), "park.py")
HELD_RE = re.compile(r"park: debug: threads held by ptrace ([0-9.]+) ms")
MAIN_RE = re.compile(r"park: debug: main started at ([0-9.]+)")
FOUND_RE = re.compile(r"park: debug: holders found in ([0-9.]+) ms")

# The server: sizes libuv's threadpool so the whole process has --threads threads (the pool starts lazily and
# reads UV_THREADPOOL_SIZE from the environment when it starts), starts the pool with a pbkdf2, then listens on
# 127.0.0.1 port 0 (a free port chosen by the kernel) and reports port, pid and thread count on stdout.
SERVER_JS = r"""
'use strict';
const http = require('http'), crypto = require('crypto'), fs = require('fs');
const tasks = () => fs.readdirSync('/proc/self/task').length;
const want = parseInt(process.env.BENCH_THREADS || '10', 10);
const base = tasks();
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = String(Math.max(1, want - base));
let count = 0;
const server = http.createServer((req, res) => {
  count += 1;
  const body = JSON.stringify({n: count, pid: process.pid});
  res.writeHead(200, {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body)});
  res.end(body);
});
crypto.pbkdf2('bench', 'salt', 1, 32, 'sha256', (err) => {
  if (err) throw err;
  fs.stat('/', () => {
    server.listen(0, '127.0.0.1', () => {
      setTimeout(() => {
        process.stdout.write('READY ' + JSON.stringify({port: server.address().port, pid: process.pid,
          threads: tasks(), base: base, pool: process.env.UV_THREADPOOL_SIZE}) + '\n');
      }, 100);
    });
  });
});
"""


class BenchError(Exception):
    pass


class Interrupted(BaseException):
    def __init__(self, signum):
        super().__init__("signal %d" % signum)
        self.signum = signum


def on_sigterm(signum, frame):
    raise Interrupted(signum)


# ---------------------------------------------------------------------------------------------------------
# Processes

def run(cmd, env, timeout=30.0):
    """Run cmd to completion; (seconds, returncode, stdout, stderr). The child has its own session, so a
    Ctrl+C reaches only this script; if we are interrupted meanwhile, the child (park may be in the middle of
    changing the target) is allowed to finish before the interrupt goes on."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        finish(p)
        raise BenchError("%s took more than %.0f s" % (" ".join(cmd), timeout))
    except BaseException:
        finish(p)
        raise
    dt = time.perf_counter() - t0
    return dt, p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def finish(p, timeout=15.0):
    """Let a child finish (ignoring further Ctrl+C meanwhile); kill it only if it hangs."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
        except Exception:
            pass
    finally:
        signal.signal(signal.SIGINT, old)


def proc_state(pid):
    """The one-letter state of pid from /proc/PID/stat, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[0]


def thread_count(pid):
    try:
        return len(os.listdir("/proc/%d/task" % pid))
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------------
# HTTP

def http_get(port, timeout):
    """GET / on 127.0.0.1:port; (status, body). Raises OSError (refused, reset, timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.settimeout(timeout)
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    finally:
        s.close()
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].split()
    if len(line) < 2 or not line[1].isdigit():
        raise OSError("bad HTTP response: %r" % data[:80])
    return int(line[1]), body


def counter(port, timeout=2.0):
    status, body = http_get(port, timeout)
    if status != 200:
        raise BenchError("GET / answered %d" % status)
    d = json.loads(body.decode())
    return d["n"], d["pid"]


def port_free(port):
    """True when nothing listens on 127.0.0.1:port: a connect is refused and a bind (SO_REUSEADDR, so that
    TIME_WAIT does not count) succeeds."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return False
    except OSError:
        pass
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------------------
# Statistics and report

def cgroup2_root():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return left.split()[4]
    return None


def held_ms(stderr, what):
    m = HELD_RE.search(stderr)
    if not m:
        raise BenchError("no 'threads held by ptrace' debug line from %s; stderr: %r" % (what, stderr.strip()))
    return float(m.group(1))


def stats(xs):
    return statistics.median(xs), min(xs), max(xs)


def fmt(v, unit):
    return ("%.2f×" % v) if unit == "x" else ("%.2f ms" % v)


def verdict(value, limit, strict=False):
    ok = value < limit if strict else value <= limit
    return "pass" if ok else "FAIL"


def machine_info(python, node, warm_pycache):
    lines = []
    u = os.uname()
    lines.append("kernel: %s %s %s (%s)" % (u.sysname, u.release, u.machine, u.version))
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = "?"
    lines.append("cpus: %s online, %s usable by this process; %s" % (os.cpu_count(), affinity, model))
    try:
        pv = subprocess.check_output([python, "-c", "import sys, platform; print(platform.python_implementation(),"
                                      " sys.version.split()[0])"], stdin=subprocess.DEVNULL).decode().strip()
    except (OSError, subprocess.CalledProcessError) as e:
        pv = "? (%s)" % e
    lines.append("python: %s at %s (this script runs on %s, sys.executable %s)"
                 % (pv, python, platform.python_version(), sys.executable))
    try:
        nv = subprocess.check_output([node, "--version"], stdin=subprocess.DEVNULL).decode().strip()
    except (OSError, subprocess.CalledProcessError) as e:
        nv = "? (%s)" % e
    if warm_pycache:
        lines.append("bytecode: park's backend cached in a temp PYTHONPYCACHEPREFIX (--warm-pycache)")
    else:
        lines.append("bytecode: PYTHONDONTWRITEBYTECODE=%s, PYTHONPYCACHEPREFIX=%s (inherited; park.py itself is "
                     "always compiled, being the script)" % (os.environ.get("PYTHONDONTWRITEBYTECODE", "unset"),
                                                             os.environ.get("PYTHONPYCACHEPREFIX", "unset")))
    lines.append("node: %s at %s" % (nv, node))
    try:
        park_v = subprocess.check_output([python, PARK, "--version"], stdin=subprocess.DEVNULL).decode().strip()
    except (OSError, subprocess.CalledProcessError) as e:
        park_v = "? (%s)" % e
    lines.append("park: %s (%s)" % (park_v, PARK))
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            lines.append("ptrace_scope: %s, euid %d" % (f.read().strip(), os.geteuid()))
    except OSError:
        lines.append("ptrace_scope: (no Yama), euid %d" % os.geteuid())
    return lines


def report(r, info, server, rounds_done, args):
    print()
    print("## park benchmark")
    print()
    for line in info:
        print("- " + line)
    print("- target: node HTTP server pid %d on 127.0.0.1:%d, %s threads (%s before the threadpool, "
          "UV_THREADPOOL_SIZE=%s)" % (server["pid"], server["port"], server["threads"], server["base"],
                                      server["pool"]))
    print("- rounds: %d measured (+%d warm-up), interleaved: `-c pass`, park, resume; then park + resume with an "
          "HTTP client polling for the first-request latency" % (rounds_done, args.warmup))
    print()
    if not rounds_done:
        print("(no round completed)")
        return
    bare = stats(r["bare"])
    rows = []

    def row(name, xs, unit, target, limit=None, strict=False, scale=1.0):
        med, lo, hi = stats(xs)
        t = target
        if limit is not None:
            t += " — %s" % verdict(med, limit * scale, strict)
        rows.append((name, fmt(med, unit), fmt(lo, unit), fmt(hi, unit), t))

    row("`python -c pass` (bare interpreter start)", r["bare"], "ms", "—")
    row("`park PORT` wall time", r["park"], "ms", "≤ 2× bare = %.2f ms" % (2 * bare[0]), 2 * bare[0])
    row("`park resume PORT` wall time", r["resume"], "ms", "≤ 2× bare = %.2f ms" % (2 * bare[0]), 2 * bare[0])
    row("park / bare (per round)", r["park_ratio"], "x", "≤ 2.00×", 2.0)
    row("resume / bare (per round)", r["resume_ratio"], "x", "≤ 2.00×", 2.0)
    row("threads held by ptrace in park (%s threads)" % server["threads"], r["held_park"], "ms", "≤ 2 ms", 2.0)
    row("threads held by ptrace in resume (%s threads)" % server["threads"], r["held_resume"], "ms", "≤ 2 ms", 2.0)
    row("holder discovery, %d other processes%s" % (args.processes, " (in a cgroup of their own)" if
        args.processes and args.processes_cgroup == "own" else " (in the server's cgroup)" if args.processes
        else ""), r["discovery"], "ms", "—")
    row("resume start → first served request", r["first"], "ms", "< 30 ms", 30.0, strict=True)
    row("(park's main() starts → first served request)", r["first_from_main"], "ms", "—")
    row("(resume wall time while the client polls)", r["resume_polled"], "ms", "—")
    print("| metric | median | min | max | target |")
    print("|---|---:|---:|---:|---|")
    for name, med, lo, hi, t in rows:
        print("| %s | %s | %s | %s | %s |" % (name, med, lo, hi, t))
    print()
    print("ratio of medians: park/bare %.2f×, resume/bare %.2f×; first request needed %s connection attempt(s) "
          "(median)" % (statistics.median(r["park"]) / bare[0], statistics.median(r["resume"]) / bare[0],
                        statistics.median(r["attempts"])))


# ---------------------------------------------------------------------------------------------------------
# The benchmark

class Bench:
    def __init__(self, args):
        self.args = args
        self.python = args.python
        self.tmp = tempfile.mkdtemp(prefix="park-bench-")
        self.env = dict(os.environ)
        self.env["PARK_HOME"] = os.path.join(self.tmp, "home")
        self.env["PARK_DEBUG"] = "1"
        if args.warm_pycache:
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = os.path.join(self.tmp, "pycache")
        self.node = None
        self.server = None
        self.last_n = 0
        # The command that runs park: the interpreter with park.py, or (--launcher) an installed `park`.
        self.park_cmd = [args.launcher] if args.launcher else [self.python, PARK]
        if args.launcher:  # its `python3` is the measured interpreter, not whatever PATH finds first (a shim)
            self.env["PATH"] = os.path.dirname(self.python) + os.pathsep + self.env.get("PATH", "")
        self.results = {k: [] for k in ("bare", "park", "resume", "park_ratio", "resume_ratio", "held_park",
                                        "held_resume", "first", "first_from_main", "resume_polled", "attempts",
                                        "discovery")}
        self.idle = []  # the --processes idle processes
        self.cgroup = None  # the cgroup they run in (--processes-cgroup own)

    # -- server --
    def start_server(self):
        path = os.path.join(self.tmp, "server.js")
        with open(path, "w") as f:
            f.write(SERVER_JS)
        env = dict(os.environ)
        env["BENCH_THREADS"] = str(self.args.threads)
        env.pop("UV_THREADPOOL_SIZE", None)
        self.node_log = open(os.path.join(self.tmp, "node.stderr"), "w+")
        self.node = subprocess.Popen([self.args.node, path], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.node_log, start_new_session=True)
        line = self.node.stdout.readline().decode()
        if not line.startswith("READY "):
            self.node_log.seek(0)
            raise BenchError("node did not start: %r %s" % (line, self.node_log.read()[-2000:]))
        self.server = json.loads(line[6:])
        if self.server["pid"] != self.node.pid:
            raise BenchError("node reports pid %d, spawned %d" % (self.server["pid"], self.node.pid))
        self.server["threads"] = thread_count(self.node.pid)  # measured from outside, as park will see it
        n, pid = counter(self.server["port"])
        self.last_n = n
        print("node pid %d listening on 127.0.0.1:%d with %d threads (/proc/%d/task; %d before the threadpool "
              "started, UV_THREADPOOL_SIZE=%s)" % (pid, self.server["port"], self.server["threads"], pid,
                                                   self.server["base"], self.server["pool"]), flush=True)
        if abs(self.server["threads"] - self.args.threads) > 1:
            print("warning: node has %d threads, not ~%d" % (self.server["threads"], self.args.threads), flush=True)

    def stop_server(self):
        """Resume the server if it is parked, then kill it by its PID."""
        if self.node is None:
            return
        pid, port = self.node.pid, self.server["port"] if self.server else None
        try:
            if self.node.poll() is None:
                parked = port is not None and os.path.exists(os.path.join(self.env["PARK_HOME"], "parked",
                                                                          "%d.json" % port))
                if parked or proc_state(pid) in ("T", "t"):
                    if parked:
                        try:
                            dt, rc, out, err = run(self.park_cmd + ["resume", str(port)], self.env, timeout=15)
                            print("cleanup: park resume %d -> exit %d %s" % (port, rc, (out + err).strip()),
                                  flush=True)
                        except BenchError as e:
                            print("cleanup: %s" % e, flush=True)
                    if proc_state(pid) in ("T", "t"):
                        os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGTERM)
                try:
                    self.node.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    os.kill(pid, signal.SIGKILL)
                    self.node.wait(timeout=5)
        except ProcessLookupError:
            pass
        finally:
            if self.node.poll() is None:
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.node.wait(timeout=5)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            print("node pid %d stopped (exit status %s)" % (pid, self.node.returncode), flush=True)

    def cleanup(self):
        self.stop_idle()
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.stop_server()
        finally:
            signal.signal(signal.SIGINT, old)
            if getattr(self, "node_log", None):
                self.node_log.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- checks --
    def check_parked(self, rc, out, err, what):
        port, pid = self.server["port"], self.node.pid
        if rc != 0:
            raise BenchError("%s: park %d exited %d: %s" % (what, port, rc, (out + err).strip()))
        if "pid %d" % pid not in out:
            raise BenchError("%s: park output does not name pid %d: %r" % (what, pid, out))
        st = proc_state(pid)
        if st != "t":
            raise BenchError("%s: after park, node pid %d is in state %r, not t (held by the keeper)" % (what, pid, st))
        if not port_free(port):
            raise BenchError("%s: after park, 127.0.0.1:%d is not free" % (what, port))

    def check_resumed(self, rc, out, err, what, n=None, pid=None):
        port = self.server["port"]
        if rc != 0:
            raise BenchError("%s: park resume %d exited %d: %s" % (what, port, rc, (out + err).strip()))
        if n is None:
            n, pid = counter(port)
        if pid != self.node.pid:
            raise BenchError("%s: port %d answered from pid %s, not %d" % (what, port, pid, self.node.pid))
        if n <= self.last_n:
            raise BenchError("%s: request counter went from %d to %d" % (what, self.last_n, n))
        self.last_n = n
        st = proc_state(pid)
        if st not in ("S", "R"):
            raise BenchError("%s: after resume, node pid %d is in state %r" % (what, pid, st))
        if thread_count(pid) != self.server["threads"]:
            print("note: %s: node now has %s threads (had %d)" % (what, thread_count(pid), self.server["threads"]))

    # -- one round --
    def round(self, i, record):
        port = str(self.server["port"])
        py, what = self.python, ("round %d" % i) if record else ("warm-up %d" % i)
        bare, rc, out, err = run([py, "-c", "pass"], self.env)
        if rc != 0:
            raise BenchError("%s -c pass exited %d: %s" % (py, rc, err))
        t_park, rc, out, err = run(self.park_cmd + [port], self.env)
        self.check_parked(rc, out, err, what)
        h_park = held_ms(err, "park")
        m = FOUND_RE.search(err)
        if not m:
            raise BenchError("park printed no holder discovery time (PARK_DEBUG=1): %s" % err.strip()[-300:])
        found = float(m.group(1))
        t_res, rc, out, err = run(self.park_cmd + ["resume", port], self.env)
        h_res = held_ms(err, "park resume")
        self.check_resumed(rc, out, err, what)

        # Resume to first served request: a second park, then resume with a client polling right after spawn.
        _, rc, out, err = run(self.park_cmd + [port], self.env)
        self.check_parked(rc, out, err, what + " (second park)")
        first, attempts, n, pid, t_polled, rc, out, err = self.resume_and_poll()
        self.check_resumed(rc, out, err, what + " (polled resume)", n, pid)

        line = ("%-9s bare %6.2f ms  park %7.2f ms  resume %7.2f ms  held %.2f/%.2f ms  first request %6.2f ms "
                "(%d tries)  counter %d" % (what + ":", bare * 1e3, t_park * 1e3, t_res * 1e3, h_park, h_res,
                                            first * 1e3, attempts, self.last_n))
        print(line, flush=True)
        if record:
            r = self.results
            r["bare"].append(bare * 1e3)
            r["park"].append(t_park * 1e3)
            r["resume"].append(t_res * 1e3)
            r["park_ratio"].append(t_park / bare)
            r["resume_ratio"].append(t_res / bare)
            r["held_park"].append(h_park)
            r["held_resume"].append(h_res)
            r["first"].append(first * 1e3)
            r["first_from_main"].append(self.from_main * 1e3)
            r["resume_polled"].append(t_polled * 1e3)
            r["attempts"].append(attempts)
            r["discovery"].append(found)

    # -- idle processes --
    def start_idle(self, n, where):
        """n idle processes (sleep, each with 10 more fds open, as real programs have some), in a cgroup of
        their own (where="own": other apps, as systemd runs them) or in the benchmark's ("same")."""
        if not n:
            return
        if where == "own":
            root = cgroup2_root()
            if root is None or not os.access(root, os.W_OK):
                raise BenchError("--processes-cgroup own needs root and a writable cgroup2 mount")
            self.cgroup = os.path.join(root, "park-bench-%d" % os.getpid())
            os.mkdir(self.cgroup)
        null = [os.open(os.devnull, os.O_RDONLY) for _ in range(10)]
        procs = os.path.join(self.cgroup, "cgroup.procs") if self.cgroup else None

        def into_cgroup():
            if procs:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))
        try:
            for _ in range(n):
                self.idle.append(subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                  pass_fds=null, preexec_fn=into_cgroup))
        finally:
            for fd in null:
                os.close(fd)

    def stop_idle(self):
        for p in self.idle:
            p.kill()
        for p in self.idle:
            p.wait()
        self.idle = []
        if self.cgroup:
            os.rmdir(self.cgroup)
            self.cgroup = None

    def measure_keeper(self):
        """Park, then read the keeper's CPU time and RSS across --keeper-idle idle seconds; resume."""
        port = str(self.server["port"])
        _, rc, out, err = run(self.park_cmd + [port], self.env)
        self.check_parked(rc, out, err, "keeper")
        _, rc, out, err = run(self.park_cmd + ["list", "--json"], self.env)
        keeper = json.loads(out)[0]["keeper"]
        tick = os.sysconf("SC_CLK_TCK")

        def cpu():
            with open("/proc/%d/stat" % keeper) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick  # utime, stime (proc(5))

        time.sleep(0.5)  # past the park itself
        c0, t0 = cpu(), time.monotonic()
        time.sleep(self.args.keeper_idle)
        c1, t1 = cpu(), time.monotonic()
        with open("/proc/%d/status" % keeper) as f:
            rss = int(f.read().split("VmRSS:")[1].split()[0])
        self.keeper = {"pid": keeper, "cpu_s": c1 - c0, "span_s": t1 - t0, "rss_kb": rss}
        print("keeper pid %d idle for %.1f s: %.3f s of CPU (%.3f %%), RSS %d KiB"
              % (keeper, t1 - t0, c1 - c0, 100 * (c1 - c0) / (t1 - t0), rss), flush=True)
        _, rc, out, err = run(self.park_cmd + ["resume", port], self.env)
        self.check_resumed(rc, out, err, "keeper")

    def resume_and_poll(self):
        port = self.server["port"]
        t0 = time.perf_counter()
        p = subprocess.Popen(self.park_cmd + ["resume", str(port)], env=self.env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        t_done = None
        try:
            attempts = 0
            while True:
                attempts += 1
                try:
                    status, body = http_get(port, self.args.client_timeout)
                    if status == 200:
                        first = time.perf_counter() - t0
                        first_epoch = time.time()
                        d = json.loads(body.decode())
                        break
                except OSError:
                    pass
                if t_done is None and p.poll() is not None:
                    t_done = time.perf_counter() - t0
                    if p.returncode != 0:
                        break
                if time.perf_counter() - t0 > 10:
                    raise BenchError("no HTTP 200 within 10 s of spawning park resume")
                time.sleep(self.args.client_pause)
            out, err = p.communicate(timeout=15)
        except BaseException:
            finish(p)
            raise
        if t_done is None:
            t_done = time.perf_counter() - t0  # resume exited after the first request was served
        out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        if p.returncode != 0:
            raise BenchError("park resume %d exited %d: %s" % (port, p.returncode, (out + err).strip()))
        m = MAIN_RE.search(err)
        if not m:
            raise BenchError("no 'main started' debug line from park resume; stderr: %r" % err.strip())
        self.from_main = first_epoch - float(m.group(1))
        return first, attempts, d["n"], d["pid"], t_done, p.returncode, out, err


def main():
    ap = argparse.ArgumentParser(description="Benchmark park/resume against a node HTTP server.")
    ap.add_argument("--rounds", type=int, default=20, help="measured rounds (default 20)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default 1)")
    ap.add_argument("--python", default=None,
                    help="interpreter to run park with (default: os.path.realpath(sys.executable))")
    ap.add_argument("--node", default="/usr/bin/node", help="node binary (default /usr/bin/node)")
    ap.add_argument("--threads", type=int, default=10, help="total threads the node server should have")
    ap.add_argument("--client-timeout", type=float, default=0.05, help="per-attempt HTTP timeout, s")
    ap.add_argument("--client-pause", type=float, default=0.0005, help="pause between HTTP attempts, s")
    ap.add_argument("--launcher", default=None, metavar="PATH",
                    help="run park through this installed launcher (install.sh's `park`) instead of PYTHON park.py")
    ap.add_argument("--warm-pycache", action="store_true",
                    help="let park's backend be byte-compiled once (PYTHONPYCACHEPREFIX in the temp dir, "
                         "PYTHONDONTWRITEBYTECODE unset) instead of inheriting the environment as it is")
    ap.add_argument("--max-seconds", type=float, default=100.0, help="stop taking rounds after this long")
    ap.add_argument("--keeper-idle", type=float, default=10.0, help="seconds the idle keeper is measured")
    ap.add_argument("--processes", type=int, default=0, metavar="N",
                    help="start N idle processes first (stopped by pid at the end)")
    ap.add_argument("--processes-cgroup", choices=("own", "same"), default="own",
                    help="run them in a cgroup of their own, as a desktop runs other apps (default), or in "
                         "the benchmark's, as in a container")
    args = ap.parse_args()
    if args.python is None:
        args.python = os.path.realpath(sys.executable)
    args.python = os.path.realpath(args.python)
    try:
        with open(args.python, "rb") as f:
            if f.read(4) != b"\x7fELF":
                print("warning: %s is not an ELF binary (a shim or wrapper script?); the bare-start baseline "
                      "includes it" % args.python, file=sys.stderr)
    except OSError as e:
        ap.error("cannot read --python %s: %s" % (args.python, e))
    if not os.path.exists(args.node):
        ap.error("no node at %s" % args.node)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)
    bench = Bench(args)
    status, failure = 0, None
    info = machine_info(args.python, args.node, args.warm_pycache)
    start = time.monotonic()
    done = 0
    try:
        bench.start_idle(args.processes, args.processes_cgroup)
        bench.start_server()
        for i in range(1, args.warmup + args.rounds + 1):
            if time.monotonic() - start > args.max_seconds:
                print("stopping after %d rounds: --max-seconds %.0f reached" % (done, args.max_seconds))
                break
            record = i > args.warmup
            bench.round(i - args.warmup if record else i, record)
            done += record
        bench.measure_keeper()
    except BenchError as e:
        failure, status = "correctness/run failure: %s" % e, 1
    except KeyboardInterrupt:
        failure, status = "interrupted (Ctrl+C)", 130
    except Interrupted as e:
        failure, status = "interrupted (%s)" % e, 128 + e.signum
    finally:
        try:
            bench.cleanup()
        except BaseException as e:  # keep going to the report
            print("cleanup problem: %r" % e, file=sys.stderr)
    if bench.server:
        report(bench.results, info, bench.server, done, args)
        k = getattr(bench, "keeper", None)
        if k:
            print()
            print("keeper, idle while holding the server: %.3f s of CPU in %.1f s (%.3f %%), RSS %d KiB"
                  % (k["cpu_s"], k["span_s"], 100 * k["cpu_s"] / k["span_s"], k["rss_kb"]))
    else:
        print("\n".join(info))
    print()
    print("total run time %.1f s" % (time.monotonic() - start))
    if failure:
        print("FAILED: " + failure)
    return status


if __name__ == "__main__":
    sys.exit(main())
