"""What park's Linux engine (park_linux.py) needs to know about x86_64: the registers of a stopped thread and
how ptrace reads and writes them, the system call numbers, the `syscall` instruction, and the kernel's
rules for restarting a call. Everything else is the same on every architecture and lives in park_linux.py.
This module imports only the standard library."""

import ctypes
import errno

NAME = "x86_64"

# arch/x86/entry/syscalls/syscall_64.tbl
NR_close = 3
NR_dup3 = 292
NR_socket = 41
NR_bind = 49
NR_listen = 50
NR_setsockopt = 54
NR_fcntl = 72
NR_epoll_ctl = 233
NR_pidfd_open = 434
NR_pidfd_getfd = 438
NR_kcmp = 312
NR_connect = 42
NR_recvmsg = 47
NR_sendmsg = 46
NR_tgkill = 234
NR_getpid = 39
NR_restart_syscall = 219
NR_hang = 34  # pause: blocks until a signal (a test hook's call that never returns)
EPOLL_WAITS = (232, 281, 441)  # epoll_wait, epoll_pwait, epoll_pwait2
RESTARTS = (-512, -513, -514, -516)  # -ERESTARTSYS ... -ERESTART_RESTARTBLOCK, include/linux/errno.h

INSN = b"\x0f\x05"  # syscall
INSN_ALIGN = 1
RED_ZONE = 128  # bytes below the stack pointer that the interrupted code may use (SysV ABI)
EPOLL_EVENT = "=IQ"  # struct epoll_event is packed on x86_64 (include/uapi/linux/eventpoll.h)
REWOUND = False  # the kernel rewinds a restarted call after the ptrace stop, not before (arch/x86/kernel/signal.c)
CALLEE_SAVED = ("rsp", "rbp", "rbx", "r12", "r13", "r14", "r15")
CLOBBERED = ()  # registers that read wrong at syscall stops: none on x86_64

PTRACE_GETREGS = 12  # include/uapi/linux/ptrace.h (x86 only)
PTRACE_SETREGS = 13
_MASK = 2 ** 64 - 1


def _signed(v):
    return v - (1 << 64) if v >= 1 << 63 else v


class Regs(ctypes.Structure):
    """struct user_regs_struct, arch/x86/include/asm/user_64.h. nr: the call the thread is in (orig_rax, -1
    outside one; changing it at a syscall-entry stop changes the call); ret: its result (rax); number: what
    the `syscall` instruction takes the call's number from (rax); called: after a stop that followed an
    injected call, that call's number (orig_rax stays set)."""
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx", "rsi", "rdi",
        "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs")]
    ARGS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")

    pc = property(lambda r: r.rip, lambda r, v: setattr(r, "rip", v & _MASK))
    sp = property(lambda r: r.rsp)
    nr = property(lambda r: _signed(r.orig_rax), lambda r, v: setattr(r, "orig_rax", v & _MASK))
    ret = property(lambda r: _signed(r.rax), lambda r, v: setattr(r, "rax", v & _MASK))
    number = ret
    called = property(lambda r: _signed(r.orig_rax))

    def copy(self):
        return Regs.from_buffer_copy(self)


assert ctypes.sizeof(Regs) == 27 * 8


def get_regs(ptrace, tid):
    regs = Regs()
    ptrace(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return regs


def set_regs(ptrace, tid, regs):
    ptrace(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def native(regs):
    """True for a 64-bit thread (cs 0x33: __USER_CS, arch/x86/include/asm/segment.h)."""
    return regs.cs == 0x33


def interrupted(regs):
    """For a thread stopped in a call the kernel will restart: the registers it must keep as its own (its
    call's number and restart code), so that it restarts it, or returns EINTR to a handler that runs first,
    exactly as after SIGSTOP/SIGCONT. The interrupt made epoll_wait return EINTR: it gets -ERESTARTNOHAND
    instead, so that it is entered again, as if nothing had happened. None for any other thread."""
    if regs.nr < 0 or not (regs.ret in RESTARTS or (regs.nr in EPOLL_WAITS and regs.ret == -errno.EINTR)):
        return None
    origin = regs.copy()
    if regs.ret == -errno.EINTR:
        origin.ret = -514
    return origin
