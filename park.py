"""park: Ctrl+Z for servers. `park 3000` pauses whatever listens on :3000 and frees the port;
`park resume 3000` brings the same processes back, listening on :3000 again.

This file is the platform-neutral front: the command line, the state under ~/.park (PARK_HOME), the safety
policy, and the keeper: one process per park, in its own session, that holds the parked processes (never with
SIGSTOP, so a shell sees no stopped job), runs --for and --hold, and does what resume and release ask of it.
The work on processes is done by one backend module per platform, loaded from the directory of this file
(never through sys.path). A backend exports:
  Error(message, fix=None, errno=None, parked=False)  the one exception it raises for expected failures
  listeners(port)            [{inode, family, host, port, holders: {pid: [fd, ...]}}] for each TCP listener
  ports_listening()          {port: [pid, ...]} of every TCP listener whose holders park can see
  process(pid)               {pid, name, argv, state, uid, start, kernel, tracer, seccomp} or None
  held(info, keeper)         True when park's keeper (a pid, or None when it is gone) holds that process
  signals(pid)               {pending, blocked, ignored, caught}: sets of signal numbers (Linux)
  inspect(listener, force)   the listener with everything needed to recreate it (JSON-serialisable)
  park(plan, drain, suspend_seccomp)   close the listeners; {reset, held, tracer, notes}: the tracer (Linux) keeps
                                       every thread in a ptrace stop until it resumes or releases them
  resume(plan, force, suspend_seccomp, given, tracer)  recreate them (or hand over `given` fds), let them run
  swap(plan_a, plan_b, suspend_seccomp)         move each side's listeners to the other's port
  hold_socket(listener)      a listening socket of park's own at that address, for --hold
  queue_lengths(inodes, families)  {inode: (accept queue length, backlog)}
  time_wait(listener)        TIME_WAIT connections that block re-binding that listener's address
  ptrace_scope()             the Yama setting (or None), for the permission message
A failed park leaves the processes running as they were; a failed resume leaves them parked, state intact.
"""

import os
import sys

__version__ = "0.1.0"

# The modules each platform runs, in load order; the last is the backend. The Linux engine imports its
# architecture's module, loaded first.
BACKENDS = {("linux", "x86_64"): ("park_linux_x86_64", "park_linux"),
            ("linux", "aarch64"): ("park_linux_aarch64", "park_linux"),
            ("darwin", "arm64"): ("park_darwin_arm64",)}

# Where park.py and its backends are published. In stdin mode (`curl -fsSL BASE_URL/park.py | python3 - 3000`)
# the backend is fetched from here (PARK_BASE_URL overrides) and must match its sha256 below; test_park.py
# fails, printing the line to paste, when a pin differs from the file.
BASE_URL = "https://raw.githubusercontent.com/park-sh/park/main"
PINS = {
    "park_darwin_arm64": "35e04a52d80d7f0bec27951dd9d39527268a8dfc71ddaf28203861b6a83c51bd",
    "park_linux": "434f803048cfd5806026ca98e5d196aa832952d06ac6b504c0a868d517c6115e",
    "park_linux_aarch64": "91c22682f56567e815b7982716d574b9900ca62fce5b1f7e194d1cf10b75efd6",
    "park_linux_x86_64": "c7d3395f84f43b931c8c7a0050d642bc16895c816f21526d609ca80c550a032b",
}
SCHEMA = 1
KIND = "park.parked"

# Processes park never stops, even when they merely hold the socket (socket activation, login services).
PROTECTED = {"init", "systemd", "sshd", "login", "agetty", "getty", "mingetty", "sudo", "su", "dbus-daemon",
             "dbus-broker", "polkitd", "launchd", "containerd", "dockerd", "runc", "containerd-shim", "park"}

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EADDRINUSE = 98 if sys.platform.startswith("linux") else 48


class ParkError(Exception):
    """An expected failure: one line for the user, plus the exact command that fixes it."""

    def __init__(self, message, fix=None, code=EXIT_FAIL):
        super().__init__(message)
        self.fix = fix
        self.code = code


# ---------------------------------------------------------------------------------------------------------
# Backend

def load_backend():
    """The backend module for this platform: from beside this file, or in stdin mode a verified download."""
    machine = os.uname().machine.lower()  # platform.machine() says the same, but importing platform costs ~1.4 ms
    system = "linux" if sys.platform.startswith("linux") else sys.platform
    key = (system, "arm64" if machine == "aarch64" and system == "darwin" else machine)
    names = BACKENDS.get(key)
    if names is None or not all(n in PINS for n in names):
        hint = ""
        if key == ("darwin", "x86_64"):
            hint = " (an Intel python3 under Rosetta? run /usr/bin/python3 instead)"
        raise ParkError("park does not support %s %s yet%s" % (key[0], key[1], hint),
                        fix="park runs on %s" % ", ".join("%s %s" % k for k in sorted(BACKENDS)))
    here = script_dir()
    for name in names:
        if name in sys.modules:
            continue
        if here is None:
            _load_pinned(name)
            continue
        path = os.path.join(here, name + ".py")
        if not os.path.exists(path):
            raise ParkError("the backend %s.py is missing next to %s" % (name, os.path.join(here, "park.py")),
                            fix="copy %s into %s (park.py and its backend go together)"
                            % (" and ".join(n + ".py" for n in names), here))
        _exec_module(name, path)
    return sys.modules[names[-1]]


def script_dir():
    """The directory park.py runs from, or None in stdin mode (`curl ... | python3 - 3000`)."""
    path = globals().get("__file__")
    if not path or path.startswith("<") or not os.path.isfile(path):
        return None
    return os.path.dirname(os.path.abspath(path))


def _exec_module(name, path, source=None, code=None, save=None):
    """Run a backend as module `name`, without going through sys.path: from its file (with __pycache__, like an
    import) or, in stdin mode, from the verified bytes `source` (its code then saved with _save_code(*save))
    or the code compiled from them."""
    if source is None and code is None:
        import importlib.util
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
    else:
        import types
        module = types.ModuleType(name)
        module.__file__ = path
    sys.modules[name] = module
    try:
        if source is None and code is None:
            spec.loader.exec_module(module)
        else:
            if code is None:
                code = compile(source, path, "exec")
                if save:
                    _save_code(save[0], save[1], save[2], code)
            exec(code, module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def base_url():
    return (os.environ.get("PARK_BASE_URL") or BASE_URL).rstrip("/")


def _load_pinned(name):
    """Stdin mode: the backend from ~/.park/lib if it matches its pin, else downloaded from the base URL and
    checked against the sha256 pinned above. Nothing unverified ever runs. The code compiled from it is kept
    beside it (compiling took ~10 ms of every run), under a name that holds the pin and the interpreter's
    cache tag, with a checksum; it runs only while the source beside it still matches the pin."""
    import hashlib
    pin = PINS[name]
    lib = state().sub("lib")
    cache = lib.where(name + ".py")
    stale = None
    try:
        data = lib.read(name + ".py")
        if hashlib.sha256(data).hexdigest() == pin:
            code = _cached_code(lib, name, pin)
            if code is not None:
                return _exec_module(name, cache, code=code)
            return _exec_module(name, cache, data, save=(lib, name, pin))
        stale = cache
    except OSError:
        pass
    url = "%s/%s.py" % (base_url(), name)
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            data = r.read()
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        if stale:
            raise ParkError("the cached backend %s does not match the sha256 pinned in park.py, and a fresh copy "
                            "could not be downloaded from %s (%s)" % (stale, url, reason),
                            fix="rm %s, then run park again with network access" % stale)
        raise ParkError("cannot download the backend from %s (%s)" % (url, reason),
                        fix="check the network, or run park from a checkout: python3 park.py %s"
                        % " ".join(sys.argv[1:]))
    got = hashlib.sha256(data).hexdigest()
    if got != pin:
        raise ParkError("%s does not match the sha256 pinned in park.py (got %s, want %s); nothing was run"
                        % (url, got[:16], pin[:16]),
                        fix="take park.py and its backend from the same release (PARK_BASE_URL=%s)" % base_url())
    lib.write(name + ".py", data)
    return _exec_module(name, cache, data, save=(lib, name, pin))


CODE_MAGIC = b"park-code\n"


def _code_name(name, pin):
    return "%s.%s.%s.code" % (name, pin[:32], sys.implementation.cache_tag)


def _cached_code(lib, name, pin):
    """The code object compiled from the backend with this pin, if its file is whole; else None."""
    import hashlib
    import marshal
    try:
        data = lib.read(_code_name(name, pin))
    except OSError:
        return None
    n = len(CODE_MAGIC)
    head, digest, body = data[:n], data[n:n + 32], data[n + 32:]
    if head != CODE_MAGIC or hashlib.sha256(body).digest() != digest:
        return None
    try:
        return marshal.loads(body)
    except (EOFError, ValueError, TypeError):
        return None


def _save_code(lib, name, pin, code):
    import hashlib
    import marshal
    body = marshal.dumps(code)
    try:
        for old in lib.names():
            if old.startswith(name + ".") and old.endswith(".code") and pin[:32] not in old:
                lib.unlink(old)  # another release's
        lib.write(_code_name(name, pin), CODE_MAGIC + hashlib.sha256(body).digest() + body)
    except (OSError, ParkError):
        pass  # only a cache


# ---------------------------------------------------------------------------------------------------------
# Pure helpers

def parse_port(text):
    """'3000' or ':3000' to 3000; a usage error otherwise."""
    t = text[1:] if text.startswith(":") else text
    if not (t.isascii() and t.isdigit()) or len(t) > 5 or not 1 <= int(t) <= 65535:
        raise ParkError("not a port: %r (expected 1-65535, e.g. 3000 or :3000)" % text[:20],
                        fix="park 3000  (park help for the commands)", code=EXIT_USAGE)
    return int(t)


def parse_target(text):
    """A PORT|PID argument: ('port', n) for ':n', else ('any', n)."""
    if text.startswith(":"):
        return "port", parse_port(text)
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) < 1:
        raise ParkError("not a port or pid: %r" % text[:20], fix="park resume 3000  (a port, or a pid park list shows)",
                        code=EXIT_USAGE)
    return "any", int(text)


def refusal(info, port, my_uid, force):
    """Why park must not stop this process, as (message, fix), or None when it may."""
    pid, name = info["pid"], info["name"]
    what = "pid %d (%s)" % (pid, name)
    if pid <= 1:
        return "%s is the init process; park never stops it" % what, None
    if info["kernel"]:
        return "%s is a kernel thread" % what, None
    if name in PROTECTED or name.startswith("systemd"):
        return ("%s holds :%d; park never stops system services like %s" % (what, port, name),
                "stop the service's socket instead (e.g. systemctl stop <unit>.socket)")
    if my_uid != 0 and info["uid"] != my_uid:
        return ("%s belongs to another user (uid %d); park may only stop your own processes" % (what, info["uid"]),
                "sudo park %d" % port)
    if info["tracer"]:
        return ("%s is already being traced by pid %d (a debugger or strace?)" % (what, info["tracer"]),
                "detach the tracer (pid %d), then run park %d again" % (info["tracer"], port))
    if info["seccomp"] == 2 and not force:
        fix = "park %d --force" % port
        if my_uid != 0:
            fix = "sudo park %d --force  (as root, park suspends the filter while it works)" % port
        return ("%s runs under a seccomp filter that may kill it when park runs socket/bind inside it" % what, fix)
    return None


def format_duration(seconds):
    seconds = int(max(0, seconds))
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    h, rest = divmod(seconds, 3600)
    return "%dh%02dm" % (h, rest // 60)


def command_of(info, width=None):
    """How park shows a process's command, everywhere (list, park ui, the lines of park, resume, release): the
    program by its name (an interpreter's directory says nothing at a glance), then its arguments, control
    characters escaped. With width (the room left on a terminal's line) it is cut to fit, with "..."; without
    (a pipe, a file, --json, an error message) it is never cut."""
    argv = info.get("argv") or []
    if argv:
        # argv[0] as a path is shortened to its name; a title with spaces (nginx: master process) is left whole
        name = argv[0] if " " in argv[0] else os.path.basename(argv[0]) or argv[0]
        text = safe(" ".join([name] + list(argv[1:])))
    else:
        text = safe("[%s]" % info.get("name", "?"))
    if width is not None and len(text) > max(width, 4):
        text = text[:max(width, 4) - 3] + "..."
    return text


def grouped(holders):
    """Holders with the same command as one entry, [(pids, holder)] in order: a prefork master and its workers
    are one line, not three identical ones."""
    groups = {}
    for h in holders:
        groups.setdefault(command_of(h), ([], h))[0].append(h["pid"])
    return list(groups.values())


def group_text(pids, info, width=None, others=0):
    """One group's command and how many processes run it (x3), fitted to width as command_of does; `others`:
    how many groups with other commands go unshown on this line."""
    times = "\u00d7" if _encodes("\u00d7") else "x"
    suffix = (" %s%d" % (times, len(pids)) if len(pids) > 1 else "") + (" (+%d other)" % others if others else "")
    return command_of(info, None if width is None else width - len(suffix)) + suffix


def holders_command(holders, width=None):
    """The command of a row of processes (a parked port, a listening server): its first command with how many
    run it, and how many other commands there are."""
    groups = grouped(holders)
    return group_text(groups[0][0], groups[0][1], width, len(groups) - 1) if groups else ""


def _encodes(text):
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def terminal_width(stream=None):
    """The columns of the terminal that stdout (or stream) is, COLUMNS first as shells and shutil do; None when
    it is not a terminal: then nothing is cut."""
    stream = stream or sys.stdout
    try:
        if not stream.isatty():
            return None
        cols = os.environ.get("COLUMNS", "")
        cols = int(cols) if cols.isdigit() else os.get_terminal_size(stream.fileno()).columns
        return cols if cols > 0 else 80  # a terminal that does not say its size
    except (AttributeError, OSError, ValueError):
        return None


def process_lines(prefix, holders):
    """One line per command for these processes: prefix % pids, then the command, fitted to the terminal."""
    width = terminal_width()
    lines = []
    for pids, info in grouped(holders):
        head = prefix % ",".join(map(str, pids))
        lines.append(head + group_text(pids, info, None if width is None else width - len(head)))
    return lines


def safe(text):
    """Text that came from a target (its argv, its name), with control characters escaped: printed raw, an
    escape sequence in a server's command line would reach the user's terminal."""
    return "".join(c if " " <= c < "\x7f" or c > "\x9f" else "\\x%02x" % ord(c) for c in text)


def where(address):
    host, port = address[0], address[1]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, port)


def addresses(listeners):
    """Each listener's address once, in order (the sockets of a SO_REUSEPORT group share one); a socket that
    is only bound to the port is not one."""
    seen = []
    for l in listeners:
        if l.get("listening", True) and where(l["address"]) not in seen:
            seen.append(where(l["address"]))
    return seen


# ---------------------------------------------------------------------------------------------------------
# State: one JSON file per parked port under $PARK_HOME/parked, with a lock per port, and the keepers'
# sockets and logs. The directory is checked as ssh checks ~/.ssh, and then used only through file
# descriptors opened without following symlinks, so nothing another user writes can redirect a write.

def home():
    return os.environ.get("PARK_HOME") or os.path.join(os.path.expanduser("~"), ".park")


class StateDir:
    """One checked directory of the state, opened O_NOFOLLOW; every file in it is opened relative to it."""

    def __init__(self, path, fd, owner):
        self.path, self.fd, self.owner = path, fd, owner

    @classmethod
    def open(cls, path, owner=None, create=True):
        """Open and check path: a real directory (not a symlink), owned by `owner` (default: the directory
        may belong to the effective user, or to anyone when that is root), and writable by its owner only."""
        me = os.geteuid()
        parent, name = os.path.split(os.path.abspath(path))
        try:
            # O_PATH where there is one: only search permission on the parent is needed, as for a path
            pfd = os.open(parent, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise ParkError("cannot open %s, where the state directory %s is: %s" % (parent, path, e.strerror),
                            fix="set PARK_HOME to a directory of yours")
        try:
            if owner is None and me == 0:
                # Root in someone else's HOME (sudo that keeps HOME, as on macOS): the state made there is that
                # user's, and then steers only that user's processes (see _not_owners).
                up = os.fstat(pfd).st_uid
                made_for = up if up != 0 else None
            else:
                made_for = owner
            return cls._open_at(pfd, name, path, owner, create, made_for)
        finally:
            os.close(pfd)

    @classmethod
    def _open_at(cls, pfd, name, path, owner, create, made_for, chown_to=None):
        """The directory name in the directory pfd, checked; if missing and create, made and then given to
        uid made_for (None: left as made). Everything goes through pfd and the new fd: no path is walked
        twice, no symlink is followed."""
        import stat
        me = os.geteuid()
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                raise
            try:
                os.mkdir(name, 0o700, dir_fd=pfd)
            except FileExistsError:
                pass
            except OSError as e:
                raise ParkError("cannot create the state directory %s: %s" % (path, e.strerror),
                                fix="mkdir -m 700 %s, or set PARK_HOME to a directory of yours" % path)
            return cls._open_at(pfd, name, path, owner, False, None, chown_to=made_for)
        except OSError as e:
            st = None
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except OSError:
                pass
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise ParkError("the state directory %s is a symlink; park does not follow it" % path,
                                fix="rm %s  (park then makes a real directory there), or point PARK_HOME at "
                                    "the real directory" % path)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise ParkError("the state directory %s is not a directory" % path,
                                fix="rm %s, or set PARK_HOME to a directory" % path)
            if st is not None and st.st_uid != me and me != 0:
                raise ParkError("the state directory %s belongs to uid %d, not to you (uid %d)"
                                % (path, st.st_uid, me),
                                fix="set PARK_HOME to a directory of your own (e.g. PARK_HOME=~/.park)")
            raise ParkError("cannot open the state directory %s: %s" % (path, e.strerror),
                            fix="set PARK_HOME to a directory of yours")
        try:
            if chown_to is not None and chown_to != me and os.fstat(fd).st_uid == me:
                os.fchown(fd, chown_to, -1)  # just made by root for that user: theirs, through the fd
            st = os.fstat(fd)
            if owner is None and st.st_uid != me and me != 0:
                raise ParkError("the state directory %s belongs to uid %d, not to you (uid %d)"
                                % (path, st.st_uid, me),
                                fix="set PARK_HOME to a directory of your own (e.g. PARK_HOME=~/.park)")
            if owner is not None and st.st_uid != owner:
                raise ParkError("%s belongs to uid %d, not to uid %d like the rest of the state"
                                % (path, st.st_uid, owner), fix="rm -r %s" % path)
            if st.st_mode & 0o022:
                raise ParkError("the state directory %s is writable by %s" % (
                    path, "others" if st.st_mode & 0o002 else "its group"), fix="chmod go-w %s" % path)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, st.st_uid)

    def sub(self, name):
        """A subdirectory (made 0700, and owned like this one, if missing), checked the same way, opened
        relative to this directory's fd."""
        cache = self.__dict__.setdefault("subs", {})
        if name not in cache:
            cache[name] = StateDir._open_at(self.fd, name, self.where(name), self.owner, True, self.owner)
        return cache[name]

    def where(self, name):
        return os.path.join(self.path, name)

    def close(self):
        for sub in self.__dict__.get("subs", {}).values():
            sub.close()
        try:
            os.close(self.fd)
        except OSError:
            pass

    def fd_path(self, name):
        """A path to name that goes through this directory's fd (for bind and connect, which take a path);
        where there is no /proc (macOS), the checked path itself."""
        if os.path.isdir("/proc/self/fd"):
            return "/proc/self/fd/%d/%s" % (self.fd, name)
        return self.where(name)

    def open_file(self, name, flags, mode=0o600):
        """os.open of name in this directory: never through a symlink, and a file park creates is its owner's."""
        try:
            # O_NONBLOCK: a FIFO planted under a state file's name must not hang park (regular files ignore it)
            fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY, mode,
                         dir_fd=self.fd)
        except OSError as e:
            if e.errno == 40:  # ELOOP: name is a symlink
                raise ParkError("%s is a symlink; park does not follow it" % self.where(name),
                                fix="rm %s" % self.where(name))
            raise
        try:
            self._check_file(fd, name)
            if flags & os.O_CREAT and os.fstat(fd).st_uid != self.owner:
                os.fchown(fd, self.owner, -1)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_file(self, fd, name):
        import stat
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            raise ParkError("%s is not a plain file" % self.where(name), fix="rm %s" % self.where(name))
        if st.st_uid not in (self.owner, os.geteuid()) or st.st_mode & 0o022:
            raise ParkError("%s %s" % (self.where(name), "belongs to uid %d" % st.st_uid
                                       if st.st_uid not in (self.owner, os.geteuid()) else "is writable by others"),
                            fix="rm %s" % self.where(name))

    def read(self, name):
        fd = self.open_file(name, os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write(self, name, data):
        """Replace name atomically: an O_EXCL temporary file with an unpredictable name, renamed over it."""
        tmp = ".%s.%s.tmp" % (name, os.urandom(8).hex())
        fd = self.open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            self.unlink(tmp)
            raise

    def append(self, name, text):
        fd = self.open_file(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with os.fdopen(fd, "a") as f:
            f.write(text)

    def unlink(self, name):
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def exists(self, name):
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    def names(self):
        return sorted(os.listdir(self.fd))


_STATE = []  # the StateDir of this process, opened once (a keeper keeps the CLI's fds of it open)


def state():
    if _STATE and _STATE[0].path != home():  # PARK_HOME changed (main() called from code, e.g. by tests)
        _STATE.pop().close()
    if not _STATE:
        _STATE.append(StateDir.open(home()))
        if _STATE[0].owner != os.geteuid():
            note("using %s, which belongs to uid %d: park acts only on uid %d's processes with it"
                 % (_STATE[0].path, _STATE[0].owner, _STATE[0].owner))
    return _STATE[0]


NOTES = []  # said once, on stderr, after a command that succeeded (a failure is its one line and fix)


def note(text):
    if text not in NOTES:
        NOTES.append(text)


def parked_dir():
    return state().sub("parked")


def state_path(port):
    """The state file of port, for messages."""
    return parked_dir().where("%d.json" % port)


def write_state(record):
    import json
    record.pop("_path", None)
    parked_dir().write("%d.json" % record["port"], json.dumps(record, indent=1, sort_keys=True).encode())


def read_state(port):
    """The state file of port, checked (see check_record); a damaged or foreign file is a ParkError naming it."""
    import json
    path = state_path(port)
    fix = "rm %s" % path
    try:
        data = json.loads(parked_dir().read("%d.json" % port).decode("utf-8"))
    except OSError as e:
        raise ParkError("cannot read state file %s: %s" % (path, e.strerror), fix=fix)
    except ValueError:
        raise ParkError("state file %s is damaged (not valid JSON)" % path, fix=fix)
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise ParkError("state file %s is not a park state file" % path, fix=fix)
    if data.get("schema") != SCHEMA:
        raise ParkError("state file %s has schema %r; this park (%s) reads schema %d"
                        % (path, data.get("schema"), __version__, SCHEMA), fix="use the park that wrote it, or " + fix)
    why = check_record(data, port)
    if why:
        raise ParkError("state file %s is damaged (%s)" % (path, why), fix=fix)
    data["_path"] = path
    return data


def check_record(data, port):
    """Why a state record cannot be trusted as park's own (a string), or None. A state file is input: every
    field park acts on is checked for its type and range before anything uses it."""
    def is_int(v, lo=0, hi=(1 << 64) - 1):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) < 1e12

    def ints(d, names, hi=(1 << 31) - 1):
        return isinstance(d, dict) and all(is_int(d.get(n), 0, hi) for n in names)

    if data.get("port") != port or not is_int(port, 1, 65535):
        return "its port is not %d" % port
    if not is_num(data.get("parked_at")):
        return "parked_at"
    holders = data.get("holders")
    if not isinstance(holders, list) or not holders or len(holders) > 4096:
        return "holders"
    pids = set()
    for h in holders:
        if not ints(h, ("pid", "starttime", "uid"), (1 << 62)) or h["pid"] < 2 or h["pid"] in pids:
            return "a holder"
        if not isinstance(h.get("name"), str) or not isinstance(h.get("argv"), list) or \
                not all(isinstance(a, str) for a in h["argv"]):
            return "the command of pid %d" % h["pid"]
        pids.add(h["pid"])
    listeners = data.get("listeners")
    if not isinstance(listeners, list) or len(listeners) > 64:
        return "listeners"
    for l in listeners:
        why = _check_listener(l, port, pids, is_int)
        if why:
            return why
    for name in ("keeper", "hold"):
        if name in data and not ints(data[name], ("pid", "starttime"), 1 << 62):
            return name
    hold = data.get("hold")
    if hold is not None and (not isinstance(hold.get("sockets"), list) or
                             not all(ints(x, ("inode", "family")) for x in hold["sockets"])):
        return "hold"
    timer = data.get("timer")
    if timer is not None and (not isinstance(timer, dict) or not is_num(timer.get("until")) or
                              not isinstance(timer.get("pending", ""), str)):
        return "timer"
    ended = data.get("ended")
    if ended is not None and (not isinstance(ended, dict) or not isinstance(ended.get("reason"), str)):
        return "ended"
    if not isinstance(data.get("seccomp", False), bool):
        return "seccomp"
    return None


def _check_listener(l, port, pids, is_int):
    import socket
    if not isinstance(l, dict) or not is_int(l.get("inode")) or l.get("family") not in (2, 10, 30):
        return "a listener"
    address = l.get("address")
    if not isinstance(address, list) or len(address) not in (2, 4) or not isinstance(address[0], str) or \
            address[1] != port or not all(is_int(x, 0, (1 << 32) - 1) for x in address[2:]):
        return "a listener's address"
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, address[0])
    except (OSError, ValueError):
        return "a listener's address"
    if not is_int(l.get("backlog"), 0, 1 << 20) or not isinstance(l.get("nonblock"), bool) or \
            not isinstance(l.get("listening", True), bool):
        return "a listener's backlog or flags"
    options = l.get("options")
    if not isinstance(options, list) or not all(
            isinstance(o, list) and len(o) == 5 and is_int(o[0], 0, 1 << 16) and isinstance(o[1], str) and
            is_int(o[2], 0, 1 << 16) and o[3] in ("int", "buf", "linger", "str") and
            (is_int(o[4], 0, (1 << 31) - 1) if o[3] in ("int", "buf") else isinstance(o[4], str) and len(o[4]) < 64)
            for o in options):
        return "a listener's options"
    holders = l.get("holders")
    if not isinstance(holders, list) or not holders:
        return "a listener's holders"
    for h in holders:
        if not isinstance(h, dict) or h.get("pid") not in pids or not isinstance(h.get("fds"), list) or \
                not h["fds"] or not isinstance(h.get("epoll", []), list):
            return "a listener's holder"
        fds = set()
        for f in h["fds"]:
            if not isinstance(f, dict) or not is_int(f.get("fd"), 0, 1 << 20) or \
                    not isinstance(f.get("cloexec"), bool) or not isinstance(f.get("nonblock", False), bool):
                return "the fds of pid %d" % h["pid"]
            fds.add(f["fd"])
        for r in h.get("epoll", []):
            if not isinstance(r, dict) or not is_int(r.get("epfd"), 0, 1 << 20) or r.get("tfd") not in fds or \
                    not is_int(r.get("events"), 0, (1 << 32) - 1) or not is_int(r.get("data")) or \
                    not is_int(r.get("wake", 0), 0, 1 << 20):
                return "the epoll registrations of pid %d" % h["pid"]
    return None


def state_exists(port):
    return parked_dir().exists("%d.json" % port)


def all_states(errors=None):
    """Every state record, by port. A damaged file raises its ParkError, or with `errors` (a list) is put
    there and skipped, so one bad file does not hide the other ports."""
    out = []
    for name in parked_dir().names():
        stem = name[:-5]
        if name.endswith(".json") and stem.isdigit() and len(stem) <= 5:
            try:
                out.append(read_state(int(stem)))
            except ParkError as e:
                if errors is None:
                    raise
                errors.append(e)
    return sorted(out, key=lambda r: r["port"])


def remove_state(record):
    parked_dir().unlink("%d.json" % record["port"])
    clear_journal(record["port"])


# The journal: what the backend is about to inject into a port's processes (the registers to give back, the
# fds it makes), written before the first change; a park or resume killed halfway leaves it, and the next
# `park resume` undoes from it. Only backends with JOURNAL = True (Linux) keep one.

def open_journal(backend, port, fresh=False):
    """An fd to append the journal of port to (fresh: emptied first, for a new park), or None when the
    backend keeps none."""
    if not getattr(backend, "JOURNAL", False):
        return None
    return parked_dir().open_file("%d.journal" % port, os.O_WRONLY | os.O_CREAT | os.O_APPEND |
                                  (os.O_TRUNC if fresh else 0))


def read_journal(port, regs):
    """The entries a killed park or resume left for port ([] when none), each one checked for its types;
    regs: how many registers an entry gives back (the backend's JOURNAL_REGS)."""
    import json
    try:
        data = parked_dir().read("%d.journal" % port)
    except (OSError, ParkError):
        return []
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if _journal_entry_ok(e, regs):
            out.append(e)
    return out


def _journal_entry_ok(e, regs):
    def word(v, hi=(1 << 64) - 1):
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi
    if not isinstance(e, dict) or not word(e.get("pid"), (1 << 31) - 1):
        return False
    if "own" in e:
        return e["own"] is True and word(e.get("tid"), (1 << 31) - 1)
    if "back" in e:
        scratch = e.get("scratch")
        return (word(e.get("tid"), (1 << 31) - 1) and word(e.get("site")) and isinstance(e.get("group"), bool)
                and isinstance(e["back"], list) and len(e["back"]) == regs and all(word(v) for v in e["back"])
                and (scratch is None or (isinstance(scratch, list) and len(scratch) == 2 and word(scratch[0])
                                         and isinstance(scratch[1], str) and len(scratch[1]) <= 4096)))
    return word(e.get("fd"), (1 << 31) - 1) and (e.get("link") is None or isinstance(e.get("link"), str))


def journal_left(port):
    """True when a park or resume of port was killed while it changed the processes."""
    try:
        return os.stat("%d.journal" % port, dir_fd=parked_dir().fd, follow_symlinks=False).st_size > 0
    except OSError:
        return False


def clear_journal(port):
    parked_dir().unlink("%d.journal" % port)


def _close_fd(fd):
    if fd is not None:
        os.close(fd)


# After `park release`, the process runs on without its port. So that it does not vanish from view, a note of
# it is kept in $PARK_HOME/released/PORT.PID.json (through the same StateDir as everything else) and listed as
# status `released` while that process lives (same pid and start time), does not listen on the port again,
# and for at most RELEASED_SECONDS. Only shown, never acted on: park sends no signal because of it.
RELEASED_KIND = "park.released"
RELEASED_SECONDS = 3600


def released_dir():
    return state().sub("released")


def write_released(record, holders):
    """Note the processes `park release` let go from record's port."""
    import json
    import time
    note = {"kind": RELEASED_KIND, "schema": SCHEMA, "port": record["port"], "released_at": time.time(),
            "parked_at": record["parked_at"], "addresses": addresses(record["listeners"]),
            "holders": [{k: h[k] for k in ("pid", "starttime", "uid", "name", "argv")} for h in holders]}
    released_dir().write("%d.%d.json" % (record["port"], holders[0]["pid"]),
                         json.dumps(note, indent=1, sort_keys=True).encode())


def _released_note(data):
    """True when a released note has the fields and types that listing it needs."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < (1 << 62)
    return (isinstance(data, dict) and data.get("kind") == RELEASED_KIND and data.get("schema") == SCHEMA and
            is_int(data.get("port")) and 1 <= data["port"] <= 65535 and
            all(isinstance(data.get(k), (int, float)) and not isinstance(data.get(k), bool)
                for k in ("released_at", "parked_at")) and
            isinstance(data.get("addresses"), list) and all(isinstance(a, str) for a in data["addresses"]) and
            isinstance(data.get("holders"), list) and 0 < len(data["holders"]) <= 4096 and
            all(isinstance(h, dict) and is_int(h.get("pid")) and is_int(h.get("starttime")) and
                isinstance(h.get("name"), str) and isinstance(h.get("argv"), list) and
                all(isinstance(a, str) for a in h["argv"]) for h in data["holders"]))


def released(backend):
    """The released notes whose processes still run without their port, [(note, live holders)] by port. A note
    is removed once its processes have exited (or their pids belong to others now), listen on the port again,
    or after RELEASED_SECONDS; a damaged one is removed too (it only ever served to show a process)."""
    import json
    import time
    d = released_dir()
    found = []
    for name in d.names():
        parts = name.split(".")
        if len(parts) != 3 or parts[2] != "json" or not (parts[0].isdigit() and parts[1].isdigit()):
            continue
        try:
            let_go = json.loads(d.read(name).decode("utf-8"))
        except (OSError, ValueError, ParkError):
            let_go = None
        live = [h for h in let_go["holders"] if recorded(backend, h)] if _released_note(let_go) else []
        if live and time.time() - let_go["released_at"] < RELEASED_SECONDS:
            serving = {pid for l in backend.listeners(let_go["port"]) for pid in l["holders"]}
            if not serving & {h["pid"] for h in live}:
                found.append((let_go, live))
                continue
        d.unlink(name)
    return sorted(found, key=lambda x: (x[0]["port"], x[0]["released_at"]))


class PortLock:
    """An exclusive, non-blocking lock on one port, so two park commands on it cannot interleave."""

    def __init__(self, port):
        self.port = port
        self.fd = None

    def __enter__(self):
        import fcntl
        locks = state().sub("locks")
        try:
            self.fd = locks.open_file("%d.lock" % self.port, os.O_RDWR | os.O_CREAT)
        except OSError as e:
            raise ParkError("cannot open the lock %s: %s" % (locks.where("%d.lock" % self.port), e.strerror),
                            fix="rm %s" % locks.where("%d.lock" % self.port))
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise ParkError("another park command is working on :%d right now" % self.port,
                            fix="wait for it to finish, then run your command again")
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


DEFERRED = []  # signals that arrived while a target was being changed


class Critical:
    """Hold off signals while a target is half-changed (a signal that killed park then could leave a thread
    with injected registers). Ctrl+C, SIGTERM, SIGHUP and SIGQUIT that arrive meanwhile are taken off the
    queue and remembered: the command finishes its work and output, then main() exits 130."""

    CAUGHT = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")

    def __enter__(self):
        import signal
        self.signal = signal
        # Faults stay deliverable (blocking them does not help), SIGKILL and SIGSTOP cannot be blocked.
        keep = {signal.SIGKILL, signal.SIGSTOP, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                signal.SIGTRAP}
        self.old = signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.valid_signals()) - keep)
        return self

    def __exit__(self, *exc):
        signal = self.signal
        caught = {getattr(signal, n) for n in self.CAUGHT} - set(self.old)
        # sigpending + sigwait, not sigtimedwait: macOS has no sigtimedwait. A pending signal returns at once.
        for signo in sorted(signal.sigpending() & caught):
            signal.sigwait({signo})
            DEFERRED.append(signo)
        try:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.old)
        except KeyboardInterrupt:  # a Ctrl+C that landed after the loop is raised right here: defer it too
            DEFERRED.append(signal.SIGINT)


# ---------------------------------------------------------------------------------------------------------
# Status of a parked record

def recorded(backend, entry):
    """The process a record's {"pid", "starttime"} names, while it lives: None once it has exited (a zombie
    too: it holds no fds and can be neither traced nor resumed) or its pid was reused."""
    if not isinstance(entry.get("pid"), int):
        return None
    info = backend.process(entry["pid"])
    if info is None or info["start"] != entry.get("starttime") or info["state"] in ("Z", "X"):
        return None
    return info


def keeper_alive(backend, record):
    """The keeper's pid when the process that keeps this park is alive (a reused pid does not count)."""
    k = record.get("keeper") or {}
    return k["pid"] if recorded(backend, k) else None


def holder_status(backend, h, keeper=None):
    """'parked', 'running' or 'gone' for one recorded holder (a reused pid counts as gone). Parked means held
    by the live keeper (on Linux: traced by it); a holder the keeper no longer holds runs without its listener."""
    info = recorded(backend, h)
    if info is None:
        return "gone"
    return "parked" if backend.held(info, keeper) else "running"


def record_status(backend, record):
    keeper = None if record.get("ended") else keeper_alive(backend, record)
    states = [holder_status(backend, h, keeper) for h in record["holders"]]
    if all(s == "gone" for s in states):
        return "gone", states
    if "running" in states:
        return "running", states
    return "parked", states


def find_record(text, backend=None, verb="resume"):
    """The state record for a PORT|PID argument. As root under sudo, a port not parked in root's own state
    is looked up in the state of the user who ran sudo (said once on stderr); a user who finds nothing is
    told when a park run as root holds one of their processes."""
    kind, n = parse_target(text)
    found = _lookup(kind, n)
    if found is None:
        caller = _sudo_caller_state()
        if caller is not None:
            os.environ["PARK_HOME"] = caller[0]  # this command (and a keeper it forks) now uses that state
            if _STATE:
                _STATE.pop().close()
            _STATE.append(StateDir.open(caller[0], owner=caller[1], create=False))
            found = _lookup(kind, n)
            if found is not None:
                del NOTES[:]
                note("using %s, the state of uid %d, who ran sudo" % caller)
    if found is not None:
        return found
    for let_go, live in released(backend) if backend is not None else []:
        pids = [h["pid"] for h in live]
        if let_go["port"] == n or (kind == "any" and n in pids):
            raise ParkError("pid %s was released from :%d (park release): it runs on without its port, and park "
                            "cannot bring that back" % (",".join(map(str, pids)), let_go["port"]),
                            fix="kill %s, then start the server again" % " ".join(map(str, pids)))
    fix = "park list  (shows what is parked)"
    held = _held_by_root(backend) if backend is not None and os.geteuid() != 0 else []
    if held:
        fix = "sudo park %s %s  (pid %d of yours is held by a park run as root, keeper pid %d)" % (
            verb, text, held[0][0], held[0][1])
    raise ParkError("nothing is parked on :%d%s" % (n, "" if kind == "port" else " or as pid %d" % n), fix=fix)


def _lookup(kind, n):
    if n <= 65535 and state_exists(n):
        return read_state(n)
    if kind == "any":
        for r in all_states(errors=[]):
            if any(h["pid"] == n for h in r["holders"]):
                return r
    return None


def _sudo_caller_state():
    """(path, uid): the ~/.park of the user who ran sudo, when park runs as root with no PARK_HOME, and it
    exists."""
    import pwd
    import stat
    uid = os.environ.get("SUDO_UID", "")
    if os.geteuid() != 0 or os.environ.get("PARK_HOME") or not uid.isdigit() or int(uid) == 0:
        return None
    try:
        path = os.path.join(pwd.getpwuid(int(uid)).pw_dir, ".park")
        st = os.lstat(path)
    except (KeyError, OSError):
        return None
    return (path, int(uid)) if stat.S_ISDIR(st.st_mode) and st.st_uid == int(uid) else None


def _held_by_root(backend):
    """[(pid, tracer)] of this user's processes that root's processes trace (a park run with sudo)."""
    pids = getattr(backend, "pids", None)
    out = []
    for pid in pids() if pids else []:
        info = backend.process(pid)
        if info and info["uid"] == os.geteuid() and info.get("tracer"):
            tracer = backend.process(info["tracer"])
            if tracer and tracer["uid"] == 0 and any("park" in a for a in tracer["argv"][:3]):
                out.append((pid, info["tracer"]))
    return out


# ---------------------------------------------------------------------------------------------------------
# Commands

def debug(text):
    """Timings and details for PARK_DEBUG=1 (stderr, so output stays clean)."""
    if os.environ.get("PARK_DEBUG"):
        sys.stderr.write("park: debug: %s\n" % text)


def out(text=""):
    """One or more lines on stdout, each with its control characters escaped (see safe)."""
    sys.stdout.write("\n".join(safe(line) for line in str(text).split("\n")) + "\n")
    sys.stdout.flush()


def _prepare(backend, port, force, everywhere=False):
    """Everything park needs to park port: (record, plan, seccomp); nothing is changed yet. everywhere: look
    for holders among all processes (the backend may look near the socket first)."""
    import time
    if state_exists(port):
        old = read_state(port)
        status, _ = record_status(backend, old)
        if status == "parked":
            raise ParkError("pid %s on :%d is already parked" % (_pids(old), port), fix="park resume %d" % port)
        if status == "running" and not backend.listeners(port):
            raise ParkError("pid %s, parked on :%d, runs without its listener (%s)"
                            % (_pids(old), port, _why_running(old)), fix="park resume %d" % port)
        remove_state(old)  # its processes are gone, or serve again
    started = time.perf_counter()
    found = backend.listeners(port, everywhere=True) if everywhere else backend.listeners(port)
    debug("holders found in %.2f ms" % ((time.perf_counter() - started) * 1000))
    if not found:
        raise ParkError("nothing is listening on :%d" % port, fix=_listening_hint(backend, port))
    me = os.geteuid()
    infos = {}
    for l in found:
        if not l["holders"]:
            raise ParkError("cannot see which process listens on %s (another user's?)"
                            % where([l["host"], l["port"]]), fix="sudo park %d" % port)
        for pid in l["holders"]:
            info = backend.process(pid)
            if info is None:
                raise ParkError("pid %d exited while park looked at it" % pid, fix="park %d" % port)
            if info["tracer"]:
                _refuse_if_parked(backend, info, port)
            why = refusal(info, port, me, force) or _not_owners(info, port)
            if why:
                raise ParkError(why[0], fix=why[1])
            infos[pid] = info
    try:
        plan = [backend.inspect(l, force) for l in found]
    except backend.Error as e:
        raise _from_backend(backend, e, port, "park")
    record = {
        "kind": KIND, "schema": SCHEMA, "version": __version__, "port": port, "parked_at": time.time(),
        "holders": [{"pid": i["pid"], "starttime": i["start"], "uid": i["uid"], "name": i["name"],
                     "argv": i["argv"]} for _, i in sorted(infos.items())],
        "listeners": plan,
        # As root, park suspends a target's seccomp filter while it injects (PTRACE_O_SUSPEND_SECCOMP).
        "seccomp": any(i["seccomp"] == 2 for i in infos.values()) and me == 0,
    }
    return record, plan, record["seccomp"]


def _refuse_if_parked(backend, info, port):
    """A process that is traced because it is parked already, on another of its ports, is named as such."""
    for r in all_states(errors=[]):
        keeper = None if r.get("ended") else keeper_alive(backend, r)
        if keeper == info["tracer"] and any(h["pid"] == info["pid"] for h in r["holders"]):
            raise ParkError("pid %d (%s) is already parked on :%d (held by keeper pid %d); park holds a process "
                            "for one of its ports at a time" % (info["pid"], info["name"], r["port"], keeper),
                            fix="park resume %d, then park %d" % (r["port"], port))


def _not_owners(info, port):
    """Root with a state directory that another user owns acts only on that user's processes (so that
    `sudo park resume` works for a server you parked yourself, and a state file of yours can steer nothing
    else): (message, fix) when info is not one of them, else None."""
    owner = state().owner
    if owner == os.geteuid() or info["uid"] == owner:
        return None
    return ("pid %d (%s) belongs to uid %d, but the state directory %s belongs to uid %d: park acts only on "
            "uid %d's processes with it" % (info["pid"], info["name"], info["uid"], state().path, owner, owner),
            "PARK_HOME=/root/.park park %d  (a state directory of root's own)" % port)


def recheck(backend, record):
    """Before acting on a record with no keeper to vouch for it: each holder that is still the recorded
    process may be touched (the refusals of `park PORT` apply again, checked against /proc, never the file),
    and looks as park left it: no recorded listener fd open, each recorded epoll fd an epoll instance."""
    me = os.geteuid()
    table = getattr(backend, "fds", None)
    port = record["port"]
    # A park or resume killed halfway may have left a listener fd not yet closed, or one it had made (the
    # fd of a call in flight is in no journal): the backend undoes them, and checks the fds after that.
    journal = journal_left(port)
    for h in record["holders"]:
        info = recorded(backend, h)
        if info is None:
            continue  # gone, or another process now: _live_plan leaves it alone
        keeper = keeper_alive(backend, record)
        if keeper is not None and info["tracer"] == keeper:
            raise ParkError("pid %d is still held by the keeper of :%d (pid %d), which does not hold all of its "
                            "processes" % (h["pid"], port, keeper), fix="kill %d; park resume %d" % (keeper, port))
        why = refusal(info, port, me, True) or _not_owners(info, port)
        if why:
            raise ParkError(why[0], fix=why[1])
        if table is None:
            continue
        open_fds = table(h["pid"])
        for l in record["listeners"]:
            for lh in l["holders"]:
                if lh["pid"] != h["pid"]:
                    continue
                for f in lh["fds"]:
                    if f["fd"] in open_fds and not journal:
                        raise ParkError("pid %d has fd %d open, where park closed its listener: it is not (or no "
                                        "longer) parked as the state says" % (h["pid"], f["fd"]),
                                        fix="park release %d  (forget it; the process is left as it is)" % port)
                for r in lh.get("epoll", []):
                    if open_fds.get(r["epfd"]) != "anon_inode:[eventpoll]":
                        raise ParkError("pid %d has no epoll instance at fd %d, as its state says" % (h["pid"],
                                                                                                     r["epfd"]),
                                        fix="park release %d  (forget it; the process is left as it is)" % port)


def _listening_hint(backend, port):
    """A fix for a port where nothing listens: the ports that are listening (closest to the typo first)."""
    ports = sorted(backend.ports_listening(), key=lambda p: (abs(p - port), p))
    if not ports:
        return "park list  (shows what is parked; no TCP port park can see is listening)"
    shown = ", ".join(":%d" % p for p in ports[:8]) + (", ..." if len(ports) > 8 else "")
    return "park %d  (listening now: %s)" % (ports[0], shown)


def _why_running(record):
    ended = record.get("ended")
    if ended:
        return ended["reason"]
    if journal_left(record["port"]):
        return ("its keeper, pid %s, was killed while it changed the process (it may be stopped, and may hold "
                "a half-made listener)" % (record.get("keeper") or {}).get("pid", "?"))
    return "its keeper, pid %s, is gone" % (record.get("keeper") or {}).get("pid", "?")


def each(items, one):
    """Several ports in one command (park 3000 5173): each on its own, an error for one said and the others
    still done; EXIT_OK only when all succeeded."""
    if len(items) == 1:
        return one(items[0])
    code = EXIT_OK
    for item in items:
        try:
            if one(item) != EXIT_OK:
                code = EXIT_FAIL
        except ParkError as e:
            if e.code == EXIT_USAGE:
                raise
            sys.stderr.write("park: %s\n" % safe(str(e)) + ("  fix: %s\n" % safe(str(e.fix)) if e.fix else ""))
            code = EXIT_FAIL
    return code


def cmd_park(args):
    seconds = parse_duration(args.for_) if args.for_ is not None else None
    ports = [parse_port(p) for p in args.port]
    if len(ports) > 1 and (args.hold or args.run):
        raise ParkError("--hold and -- COMMAND take one port", fix="park %d --hold" % ports[0], code=EXIT_USAGE)
    backend = load_backend()
    return each(ports, lambda port: _park_port(backend, port, args, seconds))


def _park_port(backend, port, args, seconds, everywhere=False):
    import time
    with PortLock(port):
        record, plan, seccomp = _prepare(backend, port, args.force, everywhere)
        if seconds is not None:
            record["timer"] = {"until": record["parked_at"] + seconds}
        # The state goes to disk before the target is touched, so a park that dies halfway leaves a record
        # that `park resume` can use; the keeper removes it again if it fails and the target runs as before.
        write_state(record)
        with Critical():
            report = _spawn_keeper(backend, record, plan, seccomp, args.drain, args.hold)
    if not report.get("ok"):
        if report.get("missed") and not everywhere:  # a holder the first look did not find; it runs as it was
            debug("pid %s holds the listener too; looking at every process" % report["missed"])
            return _park_port(backend, port, args, seconds, everywhere=True)
        raise ParkError(report["error"], fix=report.get("fix"))
    debug("threads held by ptrace %.2f ms" % (report["held"] * 1000))
    for line in process_lines("parked :%d  pid %%s  " % port, record["holders"]):
        out(line)
    out("  was listening on %s  (held by keeper pid %d)" % (", ".join(addresses(plan)),
                                                           report["keeper"]))
    if report["reset"]:
        out("  warning: %d queued connection(s) were not accepted in time and were reset" % report["reset"])
    warning = supervisor_warning(record["holders"], seconds)
    if warning:
        out("  " + warning)
    if report.get("hold_error"):
        raise ParkError("parked, but cannot hold :%d open: %s; pid %s stays parked"
                        % (port, report["hold_error"], _pids(record)), fix="park resume %d" % port)
    if seconds is not None:
        out("  resumes by itself in %s, at %s (log: %s)" % (format_duration(seconds), time.strftime(
            "%H:%M:%S", time.localtime(record["timer"]["until"])), keeper_log(port)))
    if args.hold:
        return _hold_view(backend, port, seconds)
    if args.run:
        return _run_then_resume(backend, record, args.run)
    out("  resume%s: park resume %d" % (" sooner" if seconds is not None else "", port))
    return EXIT_OK


def _run_then_resume(backend, record, command):
    """park PORT -- COMMAND: run COMMAND in the foreground (it has the terminal: stdin, Ctrl+C) while the port
    is free, then resume the server, however COMMAND ended. Returns COMMAND's exit status (128+N for a
    signal, as a shell says it), or 1 when the server could not be resumed (it then stays parked)."""
    import signal
    import subprocess
    port = record["port"]
    out("  running: %s" % " ".join(command))
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGQUIT)}  # as system(3) does
    try:
        try:
            proc = subprocess.Popen(command, preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in old])
        except OSError as e:
            status = 127
            sys.stderr.write("park: cannot run %s: %s\n" % (safe(command[0]), e.strerror))
        else:
            status = proc.wait()
            status = 128 - status if status < 0 else status
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    try:
        record = read_state(port)  # with the keeper it names (this process's copy predates the keeper)
    except ParkError as e:
        sys.stderr.write("park: %s\n  fix: park list\n" % safe(str(e)))
        return EXIT_FAIL
    keeper = held_by_keeper(backend, record)
    reply = None
    with Critical():
        with PortLock(port):
            reply = _ask_keeper(port, {"op": "resume"}, keeper) if keeper else None
    if reply is None or not reply.get("ok"):
        why = (reply or {}).get("error") or "its keeper did not answer"
        sys.stderr.write("park: %s exited with status %d, but :%d cannot be resumed: %s\n  fix: %s\n"
                         % (safe(command[0]), status, port, safe(str(why)),
                            safe(str((reply or {}).get("fix") or "park resume %d" % port))))
        return EXIT_FAIL
    _print_resumed(record, port, reply)
    return status


def _wait_seconds(text):
    """--wait's value: seconds, or a duration as --for takes it."""
    import argparse
    try:
        return parse_duration(text)
    except ParkError:
        raise argparse.ArgumentTypeError("expected seconds or a duration (60, 90s, 2m), not %r" % text[:20])


def parse_duration(text):
    """'30s', '5m', '1h30m', or a bare number of seconds, to seconds; a usage error otherwise."""
    import re
    m = re.match(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s?)?$", text.strip())
    if not text.strip() or not m:
        raise ParkError("not a duration: %r (e.g. 30s, 5m, 1h30m, or seconds)" % text[:20],
                        fix="park PORT --for 30s", code=EXIT_USAGE)
    h, mi, sec = m.groups()
    seconds = int(h or 0) * 3600 + int(mi or 0) * 60 + float(sec or 0)
    if seconds <= 0:
        raise ParkError("the duration must be more than 0: %r" % text[:20], fix="park PORT --for 30s",
                        code=EXIT_USAGE)
    return seconds


# ---------------------------------------------------------------------------------------------------------
# Supervisors that time their workers. While a master and its workers are held, the master's clock check
# must still pass when they go on, or it kills the workers it finds late and forks new ones (fresh memory).
# gunicorn's arbiter kills a worker whose heartbeat is older than --timeout: the heartbeat is the mtime of an
# unlinked temp file named wgunicorn-* that the worker sets to time.monotonic() (gunicorn >= 21) or its ctime,
# which the worker bumps with fchmod and the arbiter compares with time.time() (older ones). The keeper sets
# both to now on every tick while it holds them. puma's master compares each worker's last check-in (a pipe
# message) with worker_timeout before it reads the pipe, so nothing outside can satisfy it: park warns.

HEARTBEAT_PREFIX = "wgunicorn-"
PUMA_WORKER = "puma: cluster worker"
PUMA_WORKER_TIMEOUT = 60  # puma's default worker_timeout, in seconds


def heartbeats(backend, pids):
    """Paths through which the keeper reaches the held workers' heartbeat files, one per file."""
    if not hasattr(backend, "fd_path"):
        return []  # macOS: no path reaches another process's fd
    paths, seen = [], set()
    for pid in pids:
        for fd, link in sorted(backend.fds(pid).items()):
            if os.path.basename(link).startswith(HEARTBEAT_PREFIX):
                path = backend.fd_path(pid, fd)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    paths.append(path)
    return paths


def refresh_heartbeats(paths):
    """Set each heartbeat file's times to now, on the clock its worker writes (the one its mtime is closest
    to); utime sets the ctime to now as well. Returns how many were refreshed."""
    import time
    n = 0
    for path in paths:
        try:
            mtime = os.stat(path).st_mtime
            now_mono, now_wall = time.monotonic(), time.time()
            now = now_mono if abs(mtime - now_mono) < abs(mtime - now_wall) else now_wall
            os.utime(path, (now, now))
            n += 1
        except OSError:
            pass  # the worker is gone; the keeper reports that on its own
    return n


def supervisor_warning(holders, seconds):
    """One line for a supervisor whose clock check park cannot satisfy, or None."""
    if not any((h.get("argv") or [""])[0].startswith(PUMA_WORKER) for h in holders):
        return None
    if seconds is not None and seconds >= PUMA_WORKER_TIMEOUT:
        return ("warning: --for %s is longer than puma's worker_timeout (%d s unless configured): its master "
                "will replace the workers, losing their memory" % (format_duration(seconds), PUMA_WORKER_TIMEOUT))
    return ("note: puma's master replaces workers parked longer than its worker_timeout (%d s unless "
            "configured): resume before then to keep them" % PUMA_WORKER_TIMEOUT)


# ---------------------------------------------------------------------------------------------------------
# The keeper: one process per park, in its own session, that parks the target and then holds it (on Linux as
# its tracer: every thread stays in a ptrace stop, so the shell sees no stopped job), runs the --for timer and
# the --hold sockets, acts on signals sent to the parked process, and does what `park resume` and
# `park release` ask of it over a unix socket in the state directory. If the keeper dies, the process runs on
# without its listener, and `park resume` recreates it.

KEEPER_REPORT_SECONDS = 60  # the CLI waits this long for the keeper to say it parked (a drain takes 2 s)
KEEPER_TICK = 0.25  # seconds between looks at the held processes' signals (see _keeper_signals)
RETRY_SECONDS = 600  # how long a timed resume keeps trying while the port is taken
ENDING = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")  # they end a park: the process then gets them at once
JOB_STOPS = ("SIGTSTP", "SIGTTIN", "SIGTTOU")
DEFAULT_IGNORED = ("SIGCHLD", "SIGCONT", "SIGURG", "SIGWINCH")  # signal(7): default action Ign (or Cont)


def keepers_dir():
    return state().sub("keepers")


def keeper_log(port):
    return keepers_dir().where("%d.log" % port)


def _spawn_keeper(backend, record, plan, seccomp, drain, hold):
    """Fork the keeper, which parks the target and stays; return its report (a dict) once it has parked."""
    import json
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = EXIT_FAIL
        try:
            os.close(r)
            os.setsid()  # no terminal, no job control: the shell that ran park never waits for the keeper
            if os.fork() != 0:
                os._exit(0)
            code = _keeper(backend, record, plan, seccomp, drain, hold, w)
        finally:
            os._exit(code)
    import select
    import time
    os.close(w)
    os.waitpid(pid, 0)
    data, deadline = b"", time.monotonic() + KEEPER_REPORT_SECONDS
    with os.fdopen(r, "rb", buffering=0) as f:
        while time.monotonic() < deadline:  # until the keeper closes its end: after parking, or when it dies
            if select.select([f], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = f.read(65536)
                if not chunk:
                    break
                data += chunk
        else:
            return {"ok": False, "error": "park's keeper did not report within %d s whether it parked :%d"
                                          % (KEEPER_REPORT_SECONDS, record["port"]),
                    "fix": "park list  (shows whether :%d is parked)" % record["port"]}
    try:
        return json.loads(data.decode())
    except ValueError:
        status, _ = record_status(backend, record)
        # Nothing changed only if every listener is still there and no journal says a change was under way.
        intact = {l["inode"] for l in record["listeners"]} <= {l["inode"] for l in backend.listeners(record["port"])}
        if not state_exists(record["port"]) or (status == "running" and intact and not journal_left(record["port"])):
            remove_state(record)
            return {"ok": False, "error": "park's keeper died before it could park :%d; the server runs as it "
                                          "was" % record["port"], "fix": "park %d  (again)" % record["port"]}
        return {"ok": False, "error": "park's keeper died while it parked :%d; the process may be stopped or "
                                      "without its listener" % record["port"],
                "fix": "park resume %d  (undoes what it left and brings the listener back)" % record["port"]}


class _Keeper:
    """What the keeper holds: the record, the Tracer (Linux), the --hold sockets and its control socket."""

    def __init__(self, backend, record, plan, report):
        self.backend, self.record, self.plan, self.report = backend, record, plan, report
        self.port = record["port"]
        self.tracer = None
        self.socks = []
        self.ctl = None
        self.terminate = False
        self.pending = None  # why a timed resume waits
        self.retry_at = 0.0
        self.give_up = None
        self.baseline = {}  # pid: signals already pending when the park began
        self.resend = []  # (pid, signal) taken off a queue while parked, to be sent again when it ends
        self.dead = {}  # pid: how it died while parked
        self.heartbeats = []  # paths of the held workers' heartbeat files (see Supervisors)

    def log(self, text):
        import time
        try:
            keepers_dir().append("%d.log" % self.port, "%s :%d %s\n" % (time.strftime("%Y-%m-%d %H:%M:%S"),
                                                                       self.port, safe(text)))
        except (OSError, ParkError):
            pass

    def send_report(self, data):
        import json
        if self.report is not None:
            try:
                os.write(self.report, json.dumps(data).encode())
            except OSError:
                pass
            os.close(self.report)
            self.report = None

    def save(self):
        self.record.pop("_path", None)
        write_state(self.record)

    def close(self):
        for s in self.socks + ([self.ctl] if self.ctl else []):
            s.close()
        self.socks, self.ctl = [], None
        keepers_dir().unlink("%d.sock" % self.port)


def _keeper(backend, record, plan, seccomp, drain, hold, report):
    """The keeper's life: park, report to the CLI, then hold until resumed, released or ended."""
    import signal
    import socket
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # forked inside the CLI's Critical(): unblock everything
    fd = os.open(os.devnull, os.O_RDWR)
    for n in (0, 1, 2):
        os.dup2(fd, n)  # nothing of the terminal, nor of a pipe the CLI writes to, is kept open
    # Close every fd the CLI had (its port lock among them) but the report pipe and the checked state
    # directory fds, which the keeper goes on using: it never opens the state by its path again.
    state().sub("parked"), state().sub("keepers"), state().sub("locks")
    keep = sorted({report, _STATE[0].fd} | {d.fd for d in _STATE[0].__dict__.get("subs", {}).values()})
    low = 3
    for fd in keep:
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 16)
    for name in ("SIGINT", "SIGHUP", "SIGQUIT", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGPIPE"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    k = _Keeper(backend, record, plan, report)

    def on_term(signum, frame):
        k.terminate = True
    signal.signal(signal.SIGTERM, on_term)
    me = backend.process(os.getpid())
    port = record["port"]
    keepers = keepers_dir()
    name = "%d.sock" % port
    keepers.unlink(name)
    k.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    os.umask(0o077)
    k.ctl.bind(keepers.fd_path(name))  # in the checked 0700 directory; callers are checked with SO_PEERCRED
    if keepers.owner != os.geteuid():
        os.chown(name, keepers.owner, -1, dir_fd=keepers.fd, follow_symlinks=False)
    k.ctl.listen(8)
    record["keeper"] = {"pid": os.getpid(), "starttime": me["start"] if me else 0}
    k.save()
    k.log("keeper started (pid %d)" % os.getpid())
    journal = open_journal(backend, port, fresh=True)  # a resume killed just after its work may leave one
    try:
        kw = {"journal": journal} if journal is not None else {}
        result = backend.park(plan, drain=drain, suspend_seccomp=seccomp, **kw)
        clear_journal(port)  # all put back cleanly: nothing to undo
    except backend.Error as e:
        clear_journal(port)
        _close_fd(journal)
        err = _from_backend(backend, e, port, "park")
        if not e.parked:
            remove_state(record)
            k.close()
            k.send_report({"ok": False, "error": str(err), "fix": err.fix, "missed": getattr(e, "missed", [])})
            return EXIT_FAIL
        k.log("park failed, the process stays parked: %s" % e)
        k.tracer = e.tracer
        k.send_report({"ok": False, "error": str(err), "fix": err.fix})
        return _keeper_loop(k)
    except BaseException as e:
        _close_fd(journal)
        remove_state(record)
        k.close()
        k.send_report({"ok": False, "error": "unexpected error: %s: %s" % (type(e).__name__, e),
                       "fix": "run again with PARK_DEBUG=1 and report it"})
        return EXIT_FAIL
    _close_fd(journal)
    k.tracer = result.get("tracer")
    k.save()  # park may have added what it observed (each epoll registration's wake order)
    if k.tracer is not None:  # before the CLI returns: a signal sent after that is news
        k.baseline = {pid: set(backend.signals(pid)["pending"]) for pid in k.tracer.pids()}
    k.log("parked pid %s" % _pids(record))
    for note in result.get("notes", ()):
        k.log(note)
    hold_error = None
    if hold:
        try:
            k.socks = [backend.hold_socket(l) for l in plan if l.get("listening", True)]
            record["hold"] = {"pid": os.getpid(), "starttime": record["keeper"]["starttime"],
                              "sockets": [{"inode": os.fstat(s.fileno()).st_ino, "family": int(s.family)}
                                          for s in k.socks]}
            k.save()
        except (OSError, backend.Error) as e:
            hold_error = getattr(e, "strerror", None) or str(e)
    k.send_report({"ok": True, "reset": result["reset"], "held": result["held"], "keeper": os.getpid(),
                   "hold_error": hold_error})
    return _keeper_loop(k)


def _keeper_loop(k):
    """Sleep in select() on the control socket; every KEEPER_TICK look at the held processes (exits, signals,
    job control) and at the timer. Returns the keeper's exit code once the park has ended."""
    import select
    import time
    if k.tracer is not None:
        k.heartbeats = heartbeats(k.backend, k.tracer.pids())
    while True:
        refresh_heartbeats(k.heartbeats)
        timer = k.record.get("timer")
        wait = KEEPER_TICK
        if timer and timer.get("gave_up"):
            timer = None
        if timer:
            wait = max(0.0, min(wait, max(timer["until"], k.retry_at) - time.time()))
        try:
            ready, _, _ = select.select([k.ctl], [], [], wait)
        except OSError:
            ready = []
        if DEFERRED:  # a SIGTERM that came while a resume was under way (inside Critical)
            import signal
            k.terminate = k.terminate or signal.SIGTERM in DEFERRED
            del DEFERRED[:]
        try:
            if k.terminate:
                _keeper_end(k, "the keeper got SIGTERM")
                return EXIT_OK
            if _keeper_watch(k):
                return EXIT_OK
            if ready and _keeper_request(k):
                return EXIT_OK
            if timer and time.time() >= max(timer["until"], k.retry_at) and _keeper_timer(k):
                return EXIT_OK
        except Exception as e:
            # A bug must not end the keeper: while it lives, the processes stay held as they were.
            k.terminate = False
            k.log("unexpected error: %s: %s; still holding pid %s" % (type(e).__name__, e, _pids(k.record)))
            time.sleep(1)


def _keeper_watch(k):
    """Holders that died, and signals queued for the held ones; True when the park has ended."""
    backend = k.backend
    if k.tracer is not None:
        for pid, event in k.tracer.reap():
            if event[0] == "exit":
                status = event[1]
                how = ("killed by %s" % _signame(os.WTERMSIG(status)) if os.WIFSIGNALED(status)
                       else "exited with status %d" % os.WEXITSTATUS(status))
                k.log("pid %d %s while parked" % (pid, how))
                k.dead[pid] = how
            elif event[0] == "continued":
                k.log("pid %d was continued by job control (fg/bg); it stays parked" % pid)
        alive = set(k.tracer.pids())
    else:
        alive = {h["pid"] for h in k.record["holders"]
                 if holder_status(backend, h, os.getpid()) != "gone"}
    if not alive:
        reason = "; ".join("pid %d %s" % kv for kv in sorted(k.dead.items())) or "its processes are gone"
        k.record["ended"] = {"reason": reason, "listener": False}
        k.save()
        k.close()
        return True
    if k.tracer is None:
        return False
    for pid in sorted(alive):
        if k.tracer.job_stopped(pid):
            continue  # stopped by job control: like any stopped process, it acts on its signals after SIGCONT
        sigs = backend.signals(pid)
        # What was already queued when the park began (a signal the server blocks, say) is not news.
        old = k.baseline.setdefault(pid, set())
        old &= sigs["pending"]
        live = sigs["pending"] - sigs["ignored"] - old
        ending = sorted(n for n in live if _ends_park(n, sigs["caught"]))
        if ending:
            name = _signame(ending[0])
            _keeper_end(k, "%s was sent to pid %d" % (name, pid))
            return True
        stops = sorted(n for n in live if _signame(n) in JOB_STOPS)
        if stops:
            old.add(stops[0])  # acted on once; SIGCONT takes it off the queue (kernel/signal.c prepare_signal)
            if not backend.stoppable(pid, stops[0]):
                k.log("pid %d got %s, which does not stop it (blocked, or an orphaned process group)"
                      % (pid, _signame(stops[0])))
                continue
            try:
                stopped, taken = k.tracer.job_stop(pid)
            except (OSError, backend.Error) as e:
                k.log("pid %d got %s, but park could not let it stop: %s" % (pid, _signame(stops[0]), e))
                k.tracer.hold_all()
                continue
            k.resend += [(pid, n) for n in taken]
            k.log("pid %d got %s: %s" % (pid, _signame(stops[0]), "stopped by job control, still parked"
                                         if stopped else "continued at once, still parked"))
    return False


def _signame(n):
    import signal
    try:
        return signal.Signals(n).name
    except ValueError:
        return "signal %d" % n


def _ends_park(n, caught):
    """A signal that ends a park: the four a user sends to end a server, and any other whose default action
    (signal(7)) would end the process and that it does not catch."""
    name = _signame(n)
    if name in ENDING:
        return True
    if name in JOB_STOPS or name in DEFAULT_IGNORED or name in ("SIGSTOP", "SIGKILL"):
        return False
    return n not in caught


def _keeper_end(k, reason):
    """A signal (or SIGTERM to the keeper) ends the park: put the listener back if the port is free, else let
    the process run without it; either way the signal that was queued is delivered as the threads go."""
    import time
    lock = PortLock(k.port)
    try:
        lock.__enter__()
    except ParkError:
        lock = None  # a park command holds the lock and waits for us: it cannot change anything meanwhile
    try:
        restored = False
        try:
            _keeper_resume(k, force=True)
            restored = True
        except ParkError as e:
            k.log("could not put the listener back (%s); the process runs without it" % e)
            if k.tracer is not None:
                k.tracer.release()
        for pid, n in k.resend:
            _kill(pid, n)
        k.log("%s: the park ended%s" % (reason, ", listener restored" if restored else ""))
        k.record["ended"] = {"reason": reason, "listener": restored, "at": time.time()}
        k.record.pop("hold", None)
        k.save()
        k.close()
        # A process that went on after its signal, with its listener back, is simply running: forget it.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and record_status(k.backend, k.record)[0] != "gone":
            time.sleep(0.05)
        if restored and record_status(k.backend, k.record)[0] != "gone":
            _remove_if_ours(k)
    finally:
        if lock is not None:
            lock.__exit__()


def _remove_if_ours(k):
    """Remove the state of this keeper's park, and not one a new `park PORT` wrote meanwhile."""
    try:
        if state_exists(k.port) and read_state(k.port).get("parked_at") == k.record["parked_at"]:
            remove_state(k.record)
    except ParkError:
        pass


def _kill(pid, signo):
    try:
        os.kill(pid, signo)
    except OSError:
        pass


def _keeper_resume(k, force):
    """Recreate the listeners (or hand over the hold's sockets) in the held processes and let them go; the
    state is removed. Raises PortBusy or ParkError and keeps holding them when it cannot."""
    backend = k.backend
    plan, notes = _live_plan(backend, k.record)
    given = None
    if k.socks:
        serving = [l for l in k.record["listeners"] if l.get("listening", True)]
        held = {l["inode"]: s.fileno() for l, s in zip(serving, k.socks)}
        given = [held.get(l["inode"]) for l in plan]  # None: a socket that was only bound is made anew
    elif backend.listeners(k.port):
        raise _busy(backend, k.record)
    refresh_heartbeats(k.heartbeats)  # the supervisor checks them as soon as it runs again
    result = _resume_once(backend, k.record, plan, force, given, k.tracer)
    for pid, n in k.resend:
        _kill(pid, n)
    k.resend = []
    k.record.pop("_path", None)
    k.log("resumed pid %s" % _pids(k.record))
    return result, plan, notes


def _keeper_request(k):
    """Serve one request from the CLI; True when the park has ended."""
    import json
    try:
        conn, _ = k.ctl.accept()
    except OSError:
        return False
    with conn:
        conn.settimeout(5)
        try:
            uid = peer_of(conn)[1]
            if uid not in (0, os.geteuid()):
                return False
            req = json.loads(conn.makefile("rb").readline().decode())
            op = req.get("op")
        except (OSError, ValueError, AttributeError):
            return False
        reply, done = {"ok": True}, False
        if op == "resume":
            try:
                waiting = hold_waiting(k.backend, k.record.get("hold"))
                result, plan, notes = _keeper_resume(k, bool(req.get("force")))
                if k.record.get("timer"):
                    k.log("resumed by hand (park resume) before the timer")
                reply.update(held=result["held"], notes=notes, handed=waiting,
                             pids=[h["pid"] for l in plan for h in l["holders"]],
                             addresses=addresses(plan))
                k.close()  # _keeper_resume removed the state
                done = True
            except PortBusy as e:
                reply = {"ok": False, "busy": True, "error": str(e), "fix": e.fix, "holders": e.holders}
            except ParkError as e:
                reply = {"ok": False, "error": str(e), "fix": e.fix}
            except Exception as e:  # a bug must not end the keeper: the processes stay held, as they were
                k.log("resume failed: %s: %s; the processes stay parked" % (type(e).__name__, e))
                reply = {"ok": False, "error": "unexpected error: %s: %s; pid %s stays parked"
                         % (type(e).__name__, e, _pids(k.record)), "fix": "park release %d" % k.port}
        elif op == "release":
            signo = req.get("signal")
            if isinstance(signo, int) and signo > 0:
                for h in k.record["holders"]:
                    _kill(h["pid"], signo)  # queued while still held: handled first thing once they run
            if k.tracer is not None:
                k.tracer.release()
            for pid, n in k.resend:
                _kill(pid, n)
            k.log("released pid %s" % _pids(k.record))
            reply["pids"] = [h["pid"] for h in k.record["holders"]]
            k.close()
            remove_state(k.record)
            done = True
        elif op != "ping":
            reply = {"ok": False, "error": "unknown request %r" % op}
        try:
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass
        return done


def _keeper_timer(k):
    """The --for timer is due: resume, or keep trying every second while the port is taken."""
    import time
    if k.give_up is None:
        k.give_up = time.time() + RETRY_SECONDS
    try:
        lock = PortLock(k.port)
        with lock:
            _keeper_resume(k, force=False)
            k.close()
        return True
    except PortBusy as e:
        why = "resume pending: :%d is in use by %s" % (k.port, e.holders)
    except ParkError as e:
        if "another park command" in str(e):
            k.retry_at = time.time() + 0.2
            return False
        why = "cannot resume: %s" % e
    if time.time() > k.give_up:
        k.log("gave up after %d s; the process stays parked (park resume %d)" % (RETRY_SECONDS, k.port))
        k.record["timer"]["pending"] = "gave up at %s: %s" % (time.strftime("%H:%M:%S"), k.pending or why)
        k.record["timer"]["gave_up"] = True
        k.save()
        return False
    if why != k.pending:
        k.log(why + "; retrying every second")
        k.record["timer"]["pending"] = why
        k.save()
        k.pending = why
    k.retry_at = time.time() + 1.0
    return False


def held_by_keeper(backend, record):
    """The keeper's pid when a live keeper holds every live holder of this record (on Linux: traces it), so
    that what it says can be believed; None otherwise (no keeper, or a record that only claims one)."""
    keeper = None if record.get("ended") else keeper_alive(backend, record)
    if keeper is None:
        return None
    live = [i for i in (recorded(backend, h) for h in record["holders"]) if i is not None]
    if not live or not all(backend.held(i, keeper) and _not_owners(i, record["port"]) is None for i in live):
        return None
    return keeper


def peer_of(sock):
    """(pid, uid) of the process at the other end of a connected unix socket: SO_PEERCRED on Linux,
    LOCAL_PEERPID and LOCAL_PEERCRED (struct xucred, sys/ucred.h) on macOS."""
    import socket
    import struct
    if hasattr(socket, "SO_PEERCRED"):
        return struct.unpack("=iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[:2]
    pid = struct.unpack("=i", sock.getsockopt(0, 0x002, 4))[0]  # SOL_LOCAL, LOCAL_PEERPID (sys/un.h)
    uid = struct.unpack("=IIh", sock.getsockopt(0, 0x001, 76)[:10])[1]  # LOCAL_PEERCRED: cr_version, cr_uid
    return pid, uid


def _ask_keeper(port, request, keeper, timeout=20):
    """Send one request to the keeper of port (pid `keeper`, checked with SO_PEERCRED); its reply (a dict),
    or None when no keeper answers, or another process does."""
    import json
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect(keepers_dir().fd_path("%d.sock" % port))
        except OSError:
            return None
        peer, uid = peer_of(s)
        if peer != keeper or uid not in (0, os.geteuid(), state().owner):
            return None
        s.sendall(json.dumps(request).encode() + b"\n")
        data = s.makefile("rb").readline()
    except OSError:
        return None
    finally:
        s.close()
    try:
        return json.loads(data.decode())
    except ValueError:
        return None


def _hold_view(backend, port, seconds):
    """`park PORT --hold` in the foreground: show how many clients wait; Ctrl+C (or SIGTERM) hands them over.
    The sockets are the keeper's: a closed terminal (SIGHUP) ends only this view, the clients keep waiting
    until `park resume` or the timer."""
    import signal
    import time
    woke = []
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: woke.append(signum))
    out("  holding :%d: clients wait instead of being refused. Ctrl+C (or park resume %d elsewhere) hands them "
        "over%s" % (port, port, " in %s" % format_duration(seconds) if seconds is not None else ""))
    tty = sys.stderr.isatty()
    token = rec = None
    while not woke:
        try:
            rec = read_state(port) if state_exists(port) else None
        except ParkError:
            rec = None
        token = token or (rec or {}).get("parked_at")
        if rec is None or rec.get("parked_at") != token or rec.get("ended"):
            out("  :%d is no longer parked; stopped showing the hold" % port)
            return EXIT_OK
        waiting = hold_waiting(backend, rec.get("hold")) or 0
        if tty:
            try:
                sys.stderr.write("\r  %d client(s) waiting on :%d   " % (waiting, port))
                sys.stderr.flush()
            except OSError:  # the terminal is gone: the keeper keeps the clients
                return EXIT_OK
        time.sleep(0.25)
    if woke[0] == signal.SIGHUP:
        return EXIT_OK
    if tty:
        sys.stderr.write("\n")
    with Critical():
        with PortLock(port):
            keeper = held_by_keeper(backend, rec) if rec else None
            reply = _ask_keeper(port, {"op": "resume"}, keeper) if keeper else None
    return _print_resumed(rec, port, reply)


def _print_resumed(record, port, reply):
    if reply is None:
        raise ParkError("the keeper of :%d did not answer" % port, fix="park list; park resume %d" % port)
    if not reply.get("ok"):
        raise ParkError(str(reply.get("error")), fix=reply.get("fix") and str(reply["fix"]))
    for n in reply.get("notes", []):
        out(str(n))
    names = {h["pid"]: h for h in (record or {}).get("holders", [])}
    for line in process_lines("resumed :%d  pid %%s  " % port, [names.get(pid, {"pid": pid, "name": "?"})
                                                               for pid in sorted(set(reply["pids"]))]):
        out(line)
    if reply.get("handed") is not None:
        out("  handed over %d waiting client(s) on %s" % (reply["handed"], ", ".join(reply["addresses"])))
    else:
        out("  listening on %s" % ", ".join(reply["addresses"]))
    debug("threads held by ptrace %.2f ms" % (reply["held"] * 1000))
    return EXIT_OK


def hold_waiting(backend, hold):
    """Clients waiting on a --hold listener, or None when no live keeper holds it."""
    if not hold:
        return None
    if recorded(backend, hold) is None:
        return None
    socks = hold.get("sockets", [])
    queues = backend.queue_lengths([x["inode"] for x in socks], {x["family"] for x in socks})
    return sum(q[0] for q in queues.values())


def _pids(record):
    return ", ".join(str(h["pid"]) for h in record["holders"])


def _from_backend(backend, e, port, verb):
    import errno as E
    if e.errno in (E.EPERM, E.EACCES):
        if getattr(e, "attach", False):
            message, fix = ptrace_refusal(str(e), backend.ptrace_scope(), verb, port, os.geteuid() == 0)
            return ParkError(message, fix=fix)
        if os.geteuid() != 0:
            return ParkError(str(e), fix="sudo park %s%d" % ("resume " if verb == "resume" else "", port))
    return ParkError(str(e), fix=e.fix)


YAMA = "/proc/sys/kernel/yama/ptrace_scope"


def ptrace_refusal(message, scope, verb, port, root):
    """(message, fix) for a PTRACE_SEIZE the kernel refused, by the Yama scope (None: no Yama) and whether
    park runs as root. Scope 1 lets a process be traced by its ancestors only, 2 by root only (CAP_SYS_PTRACE),
    3 by nobody, and 3 cannot be lowered until the machine reboots."""
    again = "park %s%d" % ("resume " if verb == "resume" else "", port)
    if scope == 3:
        return ("%s: kernel.yama.ptrace_scope is 3, so no process may be traced, not even by root, and the "
                "setting cannot be lowered until reboot" % message,
                "set kernel.yama.ptrace_scope to 1 (or 0) where /etc/sysctl.d/ sets it to 3, reboot, then: sudo "
                + again)
    if root and scope in (1, 2):
        return ("%s: kernel.yama.ptrace_scope is %d and park runs without CAP_SYS_PTRACE (in a container?)"
                % (message, scope), "give the container CAP_SYS_PTRACE (docker run --cap-add=SYS_PTRACE), or on "
                "the host: echo 0 | sudo tee " + YAMA)
    if root:
        return (message, "in a container, give it CAP_SYS_PTRACE (docker run --cap-add=SYS_PTRACE)")
    if scope == 1:
        return ("%s: kernel.yama.ptrace_scope is 1, so only a process's ancestors may trace it, and park did not "
                "start this server" % message,
                "sudo %s, or for every program until reboot: echo 0 | sudo tee %s" % (again, YAMA))
    if scope == 2:
        return ("%s: kernel.yama.ptrace_scope is 2, so only root may trace processes" % message,
                "sudo %s, or for every program until reboot: echo 0 | sudo tee %s" % (again, YAMA))
    return (message, "sudo " + again)


def time_wait_refusal(n, port, pids, why, root, kernel):
    """(message, fix) when n TIME_WAIT connections keep a listener without SO_REUSEADDR from binding again.
    why: the errno clearing them failed with (EOPNOTSUPP: the kernel cannot; EPERM: not root); kernel: its
    release, for a user who is not root (Linux clears TIME_WAIT from 6.0 on)."""
    import errno as E
    message = ("cannot resume: %d TIME_WAIT connection(s) on :%d block the listener, which has no "
               "SO_REUSEADDR; pid %s stays parked" % (n, port, pids))
    wait = "park resume %d --wait 60  (they expire within 60 s)" % port
    if why == E.EOPNOTSUPP or not root and not _linux_at_least(kernel, (6, 0)):
        return message + " (Linux before 6.0 cannot clear them)", wait
    if root:
        return message, wait
    return message, wait + ", or: sudo park resume %d  (root clears them)" % port


def _linux_at_least(release, version):
    """Whether a kernel release string ("5.10.0-30-amd64") is at least version (a tuple); True if unknown."""
    import re
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return not m or (int(m.group(1)), int(m.group(2))) >= version


def port_holders(backend, port):
    """The processes that listen on port now: [info] by pid (a pid that exits meanwhile is named "?")."""
    pids = sorted({pid for l in backend.listeners(port) for pid in l["holders"]})
    return [backend.process(pid) or {"pid": pid, "name": "?"} for pid in pids]


def _holders_text(backend, port, holders=None, width=None):
    """Who holds port, for a message: pid 12 (node server.js), pid 13,14 (gunicorn app:app x2)."""
    holders = port_holders(backend, port) if holders is None else holders
    groups = grouped(holders)
    room = None
    if width is not None and groups:  # each command gets an equal share of what the pids and commas leave
        room = (width - sum(len("pid %s (), " % ",".join(map(str, pids))) for pids, _ in groups)) // len(groups)
    return ", ".join("pid %s (%s)" % (",".join(map(str, pids)), group_text(pids, info, room))
                     for pids, info in groups) or "a process park cannot see"


class _WaitLine:
    """park resume --wait on a terminal: one line on stderr, rewritten in place, saying who holds the port and
    how long park has waited; cleared before anything else is printed. Nothing without a terminal."""

    def __init__(self, port, wait):
        import time
        self.port, self.wait, self.start, self.drawn = port, wait, time.monotonic(), 0.0
        try:
            self.tty = wait > 0 and sys.stderr.isatty()
        except (AttributeError, ValueError):
            self.tty = False

    def show(self, backend):
        import time
        now = time.monotonic()
        if not self.tty or now - self.drawn < 0.25:
            return
        self.drawn = now
        width = (terminal_width(sys.stderr) or 80) - 1
        head = "  waiting %s of %s for :%d, " % (_seconds(int(now - self.start)), _seconds(self.wait), self.port)
        holders = port_holders(backend, self.port)
        text = head + ("held by %s" % _holders_text(backend, self.port, holders, width - len(head) - 8)
                       if holders else "blocked by TIME_WAIT connections")
        self._write("\r" + safe(text[:width]) + "\x1b[K")

    def clear(self):
        if self.drawn:
            self._write("\r\x1b[K")
            self.drawn = 0.0

    def _write(self, text):
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except OSError:  # the terminal went away: keep waiting without the line
            self.tty = False


def _busy(backend, record):
    """The error of a resume while another process holds the port: who, by pid, and the two ways on."""
    port = record["port"]
    holders = port_holders(backend, port)
    text = _holders_text(backend, port, holders)
    stop = "stop that process (kill %s)" % " ".join(str(h["pid"]) for h in holders) if holders else "stop it"
    return PortBusy("cannot resume: :%d is in use by %s; pid %s stays parked" % (port, text, _pids(record)),
                    "%s, or: park resume %d --wait" % (stop, port), text)


def _seconds(s):
    return "%g s" % s if s < 60 else format_duration(s)


def _timed_out(backend, record, wait):
    """The error of a `resume --wait` that ran out: it says so, and the fix is not --wait again but a longer
    one, or ending the process that holds the port (by pid)."""
    port = record["port"]
    holders = port_holders(backend, port)
    longer = "park resume %d --wait %d" % (port, max(60, int(wait * 2)))
    if holders:
        what = "in use by %s" % _holders_text(backend, port, holders)
        fix = "stop it (kill %s), then park resume %d; or wait longer: %s" % (
            " ".join(str(h["pid"]) for h in holders), port, longer)
    else:
        what = "blocked by TIME_WAIT connections"
        fix = "wait longer: " + longer
        if os.geteuid() != 0 and _linux_at_least(os.uname().release if sys.platform.startswith("linux") else None,
                                                 (6, 0)):
            fix += ", or: sudo park resume %d  (root clears them)" % port
    return PortBusy("cannot resume: timed out after %s waiting for :%d, %s; pid %s stays parked"
                    % (_seconds(wait), port, what, _pids(record)), fix, what)


class PortBusy(ParkError):
    """Resume is blocked because another process holds the port; the target stays parked."""

    def __init__(self, message, fix, holders):
        super().__init__(message, fix)
        self.holders = holders


def cmd_resume(args):
    backend = load_backend()
    return each(args.target, lambda target: _resume_target(backend, target, args))


def _resume_target(backend, target, args):
    import time
    try:
        record = find_record(target, backend)
    except ParkError:
        kind, n = parse_target(target)
        if n > 65535 or state_exists(n) or not backend.listeners(n):
            raise  # a damaged state file, or truly nothing there: that error stands
        return _already_listening(backend, n)
    port = record["port"]
    wait = args.wait or 0
    deadline = time.monotonic() + wait
    line = _WaitLine(port, wait)
    try:
        while True:
            keeper = held_by_keeper(backend, record)
            if keeper is None:
                break
            with PortLock(port):
                reply = _ask_keeper(port, {"op": "resume", "force": args.force}, keeper)
            gone = time.monotonic() + 2.0
            while reply is None and keeper_alive(backend, record) and time.monotonic() < gone:
                time.sleep(0.02)  # it closed the connection: dying (its fds go before it is a zombie)?
            if reply is None and not keeper_alive(backend, record):
                if not state_exists(port):  # it ended the park meanwhile (a signal, its timer)
                    raise ParkError(":%d was resumed or ended meanwhile, by its keeper" % port, fix="park list")
                break  # it died just now: resume without it
            if reply is not None and reply.get("ok"):
                reply["pids"] = [p for p in reply.get("pids", []) if any(h["pid"] == p for h in record["holders"])]
            if reply is None or not reply.get("busy"):
                line.clear()
                return _print_resumed(record, port, reply)
            if time.monotonic() >= deadline:
                if wait:
                    raise _timed_out(backend, record, wait)
                return _print_resumed(record, port, reply)
            line.show(backend)
            time.sleep(0.1)
        # No keeper holds it: the process runs without its listener (its keeper died, or a signal ended the park
        # while the port was taken). Recreate the listener here.
        with PortLock(port):
            record = read_state(port)  # re-read under the lock
            recheck(backend, record)
            plan, notes = _live_plan(backend, record)
            result = _resume_plan(backend, record, plan, args.force, wait, line)
    finally:
        line.clear()
    return _print_resumed(record, port, {"ok": True, "notes": notes, "held": result["held"],
                                         "pids": [h["pid"] for l in plan for h in l["holders"]],
                                         "addresses": addresses(plan)})


def _already_listening(backend, port):
    """`park resume PORT` of a port that is listening and not parked: fine (exit 0) when it is the process
    park last resumed there (its keeper's log says which), a one-line error otherwise."""
    pids = sorted({p for l in backend.listeners(port) for p in l["holders"]})
    last = []
    try:
        for line in keepers_dir().read("%d.log" % port).decode("utf-8", "replace").splitlines():
            if " resumed pid " in line:
                last = [int(p) for p in line.split(" resumed pid ", 1)[1].split(",") if p.strip().isdigit()]
    except (OSError, ParkError):
        pass
    what = _holders_text(backend, port)
    if last and set(last) <= set(pids):
        out(":%d is already listening: %s (park resumed it)" % (port, what))
        return EXIT_OK
    raise ParkError(":%d is already listening, by %s, which park did not park" % (port, what),
                    fix="park list  (shows what is parked); park %d parks it" % port)


def _resume_once(backend, record, plan, force, given=None, tracer=None):
    """One attempt to recreate the listeners (or hand over `given` sockets) and forget the state. tracer: the
    keeper's, which holds the processes. Raises PortBusy while the port is in use."""
    port = record["port"]
    kw = {"tracer": tracer} if tracer is not None else {}
    journal = open_journal(backend, port)
    if journal is not None:
        kw["journal"] = journal
        if tracer is None:
            kw["recover"] = read_journal(port, backend.JOURNAL_REGS)  # a park or resume killed halfway: undone first
    try:
        with Critical():
            result = backend.resume(plan, force=force, suspend_seccomp=bool(record.get("seccomp")), given=given,
                                    **kw)
            remove_state(record)
        return result
    except backend.Error as e:
        if e.errno != EADDRINUSE or given is not None:
            raise _from_backend(backend, e, port, "resume")
        why = getattr(e, "time_wait", None)
    finally:
        _close_fd(journal)
    # No listener, yet the address is in use: TIME_WAIT entries that the backend could not clear (that needs
    # root, and Linux 6.0) and that a listener without SO_REUSEADDR cannot bind over.
    tw = [t for l in plan for t in backend.time_wait(l)]
    if tw:
        message, fix = time_wait_refusal(len(tw), port, _pids(record), why, os.geteuid() == 0,
                                         os.uname().release if sys.platform.startswith("linux") else None)
        raise PortBusy(message, fix, "%d TIME_WAIT connection(s)" % len(tw))
    raise _busy(backend, record)


def _resume_plan(backend, record, plan, force, wait, line):
    """_resume_once, retried every 0.1 s while the port is in use, for up to `wait` seconds (shown on `line`)."""
    import time
    deadline = time.monotonic() + wait
    while True:
        if not _others_listening(backend, record):
            try:
                return _resume_once(backend, record, plan, force)
            except PortBusy:
                if time.monotonic() >= deadline:
                    if wait:
                        raise _timed_out(backend, record, wait)
                    raise
        elif time.monotonic() >= deadline:
            if wait:
                raise _timed_out(backend, record, wait)
            raise _busy(backend, record)
        line.show(backend)
        time.sleep(0.1)


def _others_listening(backend, record):
    """The listeners on the record's port, but (when a killed park or resume left a journal) those that only
    its own processes hold: a listener it had not closed yet, or one it had half made, which resume undoes."""
    found = backend.listeners(record["port"])
    if found and journal_left(record["port"]):
        mine = {h["pid"] for h in record["holders"]}
        found = [l for l in found if not set(l["holders"]) <= mine]
    return found


def _live_plan(backend, record):
    """The recorded plan without holders that are gone; refuses when none is left or one was taken over."""
    alive, notes = set(), []
    for h in record["holders"]:
        info = backend.process(h["pid"])
        if info is None or (info["start"] == h["starttime"] and recorded(backend, h) is None):
            notes.append("note: pid %d has exited; resuming the others" % h["pid"])
        elif info["start"] != h["starttime"]:
            notes.append("note: pid %d is now a different process (%s); left alone" % (h["pid"], command_of(info)))
        else:
            alive.add(h["pid"])
    if not alive:
        reason = " ".join(n[6:] for n in notes)
        raise ParkError("cannot resume :%d: %s" % (record["port"], reason.replace("; resuming the others", "")),
                        fix="park list --prune  (forgets it)")
    plan = []
    for l in record["listeners"]:
        l = dict(l)
        l["holders"] = [h for h in l["holders"] if h["pid"] in alive]
        if l["holders"]:
            plan.append(l)
    return plan, notes


def cmd_swap(args):
    backend = load_backend()
    p1, p2 = parse_port(args.port1), parse_port(args.port2)
    if p1 == p2:
        raise ParkError("swap needs two different ports", fix="park swap 3000 3001", code=EXIT_USAGE)
    with PortLock(min(p1, p2)), PortLock(max(p1, p2)):
        records = [_prepare(backend, p, args.force) for p in (p1, p2)]
        for record, _, _ in records:  # as for park: a record on disk while the processes are changed
            record["swapping"] = True
            write_state(record)
        try:
            with Critical():
                result = backend.swap(records[0][1], records[1][1],
                                      suspend_seccomp=records[0][2] or records[1][2])
                for record, _, _ in records:
                    remove_state(record)
        except backend.Error as e:
            if not e.parked:
                for record, _, _ in records:
                    remove_state(record)
            raise _from_backend(backend, e, p1, "swap")
        except BaseException:
            for record, _, _ in records:
                remove_state(record)
            raise
    debug("threads held by ptrace %.2f ms" % (result["held"] * 1000))
    out("swapped :%d and :%d" % (p1, p2))
    for (record, plan, _), new in zip(records, (p2, p1)):
        for line in process_lines("  now on :%d  pid %%s  " % new, record["holders"]):
            out(line)
    return EXIT_OK


def cmd_release(args):
    import signal
    backend = load_backend()
    record = find_record(args.target, backend, "release")
    port = record["port"]
    sig = signal.SIGKILL if args.force else signal.SIGTERM if args.kill else None
    with PortLock(port):
        by_keeper = held_by_keeper(backend, record)
        live = [h for h in record["holders"] if holder_status(backend, h, by_keeper) != "gone"]
        if by_keeper:
            reply = _ask_keeper(port, {"op": "release", "signal": sig}, by_keeper)
            if reply is None or not reply.get("ok"):
                raise ParkError("the keeper of :%d did not let go of it" % port,
                                fix="park list; then kill %d" % record["keeper"]["pid"])
            live = [h for h in live if h["pid"] in reply.get("pids", [])]  # the keeper's own, not the file's
        else:
            if live and journal_left(port) and sig != signal.SIGKILL:
                # Continued as it is, a thread could run with an injected call's registers.
                raise ParkError("the keeper of :%d was killed while it changed pid %s; letting it go as it was "
                                "left is not safe" % (port, _pids(record)),
                                fix="park resume %d  (undoes what was left and brings the listener back)" % port)
            if live:
                recheck(backend, record)
            unhold = getattr(backend, "release", None)  # macOS: park's thread_suspend holds outlive the keeper
            if unhold is not None:
                try:
                    unhold([h["pid"] for h in live])
                except backend.Error as e:
                    raise ParkError(str(e), fix=e.fix)
        done = []
        for h in live:
            try:
                if sig is not None:
                    if not by_keeper:  # the keeper sent it already, before it let them go
                        os.kill(h["pid"], sig)
                    if sig != signal.SIGKILL:
                        os.kill(h["pid"], signal.SIGCONT)  # handled at once, also if job control stopped it
            except ProcessLookupError:
                continue
            except PermissionError:
                raise ParkError("no permission to signal pid %d" % h["pid"], fix="sudo park release %d" % port)
            done.append(h)
        remove_state(record)
        if sig is None and done:
            write_released(record, done)  # so that park list still shows it, as released, with how to end it
    verb = {None: "continued", signal.SIGTERM: "sent SIGTERM to", signal.SIGKILL: "killed"}[sig]
    for line in process_lines("%s pid %%s  " % verb, done):
        out(line)
    if sig is None and done:
        out("  its listener on :%d is not recreated: it runs on without it; end it with: kill %s (or restart the "
            "server to serve again)\n  park list shows it as released while it runs, for up to %d minutes"
            % (port, " ".join(str(h["pid"]) for h in done), RELEASED_SECONDS // 60))
    if not done:
        out("forgot :%d (its processes were already gone)" % port)
    return EXIT_OK


def list_rows(backend, prune=False, errors=None):
    """One dict per parked port, as `list --json` prints it (and `park ui` shows it)."""
    import time
    rows = []
    now = time.time()
    for r in all_states(errors):
        status, states = record_status(backend, r)
        if prune and status == "gone":
            remove_state(r)
            continue
        timer, hold, ended = r.get("timer"), r.get("hold"), r.get("ended")
        keeper = None if ended else keeper_alive(backend, r)
        rows.append({
            "port": r["port"],
            "pids": [h["pid"] for h in r["holders"]],
            "status": status,
            "holders": [{"pid": h["pid"], "status": s, "command": command_of(h), "name": h["name"],
                         "argv": h["argv"]}
                        for h, s in zip(r["holders"], states)],
            "addresses": addresses(r["listeners"]),
            "command": command_of(r["holders"][0]),
            "argv": r["holders"][0]["argv"],
            "parked_at": r["parked_at"],
            "parked_for": round(now - r["parked_at"], 1),
            "keeper": keeper,
            "timer_left": round(max(0.0, timer["until"] - now), 1) if timer and keeper else None,
            "pending": (timer or {}).get("pending") if keeper else None,
            "waiting": hold_waiting(backend, hold) if keeper else None,
            "ended": ended["reason"] if ended else None if keeper or status == "gone" else _why_running(r),
            "restored": bool(ended and ended.get("listener")),
            "released_at": None,
        })
    for let_go, live in released(backend):
        pids = [h["pid"] for h in live]
        rows.append({
            "port": let_go["port"], "pids": pids, "status": "released",
            "holders": [{"pid": h["pid"], "status": "released", "command": command_of(h), "name": h["name"],
                         "argv": h["argv"]} for h in live],
            "addresses": let_go["addresses"], "command": command_of(live[0]), "argv": live[0]["argv"],
            "parked_at": let_go["parked_at"], "parked_for": round(now - let_go["parked_at"], 1), "keeper": None,
            "timer_left": None, "pending": None, "waiting": None,
            "ended": "released %s ago; it runs without its port (end it with: kill %s)"
                     % (format_duration(now - let_go["released_at"]), " ".join(map(str, pids))),
            "restored": False, "released_at": let_go["released_at"],
        })
    return sorted(rows, key=lambda r: (r["port"], r["status"] == "released"))


def cmd_overview(args):
    """`park` with no arguments: one table of what is parked and of what is listening that park could park."""
    backend = load_backend()
    errors = []
    states = all_states(errors)
    rows = list_rows(backend, errors=[])
    listening = listening_rows(backend, rows, states)
    if not rows and not listening:
        out("nothing is parked, and no server of yours that park could park is listening")
        _hint_held_by_root(backend)
    else:
        table = [("PORT", "PID", "STATUS", "KEEPER", "COMMAND")]
        table += [(":%d" % r["port"], r["pids"], r["status"], str(r["keeper"] or "-"), r["holders"])
                  for r in rows]
        table += [(":%d" % l["port"], l["pids"], "listening", "-", l["holders"]) for l in listening]
        for line, row in zip(_columns(table), [None] + rows + [None] * len(listening)):
            out(line)
            if row and row["status"] == "released":
                out("    %s" % row["ended"])
        out("park PORT parks one; park resume PORT brings one back; park help for more")
    if errors:
        raise errors[0]
    return EXIT_OK


def _hint_held_by_root(backend):
    """A user with nothing parked is told of their processes that a park run as root holds."""
    if os.geteuid() != 0:
        for pid, keeper in _held_by_root(backend)[:1]:
            out("  pid %d of yours is held by a park run as root (keeper pid %d): sudo park list" % (pid, keeper))


def cmd_list(args):
    backend = load_backend()
    errors = []
    rows = list_rows(backend, args.prune, errors)
    if args.json:
        import json
        out(json.dumps(rows, indent=1))
    elif not rows and not errors:
        out("nothing is parked")
        _hint_held_by_root(backend)
    elif rows:
        _print_table(rows)
    if errors:  # the other ports were listed; the damaged file is the one error
        raise errors[0]
    return EXIT_OK


def _columns(table):
    """Rows of a table as lines, every column but the last as wide as its widest cell. After the header, a
    row's second cell is its pids and its last its holders, shown as their command (group_text), fitted
    to the terminal's width; many pids on a terminal are shortened to the first and how many more."""
    width = terminal_width()
    rows = [table[0]]
    for r in table[1:]:
        pids = ",".join(map(str, r[1]))
        if width is not None and len(pids) > 13:
            pids = "%d+%d" % (r[1][0], len(r[1]) - 1)
        rows.append((r[0], pids) + tuple(r[2:]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for n, r in enumerate(rows):
        head = "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  "
        if n == 0:
            lines.append(head + r[-1])
            continue
        lines.append(head + holders_command(r[-1], None if width is None else width - len(head)))
    return lines


def _print_table(rows):
    table = [("PORT", "PID", "ADDRESS", "FOR", "STATUS", "KEEPER", "COMMAND")]
    for row in rows:
        table.append((":%d" % row["port"], row["pids"], ",".join(row["addresses"]),
                      format_duration(row["parked_for"]), row["status"], str(row["keeper"] or "-"),
                      row["holders"]))
    for line, row in zip(_columns(table), [None] + rows):
        out(line)
        if row and row["pending"]:
            out("    timer: %s" % row["pending"])
        elif row and row["timer_left"] is not None:
            out("    timer: resumes in %s" % format_duration(row["timer_left"]))
        if row and row["waiting"] is not None:
            out("    hold: %d client(s) waiting" % row["waiting"])
        if row and row["ended"]:
            if row["status"] == "released":
                out("    %s" % row["ended"])
            elif row["status"] == "gone" or row["restored"]:
                out("    ended: %s%s" % (row["ended"], ", and its listener is back" if row["restored"] else ""))
            else:
                out("    runs without its listener: %s; park resume %d brings it back" % (row["ended"], row["port"]))


# ---------------------------------------------------------------------------------------------------------
# park ui: a live dashboard of what is parked and what could be (curses is imported only here)

_UI_FOOTER = "\u2191\u2193/jk select  r resume  x release  K kill  p park  q quit"
_UI_PARKED_HEAD = "%-6s  %-11s %6s %6s %5s  "  # port, pids, parked for, timer left, clients waiting
_UI_PARKED = _UI_PARKED_HEAD + "%-8s %s"  # ... status, command
_UI_LISTENING = "%-6s  %-11s %s"
_UI_TICK_MS = 200  # how long getch waits for a key; the data is re-read once a second


def cmd_ui(args):
    """Full-screen view of list_rows() and of the servers that could be parked; keys act through main()."""
    try:
        import curses
    except ImportError:
        raise ParkError("park ui needs the curses module, which this Python does not have",
                        fix="use park list (or a python3 with curses)")
    for what, stream in (("output", sys.stdout), ("input", sys.stdin)):
        try:
            tty = stream is not None and os.isatty(stream.fileno())
        except (AttributeError, OSError, ValueError):  # a StringIO (main() called from code) has no fileno
            tty = False
        if not tty:
            raise ParkError("park ui needs a terminal, and its %s is not one" % what,
                            fix="run it in a terminal, or use park list")
    backend = load_backend()
    st = {"backend": backend, "items": [], "parked": 0, "listening": 0, "sel": None, "pick": None, "near": 0, "top": 0,
          "status": "", "stale": None, "confirm": None, "loaded": None, "attrs": {}}
    try:
        scr = curses.initscr()
    except curses.error as e:  # e.g. an unknown TERM: setupterm fails before anything is drawn
        raise ParkError("park ui cannot drive this terminal (TERM=%s): %s" % (os.environ.get("TERM", ""), e),
                        fix="TERM=xterm-256color park ui, or use park list")
    try:
        curses.noecho()
        curses.cbreak()
        scr.keypad(True)
        try:
            curses.curs_set(0)
        except curses.error:
            pass
        st["attrs"] = _ui_attrs(curses)
        scr.timeout(_UI_TICK_MS)
        return _ui_loop(curses, scr, st)
    finally:
        try:
            scr.keypad(False)
            curses.nocbreak()
            curses.echo()
        except curses.error:
            pass
        curses.endwin()


def _ui_attrs(curses):
    """Attributes per status: bold and reverse always, colour only on a colour terminal without NO_COLOR."""
    attrs = {"title": curses.A_BOLD, "selected": curses.A_REVERSE, "error": curses.A_BOLD, "ask": curses.A_BOLD}
    if os.environ.get("NO_COLOR") or not curses.has_colors():
        return attrs
    try:
        curses.start_color()
        try:
            curses.use_default_colors()
            bg = -1
        except curses.error:
            bg = curses.COLOR_BLACK
        for n, (name, fg) in enumerate((("parked", curses.COLOR_YELLOW), ("running", curses.COLOR_GREEN),
                                        ("gone", curses.COLOR_RED), ("pending", curses.COLOR_MAGENTA)), 1):
            curses.init_pair(n, fg, bg)
            attrs[name] = curses.color_pair(n)
        attrs["error"] = curses.A_BOLD | attrs["gone"]
    except curses.error:
        pass
    return attrs


def _ui_loop(curses, scr, st):
    import time
    quick = 0
    while True:
        if st["loaded"] is None or time.monotonic() - st["loaded"] >= 1.0:
            _ui_refresh(st)
        if _ui_fit_size(curses, scr):
            scr.clear()
        _ui_draw_safely(curses, scr, st)
        asked = time.monotonic()
        try:
            key = scr.getch()
        except curses.error:
            key = -1
        if key == -1:
            # No key long before the timeout, again and again: the terminal is gone (its input is at EOF).
            quick = quick + 1 if time.monotonic() - asked < _UI_TICK_MS / 4000.0 else 0
            if quick >= 10:
                return EXIT_FAIL
            continue
        quick = 0
        if key == curses.KEY_RESIZE:
            _ui_fit_size(curses, scr)
            scr.clear()  # repaint everything at the new size
            continue
        if st["confirm"] is not None:
            port, pids, holders = st["confirm"]
            st["confirm"] = None
            if key in (ord("y"), ord("Y")):
                _ui_act(curses, scr, st, ["release", str(port), "--kill"], "killing %s" % pids)
            else:
                st["status"] = "not killed: %s (%s)" % (pids, holders_command(holders))
            continue
        if key in (ord("q"), ord("Q")):
            return EXIT_OK
        try:
            _ui_key(curses, scr, st, key)
        except Exception as e:  # the dashboard never dies on a key; the reason goes to the status line
            st["status"] = "park: %s" % (e if isinstance(e, ParkError) else "%s: %s" % (type(e).__name__, e))


def _ui_key(curses, scr, st, key):
    """One key press: move the selection, or act on the selected entry."""
    items = st["items"]
    moves = {curses.KEY_UP: -1, ord("k"): -1, curses.KEY_DOWN: 1, ord("j"): 1,
             curses.KEY_PPAGE: -10, curses.KEY_NPAGE: 10, curses.KEY_HOME: -len(items) - 1,
             curses.KEY_END: len(items) + 1}
    if key in moves:
        if items:
            at = st["near"] if st["sel"] is None else st["sel"] + moves[key]  # after a lost row: from where it was
            st["sel"] = max(0, min(len(items) - 1, at))
            st["pick"] = _ui_identity(items[st["sel"]])
        return
    if key not in (ord("r"), ord("x"), ord("K"), ord("p")):
        return
    if not items:
        st["status"] = "nothing to act on"
        return
    if st["sel"] is None:
        st["status"] = "nothing is selected (the row you had went away); \u2191\u2193 or j/k selects one"
        return
    kind, d = items[st["sel"]]
    port = d["port"]
    if d.get("status") == "released":
        st["status"] = "pid %s was released: it runs without its port; end it with: kill %s" % (
            ",".join(map(str, d["pids"])), " ".join(map(str, d["pids"])))
        return
    if key == ord("p"):
        if kind != "listening":
            st["status"] = ":%d is already parked (r resumes it)" % port
            return
        _ui_act(curses, scr, st, ["park", str(port)], "parking :%d" % port)
        return
    if kind != "parked":
        st["status"] = ":%d is not parked (p parks it)" % port
        return
    if key == ord("r"):
        _ui_act(curses, scr, st, ["resume", str(port)], "resuming :%d" % port)
    elif key == ord("x"):
        _ui_act(curses, scr, st, ["release", str(port)], "releasing :%d" % port)
    else:
        pids = [h["pid"] for h in d["holders"] if h["status"] != "gone"] or d["pids"]
        st["confirm"] = (port, "pid%s %s" % ("s" if len(pids) > 1 else "", ", ".join(map(str, pids))),
                         [h for h in d["holders"] if h["pid"] in pids])


def _ui_act(curses, scr, st, argv, doing):
    """Run park's own main(argv) in this process, its output captured: the first line it printed goes to the
    status line, or, when it failed, its error and the fix, whole."""
    import contextlib
    import io
    st["status"] = doing + " ..."
    _ui_draw_safely(curses, scr, st)
    out_, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out_), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else EXIT_FAIL
    except Exception as e:  # main() re-raises only under PARK_DEBUG
        rc, err = EXIT_FAIL, io.StringIO("park: unexpected error: %s: %s\n" % (type(e).__name__, e))
    text = err.getvalue() if rc else out_.getvalue() or err.getvalue()
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if rc and lines:
        st["status"] = "\n".join(l if l.startswith("park: ") else "  " + l for l in lines)
    else:
        st["status"] = lines[0] if lines else ("park %s: done" % " ".join(argv) if rc == 0
                                               else "park: park %s failed (exit %s)" % (" ".join(argv), rc))
    _ui_refresh(st)


def _ui_identity(item):
    """Which server a row is: its port and its processes (a server keeps them from parked to listening)."""
    return item[1]["port"], frozenset(item[1]["pids"])


def _ui_refresh(st):
    """Re-read the parked entries and the listening servers; a failure keeps the old view and is shown. The
    selection stays on the same server (port and pids), wherever it now is; when that server is gone nothing
    is selected, so that the next key never acts on someone else's server that moved up into its place."""
    import time
    st["loaded"] = time.monotonic()
    backend = st["backend"]
    try:
        errors = []
        states = all_states(errors)
        rows = list_rows(backend, errors=[])
        listening = listening_rows(backend, rows, states)
    except Exception as e:  # shown until a refresh succeeds again
        st["status"] = st["stale"] = "park: %s" % (e if isinstance(e, ParkError) else "cannot read the state: "
                                                  "%s: %s" % (type(e).__name__, e))
        if isinstance(e, ParkError) and e.fix:
            st["status"] = st["stale"] = "%s\n  fix: %s" % (st["status"], e.fix)
        return
    if st["status"] == st["stale"]:
        st["status"] = ""
    st["stale"] = None
    if errors:  # a damaged state file: the other ports are shown, the file is named on the status line
        st["status"] = st["stale"] = "park: %s" % errors[0] + ("\n  fix: %s" % errors[0].fix if errors[0].fix else "")
    items = [("parked", r) for r in rows] + [("listening", l) for l in listening]
    if st["pick"] is not None:
        port, pids = st["pick"]
        same = [n for n, i in enumerate(items) if i[1]["port"] == port and pids & set(i[1]["pids"])]
        if same:
            st["sel"] = same[0]
            st["pick"] = _ui_identity(items[same[0]])
        else:
            st["near"] = st["sel"] or 0
            st["sel"] = st["pick"] = None
            st["lost"] = True
    elif items and not st.get("lost"):  # the first look: the first row
        st["sel"], st["pick"] = 0, _ui_identity(items[0])
    if st["sel"] is not None and st["sel"] >= len(items):
        st["sel"] = st["pick"] = None
    st["items"], st["parked"], st["listening"] = items, len(rows), len(listening)


def listening_rows(backend, rows, states):
    """The user's listening TCP servers that park could park: [{port, pids, command}], by port (for `park`
    with no arguments and for park ui)."""
    me = os.geteuid()
    skip = {p for r in rows for p in r["pids"]}
    for r in states:
        hold = r.get("hold") or {}
        if hold.get("pid"):
            skip.add(hold["pid"])  # the listener that holds clients for a parked server is park's own
    found = []
    for port, pids in sorted(backend.ports_listening().items()):
        pids = [p for p in pids if p not in skip]
        infos = [backend.process(p) for p in pids]
        if not pids or any(i is None or (me != 0 and i["uid"] != me) or refusal(i, port, me, False)
                           for i in infos):
            continue
        found.append({"port": port, "pids": pids, "command": command_of(infos[0]),
                      "holders": [{"pid": i["pid"], "name": i["name"], "argv": i["argv"]} for i in infos]})
    return found


def _ui_pids(pids, width):
    text = ",".join(map(str, pids))
    return text if len(text) <= width else "%d+%d" % (pids[0], len(pids) - 1)


def _ui_lines(st, width):
    """The body as [(segments, item index or None)], each segment (text, attribute name or None); each command
    fitted into what is left of `width` after the marker and the other columns."""
    a = st["attrs"]
    lines = [([("PARKED", "title")], None),
             ([(_UI_PARKED % ("PORT", "PID", "FOR", "LEFT", "WAIT", "STATUS", "COMMAND"), None)], None)]
    n = 0
    for kind, d in st["items"]:
        if kind != "parked":
            continue
        status = "pending" if d.get("pending") else d["status"]
        left = format_duration(d["timer_left"]) if d.get("timer_left") is not None else "-"
        waiting = str(d["waiting"]) if d.get("waiting") is not None else "-"
        head = _UI_PARKED_HEAD % (":%d" % d["port"], _ui_pids(d["pids"], 11), format_duration(d["parked_for"]),
                                   left, waiting)
        room = width - 2 - len(head) - 9
        lines.append(([(head, None), ("%-8s" % status, status if status in a else None),
                       (" " + holders_command(d["holders"], room), None)], n))
        if d.get("pending"):
            lines.append(([("         pending: %s" % d["pending"], "pending")], None))
        n += 1
    if not st["parked"]:
        lines.append(([("  nothing is parked", None)], None))
    lines.append(([("", None)], None))
    lines.append(([("LISTENING", "title")], None))
    lines.append(([(_UI_LISTENING % ("PORT", "PID", "COMMAND"), None)], None))
    for kind, d in st["items"]:
        if kind == "listening":
            head = _UI_LISTENING % (":%d" % d["port"], _ui_pids(d["pids"], 11), "")
            lines.append(([(head + holders_command(d["holders"], width - 2 - len(head)), None)], n))
            n += 1
    if not st["listening"]:
        lines.append(([("  no server of yours that park could park is listening", None)], None))
    return lines


def _ui_draw_safely(curses, scr, st):
    """Draw; whatever goes wrong ends up on the status line, never as a crash."""
    try:
        _ui_draw(curses, scr, st)
    except Exception as e:
        st["status"] = "park: cannot draw: %s: %s" % (type(e).__name__, e)
        try:
            rows, cols = scr.getmaxyx()
            scr.erase()
            _ui_put(scr, rows - 1, 0, st["status"], cols - 1, 0)
            scr.refresh()
        except Exception:
            pass


def _ui_draw(curses, scr, st):
    rows, cols = scr.getmaxyx()
    width = cols - 1  # never the last column: writing the bottom-right cell scrolls or fails
    a = st["attrs"]
    scr.erase()
    _ui_put(scr, 0, 0, "park ui \u2014 %d parked, %d listening \u2014 q quit" % (st["parked"], st["listening"]),
            width, a["title"])
    status = [""]
    if rows >= 3:
        ask = st["confirm"] is not None
        if ask:  # the question always fits: the command is what gets cut
            _, pids, holders = st["confirm"]
            status = ["kill %s (%s)? y/n" % (pids, holders_command(holders, width - len("kill %s ()? y/n" % pids)))]
        else:
            # An error and its fix, whole: wrapped over as many lines above the footer as they need (the body
            # gives up its rows), never cut at the screen's edge.
            import textwrap
            status = [w for line in (st["status"] or "").split("\n")
                      for w in textwrap.wrap(line, max(10, width), subsequent_indent="    ") or [""]] or [""]
            status = status[-max(1, rows - 3):]
        attr = a["ask"] if ask else a["error"] if st["status"].startswith("park: ") else 0
        for i, line in enumerate(status):
            _ui_put(scr, rows - 1 - len(status) + i, 0, line, width, attr)
    if rows >= 2:
        _ui_put(scr, rows - 1, 0, _UI_FOOTER, width, 0)
    body = rows - 2 - len(status)
    if body > 0:
        lines = _ui_lines(st, width)
        at = [i for i, (_, n) in enumerate(lines) if n is not None and n == st["sel"]]
        top = min(st["top"], max(0, len(lines) - body))
        if at:
            top = min(max(top, at[0] - body + 1), at[0])
        st["top"] = top
        for y, (segments, n) in enumerate(lines[top:top + body], 1):
            selected = n is not None and n == st["sel"]
            x = _ui_put(scr, y, 0, ">" if selected else " ", width, a["selected"] if selected else 0)
            x = _ui_put(scr, y, x, " ", width, a["selected"] if selected else 0)
            for text, name in segments:
                attr = a.get(name, 0) if name else 0
                x = _ui_put(scr, y, x, text, width, attr | (a["selected"] if selected else 0))
    scr.refresh()


def _ui_put(scr, y, x, text, width, attr):
    """Write text at (y, x), cut to end before column `width`; returns the next column. Never raises curses.error."""
    import curses
    import unicodedata
    room = width - x
    if room <= 0 or y < 0:
        return x
    out, used = [], 0
    for ch in text:
        if ch < " " or "\x7f" <= ch < "\xa0":
            ch = "?"  # control characters in an argv must not move the cursor
        w = 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
        if used + w > room:
            break
        out.append(ch)
        used += w
    s = "".join(out)
    try:
        try:
            scr.addstr(y, x, s, attr)
        except UnicodeEncodeError:  # a terminal encoding without the dash or the arrows
            s = s.replace("\u2014", "-").replace("\u2191\u2193", "Up/Dn").encode("ascii", "replace").decode()
            scr.addstr(y, x, s[:room], attr)
    except curses.error:  # a cell off the screen while the terminal shrinks; the next draw fixes it
        pass
    return x + used


def _ui_fit_size(curses, scr):
    """Follow the terminal's size (also when a SIGWINCH was missed); True when it changed."""
    try:
        size = os.get_terminal_size(sys.__stdout__.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    if (size.lines, size.columns) == scr.getmaxyx() or size.lines < 1 or size.columns < 1:
        return False
    try:
        curses.resizeterm(size.lines, size.columns)
    except curses.error:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------
# Command line

COMMANDS = ("resume", "list", "release", "swap", "ui", "help")

USAGE = """park PORT [--for DURATION] [--hold] [--force]
                                         pause the server(s) on PORT and free the port
       park PORT -- COMMAND [ARGS...]     free PORT while COMMAND runs, then resume
       park resume PORT|PID [--wait [S]]  bring them back, listening on PORT again
       park list [--json] [--prune]       what is parked
       park swap PORT1 PORT2              swap which server listens on which port
       park release PORT|PID [--kill [--force]]
                                         continue without the listener, or end it
       park ui                            live dashboard: resume, release, kill or park with one key"""

EPILOG = """exit codes: 0 ok, 1 failed (the target is left as it was), 2 usage error, 130 interrupted.
state: $PARK_HOME or ~/.park"""


def build_parser(only=None):
    """The command line parser; with only, just that command's subparser ("": none), since building all of
    them took ~5 ms of every run."""
    import argparse

    def wanted(name):
        return only is None or only == name

    class Parser(argparse.ArgumentParser):
        """Usage errors as park's one line and fix (exit 2), never argparse's usage dump."""

        def error(self, message):
            command = self.prog.split()[1] if len(self.prog.split()) > 1 else None
            usage = (self.usage or "").split("\n")[0].strip()
            raise ParkError(message, fix="%s  (park help%s)" % (usage, " " + command if command else ""),
                            code=EXIT_USAGE)

    p = Parser(prog="park", usage=USAGE, epilog=EPILOG,
                                description="Ctrl+Z for servers: pause a server and free its port; resume it "
                                            "later as the same process.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version="park " + __version__)
    sub = p.add_subparsers(dest="command", metavar="{resume,list,release,swap,ui,help}")
    if wanted("park"):
        pk = _park_parser(sub)
        if only is None:  # `park --help` explains the options of `park PORT` too (the command most people run)
            import textwrap
            explained = []
            for a in pk._actions:
                if a.option_strings and a.help != argparse.SUPPRESS and a.dest != "help":
                    name = a.option_strings[0] + (" " + a.metavar if a.metavar else "")
                    explained += textwrap.wrap(a.help, 79, initial_indent="  %-17s " % name,
                                               subsequent_indent=" " * 20)
            p.epilog = "options of park PORT:\n%s\n\n%s" % ("\n".join(explained), EPILOG)
    if wanted("resume"):
        r = sub.add_parser("resume", prog="park resume", help="bring parked processes back",
                           usage="park resume PORT|PID [PORT|PID...] [--wait [SECONDS]] [--force]")
        r.add_argument("target", metavar="PORT|PID", nargs="+")
        r.add_argument("--wait", nargs="?", type=_wait_seconds, const=60.0, default=0.0, metavar="SECONDS",
                       help="wait while the port is in use by someone else (default 60 s)")
        r.add_argument("--force", action="store_true", help="skip socket options that cannot be restored")
    if wanted("list"):
        ls = sub.add_parser("list", prog="park list", help="show what is parked",
                            usage="park list [--json] [--prune]")
        ls.add_argument("--json", action="store_true", help="a JSON list of objects, for scripts")
        ls.add_argument("--prune", action="store_true", help="forget entries whose processes are gone")
    if wanted("swap"):
        sw = sub.add_parser("swap", prog="park swap", help="swap the servers on two ports",
                            usage="park swap PORT1 PORT2 [--force]")
        sw.add_argument("port1", metavar="PORT1")
        sw.add_argument("port2", metavar="PORT2")
        sw.add_argument("--force", action="store_true", help="as for park")
    if wanted("release"):
        rl = sub.add_parser("release", prog="park release",
                            help="continue without the listener, or end the process",
                            usage="park release PORT|PID [--kill [--force]]")
        rl.add_argument("target", metavar="PORT|PID")
        rl.add_argument("--kill", action="store_true", help="send SIGTERM (delivered although it was stopped)")
        rl.add_argument("--force", action="store_true", help="with --kill: SIGKILL")
    if wanted("ui"):
        sub.add_parser("ui", prog="park ui", help="live dashboard of parked and listening servers", usage="park ui")
    if wanted("help"):
        hp = sub.add_parser("help", prog="park help", help="this help, or a command's", usage="park help [COMMAND]")
        hp.add_argument("topic", nargs="?", metavar="COMMAND")
    return p


def _park_parser(sub):
    """`park PORT`'s subparser."""
    import argparse
    pk = sub.add_parser("park", prog="park",
                        usage="park PORT [PORT...] [--for DURATION] [--hold] [--force] [-- COMMAND [ARGS...]]",
                        description="Pause every process holding a TCP listener on PORT and free the port. The "
                                    "processes are held by park's keeper (never stopped by a signal) until "
                                    "park resume. With -- COMMAND, park runs COMMAND in the foreground while the "
                                    "port is free and resumes the server when it ends, however it ends.")
    pk.add_argument("port", nargs="+", help="PORT or :PORT (several: each is parked on its own)")
    pk.add_argument("--force", action="store_true",
                    help="park even when a socket option cannot be restored (it is skipped at resume), a "
                         "seccomp filter is present, or the process uses io_uring")
    pk.add_argument("--for", dest="for_", metavar="DURATION",
                    help="resume by itself after DURATION (30s, 5m, 1h30m, or seconds), retrying while the "
                         "port is taken")
    pk.add_argument("--hold", action="store_true",
                    help="keep the port open meanwhile, so clients wait instead of being refused; this stays "
                         "in the foreground, and Ctrl+C (or park resume) hands the waiting clients over")
    pk.add_argument("--drain", type=float, default=2.0, metavar="S", help=argparse.SUPPRESS)
    return pk


def _subparser(parser, name):
    """The parser of one command (or, with None, all of them by name)."""
    import argparse
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)][0].choices
    return subs if name is None else subs[name]


def _help(parser, topic):
    """park help [COMMAND]: the main help, or one command's."""
    if topic is None:
        parser.print_help()
        return EXIT_OK
    name = "park" if topic in ("park", "PORT") else topic
    subs = _subparser(parser, None)
    if name not in subs:
        sys.stderr.write("park: no command %r\n  fix: park help  (the commands: %s)\n"
                         % (topic, ", ".join(c for c in subs if c != "help")))
        return EXIT_USAGE
    subs[name].print_help()
    return EXIT_OK


def _open_std_fds():
    """Started with stdin, stdout or stderr closed (some daemons and CI runners do that): /dev/null there, so
    that no state directory or lock gets fd 0-2 (which the keeper points at /dev/null) and output has a home."""
    for n in (0, 1, 2):
        try:
            os.fstat(n)
        except OSError:
            fd = os.open(os.devnull, os.O_RDWR)
            if fd != n:
                os.dup2(fd, n)
                os.close(fd)
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode))


def main(argv=None):
    if sys.version_info < (3, 9):
        sys.stderr.write("park: needs Python 3.9 or newer; this is %d.%d\n  fix: run it with a newer python3 "
                         "(python3.9 park.py ...)\n" % sys.version_info[:2])
        return EXIT_FAIL
    if script_dir() is None and sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # stdin mode: files in the current directory must not shadow the standard library
    if os.environ.get("PARK_DEBUG"):
        import time
        debug("main started at %.6f" % time.time())  # the benchmark measures from here, past interpreter start
    argv = list(sys.argv[1:] if argv is None else argv)
    del NOTES[:]
    _open_std_fds()
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version", "park"):
        argv.insert(0, "park")
    run_argv = None
    if argv and argv[0] == "park" and "--" in argv:  # park PORT [options] -- COMMAND [ARGS...]
        at = argv.index("--")
        argv, run_argv = argv[:at], argv[at + 1:]
        if not run_argv:
            sys.stderr.write("park: nothing to run after --\n  fix: park PORT -- COMMAND [ARGS...]\n")
            return EXIT_USAGE
    first = argv[0] if argv else ""
    parser = build_parser(None if first in ("help", "-h", "--help") else first if first in COMMANDS + ("park",)
                          else "")
    for i, a in enumerate(argv[:-1]):
        if a == "--for" and argv[i + 1].startswith("-"):
            argv[i:i + 2] = ["--for=" + argv[i + 1]]  # so that `--for -5s` is judged as a duration
            break
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            _subparser(parser, args.command or "park").error("unrecognized arguments: %s" % " ".join(extra))
    except SystemExit as e:
        return EXIT_USAGE if e.code else EXIT_OK
    except ParkError as e:
        sys.stderr.write("park: %s\n  fix: %s\n" % (e, e.fix))
        return EXIT_USAGE
    if args.command is None:
        args.command = "overview"
    if args.command == "help":
        return _help(parser, args.topic)
    if args.command == "park":
        args.run = run_argv
        if run_argv and (args.hold or args.for_ is not None):
            sys.stderr.write("park: -- COMMAND goes without --for and --hold (the server resumes when COMMAND "
                             "ends)\n  fix: park PORT -- COMMAND [ARGS...]\n")
            return EXIT_USAGE
    if args.command == "release" and args.force and not args.kill:
        sys.stderr.write("park: --force goes with --kill\n  fix: park release PORT --kill --force\n")
        return EXIT_USAGE
    run = {"overview": cmd_overview, "park": cmd_park, "resume": cmd_resume, "list": cmd_list, "release": cmd_release,
           "swap": cmd_swap, "ui": cmd_ui}[args.command]
    try:
        code = run(args)
        for text in NOTES if code == EXIT_OK else []:
            sys.stderr.write("park: note: %s\n" % text)
        del NOTES[:]
        if DEFERRED:
            sys.stderr.write("park: interrupted; what park was doing to the processes was finished first\n")
            return EXIT_INTERRUPTED
        return code
    except ParkError as e:
        sys.stderr.write("park: %s\n" % safe(str(e)))
        if e.fix:
            sys.stderr.write("  fix: %s\n" % safe(str(e.fix)))
        return e.code
    except BrokenPipeError:  # `park ... | head -1`: the work is done (a timer or hold is the keeper's); stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except KeyboardInterrupt:
        sys.stderr.write("park: interrupted (no process was left half-changed; park list shows what is parked)\n")
        return EXIT_INTERRUPTED
    except Exception as e:  # an unexpected failure still gets one line; PARK_DEBUG=1 shows the traceback
        if os.environ.get("PARK_DEBUG"):
            raise
        sys.stderr.write("park: unexpected error: %s: %s\n" % (type(e).__name__, e))
        sys.stderr.write("  fix: run again with PARK_DEBUG=1 and report the traceback\n")
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
