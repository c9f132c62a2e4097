"""What park's Linux engine (park_linux.py) needs to know about aarch64 (arm64): the registers of a stopped
thread and how ptrace reads and writes them, the system call numbers (the generic table), the `svc #0`
instruction, and the kernel's rules for restarting a call. Everything else is the same on every
architecture and lives in park_linux.py. This module imports only the standard library."""

import ctypes

NAME = "aarch64"

# include/uapi/asm-generic/unistd.h
NR_close = 57
NR_dup3 = 24
NR_socket = 198
NR_bind = 200
NR_listen = 201
NR_setsockopt = 208
NR_fcntl = 25
NR_epoll_ctl = 21
NR_pidfd_open = 434
NR_pidfd_getfd = 438
NR_kcmp = 272
NR_connect = 203
NR_recvmsg = 212
NR_sendmsg = 211
NR_tgkill = 131
NR_getpid = 172
NR_restart_syscall = 128
NR_hang = 73  # ppoll(NULL, 0, NULL, NULL): blocks until a signal (there is no pause here)
EPOLL_WAITS = (22, 441)  # epoll_pwait, epoll_pwait2 (there is no epoll_wait)
RESTARTS = (-512, -513, -514, -516)  # -ERESTARTSYS ... -ERESTART_RESTARTBLOCK, include/linux/errno.h

INSN = b"\x01\x00\x00\xd4"  # svc #0
INSN_ALIGN = 4
RED_ZONE = 0  # AAPCS64 has none
EPOLL_EVENT = "=I4xQ"  # struct epoll_event is not packed here: data is 8-byte aligned
# arch/arm64/kernel/signal.c do_signal: before the ptrace stop, the kernel already moved pc back onto the
# `svc` of a call it restarts and put its first argument back in x0 (and no call is in progress any more),
# so a thread stopped in such a call is about to enter it again with its own registers.
REWOUND = True
CALLEE_SAVED = ("sp",) + tuple("x%d" % i for i in range(19, 30))
# At syscall-entry and exit stops the kernel shows 0 or 1 in x7 and puts the real value back afterwards,
# ignoring writes (arch/arm64/kernel/ptrace.c report_syscall): registers saved at such a stop and written
# at another kind of stop take x7 from the thread as it is then.
CLOBBERED = ("x7",)

PTRACE_GETREGSET = 0x4204  # include/uapi/linux/ptrace.h
PTRACE_SETREGSET = 0x4205
NT_PRSTATUS = 1  # include/uapi/linux/elf.h
NT_ARM_SYSTEM_CALL = 0x404
_MASK = 2 ** 64 - 1


def _signed(v):
    return v - (1 << 64) if v >= 1 << 63 else v


class _iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Regs(ctypes.Structure):
    """struct user_pt_regs (arch/arm64/include/uapi/asm/ptrace.h), then the kernel's syscallno (the
    NT_ARM_SYSTEM_CALL regset): nr, the call the thread is in (-1 outside one; changing it at a
    syscall-entry stop changes the call, x8 does not). ret: x0, the result (and the first argument).
    number: what `svc` takes the call's number from (x8); the engine sets it for an injected call too, so
    called, after a stop that followed one, is that call's number (the kernel's signal code has reset
    syscallno to -1 by then)."""
    _fields_ = [("x%d" % i, ctypes.c_ulonglong) for i in range(31)] + [
        (n, ctypes.c_ulonglong) for n in ("sp", "pc", "pstate", "syscallno")]
    ARGS = ("x0", "x1", "x2", "x3", "x4", "x5")

    nr = property(lambda r: _signed(r.syscallno), lambda r, v: setattr(r, "syscallno", v & _MASK))
    ret = property(lambda r: _signed(r.x0), lambda r, v: setattr(r, "x0", v & _MASK))
    number = property(lambda r: _signed(r.x8), lambda r, v: setattr(r, "x8", v & _MASK))
    called = number

    def copy(self):
        return Regs.from_buffer_copy(self)


_PT_REGS = 34 * 8
assert ctypes.sizeof(Regs) == _PT_REGS + 8


def _regset(ptrace, request, tid, regs):
    base = ctypes.addressof(regs)
    no = ctypes.c_int(_signed(regs.syscallno))
    ptrace(request, tid, NT_PRSTATUS, ctypes.addressof(_iovec(base, _PT_REGS)))
    ptrace(request, tid, NT_ARM_SYSTEM_CALL, ctypes.addressof(_iovec(ctypes.addressof(no), 4)))
    regs.syscallno = no.value & _MASK


def get_regs(ptrace, tid):
    regs = Regs()
    _regset(ptrace, PTRACE_GETREGSET, tid, regs)
    return regs


def set_regs(ptrace, tid, regs):
    _regset(ptrace, PTRACE_SETREGSET, tid, regs)


def native(regs):
    """True for an AArch64 thread (PSR_MODE32_BIT clear in pstate; set for an AArch32 compat task)."""
    return not regs.pstate & 0x10


def interrupted(regs):
    """None: what the x86_64 module keeps here (a call's restart code) the kernel has already applied (REWOUND).
    An epoll_pwait the interrupt ended returns EINTR to the thread, as after a SIGSTOP and SIGCONT: its first
    argument is gone from x0 by then, so it cannot be entered again."""
    return None
