"""park backend for macOS arm64: find TCP listeners, and close / recreate them inside a held process.

Discovery uses libproc only: each socket's address, options, backlog and fd flags, and every kqueue
registration of a listener with its exact udata (PROC_PIDFDKQUEUE_EXTINFO), read before anything changes.
With the task port, every thread is held with thread_suspend; each system call then runs in a new raw thread
(thread_create_running) on a 16 KiB stub page written while RW and then made R|X, with its data on a separate
RW page; the result and the carry flag are read from the thread's registers, and the thread is terminated
and every port and page released. A parked process keeps its thread holds (they outlive park and its keeper)
and gets no SIGSTOP, so a shell sees no stopped job; SIGCONT does not lift thread holds, release(pids) does.
Written from the xnu sources (xnu-11417.101.15) and not yet run on a Mac. Importing this module touches no
macOS library: libSystem is loaded on first use, on macOS only. It imports only the standard library and
never imports park.
"""

import ctypes
import os
import signal
import socket
import struct
import sys
import time

# ---------------------------------------------------------------------------------------------------------
# Constants (names as in the xnu headers they come from, tag xnu-11417.101.15)

LIBSYSTEM = "/usr/lib/libSystem.B.dylib"  # re-exports libsystem_kernel: Mach traps, MIG stubs, libproc

# bsd/kern/syscalls.master (BSD system call numbers, passed in x16)
SYS_close = 6
SYS_dup2 = 90
SYS_fcntl = 92
SYS_socket = 97
SYS_bind = 104
SYS_setsockopt = 105
SYS_listen = 106
SYS_kevent = 363
SYS_kevent64 = 369
SYSCALL_NAMES = {SYS_close: "close", SYS_dup2: "dup2", SYS_fcntl: "fcntl", SYS_socket: "socket", SYS_bind: "bind",
                 SYS_setsockopt: "setsockopt", SYS_listen: "listen", SYS_kevent: "kevent", SYS_kevent64: "kevent64"}

# bsd/sys/socket.h, bsd/netinet/in.h, bsd/netinet6/in6.h, bsd/netinet/in_pcb.h
AF_INET = 2
AF_INET6 = 30
SOCK_STREAM = 1
IPPROTO_TCP = 6
IPPROTO_IPV6 = 41
IPV6_V6ONLY = 27
SOL_SOCKET = 0xFFFF
SO_ACCEPTCONN = 0x0002
SO_REUSEADDR = 0x0004
IN6P_IPV6_V6ONLY = 0x8000
INI_IPV4, INI_IPV6 = 0x1, 0x2
# so_options bits that setsockopt(SOL_SOCKET, bit, int) sets or clears one by one (bsd/kern/uipc_socket.c,
# sosetoptlock: `case SO_DEBUG: case SO_KEEPALIVE: ...`); any other bit (SO_LINGER 0x80 ...) is not restored.
BOOL_OPTIONS = ((0x0001, "SO_DEBUG"), (0x0004, "SO_REUSEADDR"), (0x0008, "SO_KEEPALIVE"), (0x0010, "SO_DONTROUTE"),
                (0x0020, "SO_BROADCAST"), (0x0040, "SO_USELOOPBACK"), (0x0100, "SO_OOBINLINE"),
                (0x0200, "SO_REUSEPORT"), (0x0400, "SO_TIMESTAMP"))

# bsd/sys/fcntl.h (fg_flag uses FNONBLOCK == O_NONBLOCK)
F_SETFD = 2
F_SETFL = 4
FD_CLOEXEC = 1
O_NONBLOCK = 0x0004

# bsd/sys/errno.h: the target's errno values (this module may run its tests where errno differs)
EPERM, ESRCH, EBADF, EACCES, EINVAL, EADDRINUSE = 1, 3, 9, 13, 22, 48
MAC_ERRNO = {1: "Operation not permitted", 3: "No such process", 9: "Bad file descriptor", 13: "Permission denied",
             16: "Resource busy", 22: "Invalid argument", 24: "Too many open files",
             35: "Resource temporarily unavailable", 38: "Socket operation on non-socket", 42: "Protocol not available",
             47: "Address family not supported by protocol family", 48: "Address already in use",
             49: "Can't assign requested address"}

# bsd/sys/event.h, bsd/sys/event_private.h
EVFILT_READ, EVFILT_WRITE, EVFILT_VNODE, EVFILT_SOCK, EVFILT_EXCEPT = -1, -2, -4, -13, -15
FD_FILTERS = (EVFILT_READ, EVFILT_WRITE, EVFILT_VNODE, EVFILT_SOCK, EVFILT_EXCEPT)  # ident is an fd number
EV_ADD, EV_DISABLE, EV_ONESHOT, EV_CLEAR, EV_DISPATCH, EV_UDATA_SPECIFIC = 0x1, 0x8, 0x10, 0x20, 0x80, 0x100
EV_KEPT = EV_CLEAR | EV_ONESHOT | EV_DISPATCH | EV_UDATA_SPECIFIC  # registration flags re-applied on resume
KN_DISABLED = 0x4  # kqext_status

# bsd/sys/proc_info.h, bsd/sys/proc_info_private.h
PROC_ALL_PIDS = 1
PROC_PIDLISTFDS = 1
PROC_PIDTBSDINFO = 3
PROC_PIDT_SHORTBSDINFO = 13
PROC_PIDUNIQIDENTIFIERINFO = 17
PROC_PIDARCHINFO = 19
PROC_PIDLISTDYNKQUEUES = 27
PROC_PIDFDSOCKETINFO = 3
PROC_PIDFDKQUEUEINFO = 7
PROC_PIDFDKQUEUE_EXTINFO = 9
PROC_PIDDYNKQUEUE_EXTINFO = 1
PROX_FDTYPE_SOCKET = 2
PROX_FDTYPE_KQUEUE = 5
PROC_FP_SHARED, PROC_FP_CLEXEC, PROC_FP_GUARDED, PROC_FP_CLFORK = 1, 2, 4, 8
PROC_FLAG_TRACED = 2
PROC_KQUEUE_32, PROC_KQUEUE_64, PROC_KQUEUE_QOS = 0x08, 0x10, 0x20
SOCKINFO_TCP = 2
TSI_S_LISTEN = 1
SSTOP, SZOMB = 4, 5  # bsd/sys/proc.h p_stat
CTL_KERN, KERN_ARGMAX, KERN_PROCARGS2 = 1, 8, 49  # bsd/sys/sysctl.h

# osfmk/mach/machine.h, osfmk/kern/cs_blobs.h, bsd/sys/codesign.h
CPU_TYPE_ARM64 = 0x0100000C
CPU_SUBTYPE_ARM64E = 2
CS_OPS_STATUS = 0
CS_HARD, CS_KILL, CS_RUNTIME, CS_PLATFORM_BINARY = 0x100, 0x200, 0x10000, 0x4000000

# osfmk/mach/kern_return.h, message.h, vm_prot.h, vm_statistics.h, arm/thread_status.h, thread_info.h
KERN_SUCCESS = 0
KERN_PROTECTION_FAILURE = 2
KERN_INVALID_ARGUMENT = 4
KERN_FAILURE = 5
KERN_TERMINATED = 37
KERN_DENIED = 53
MACH_SEND_INVALID_DEST = 0x10000003
KERN_NAMES = {0: "KERN_SUCCESS", 1: "KERN_INVALID_ADDRESS", 2: "KERN_PROTECTION_FAILURE", 3: "KERN_NO_SPACE",
              4: "KERN_INVALID_ARGUMENT", 5: "KERN_FAILURE", 6: "KERN_RESOURCE_SHORTAGE", 14: "KERN_ABORTED",
              15: "KERN_INVALID_NAME", 16: "KERN_INVALID_TASK", 17: "KERN_INVALID_RIGHT", 37: "KERN_TERMINATED",
              46: "KERN_NOT_SUPPORTED", 50: "KERN_CODESIGN_ERROR", 53: "KERN_DENIED",
              MACH_SEND_INVALID_DEST: "MACH_SEND_INVALID_DEST"}
VM_PROT_READ, VM_PROT_WRITE, VM_PROT_EXECUTE = 1, 2, 4
VM_FLAGS_ANYWHERE = 1
ARM_THREAD_STATE64 = 6
ARM_THREAD_STATE64_COUNT = 68  # exactly this, or KERN_INVALID_ARGUMENT (osfmk/arm64/status.c)
ARM_NO_PTRAUTH = 0x1  # raw pc/lr/sp/fp (osfmk/mach/arm/_structs.h); arm64e targets are refused
THREAD_BASIC_INFO = 3
THREAD_BASIC_INFO_COUNT = 10
PAGE = 0x4000  # 16 KiB pages on Apple silicon (osfmk/mach/arm/vm_param.h PAGE_MAX_SHIFT 14)
MASK64 = (1 << 64) - 1

# The stub the injected thread runs: one system call (number in x16, arguments in x0..x7), its result and the
# carry flag (set on error, x0 then holds errno: bsd/dev/arm/systemcalls.c) copied to x19/w20, then a loop of
# mach_wait_until(UINT64_MAX) (trap -90, osfmk/kern/clock.c), so the finished thread sleeps, not spins, until
# park reads its registers and terminates it. It never returns (lr is 0) and touches no memory.
STUB = struct.pack("<7I",
                   0xD4001001,  # 0x00  svc #0x80
                   0xAA0003F3,  # 0x04  mov x19, x0
                   0x1A9F37F4,  # 0x08  cset w20, hs
                   0x92800000,  # 0x0c  mov x0, #-1
                   0x92800B30,  # 0x10  mov x16, #-90
                   0xD4001001,  # 0x14  svc #0x80
                   0x17FFFFFD)  # 0x18  b 0x0c
# While the first svc runs, the saved pc is already base+4 (svc+4), so "done" starts after the cset.
STUB_DONE = (0x0C, 0x18)

CALL_TIMEOUT = 5.0  # seconds an injected system call may take
PROBE_SECONDS = 5.0  # how long a non-root task_for_pid may wait for taskgated before park gives up
DATA = object()  # an argument placeholder: the address of the call's data in the target


class Error(Exception):
    """A failure to report to the user: one line, plus the exact fix when there is one."""

    def __init__(self, message, fix=None, errno=None, parked=False):
        super().__init__(message)
        self.fix = fix
        self.errno = errno
        self.parked = parked  # the target was left parked, with its state


class Uncertain(Error):
    """An injected call whose completion park did not see: it may or may not have run."""


class MachError(Exception):
    """A Mach call that returned an error: the call's name and its kern_return_t."""

    def __init__(self, call, kr):
        super().__init__("%s: %s" % (call, kern_name(kr)))
        self.call = call
        self.kr = kr


def kern_name(kr):
    return "%s (%d)" % (KERN_NAMES.get(kr, "kern_return_t"), kr)


def _kr(kr, call):
    """Raise MachError unless a Mach call returned KERN_SUCCESS."""
    if kr != KERN_SUCCESS:
        raise MachError(call, kr)


def _strerror(e):
    """The text of one of the target's errno values."""
    return os.strerror(e) if sys.platform == "darwin" else MAC_ERRNO.get(e, "errno %d" % e)


# ---------------------------------------------------------------------------------------------------------
# Kernel structures, one per header struct (sizes and offsets as on arm64, LP64)

class arm_thread_state64(ctypes.Structure):
    """osfmk/mach/arm/_structs.h __darwin_arm_thread_state64 (the last word is __opaque_flags under ptrauth)"""
    _fields_ = [("x", ctypes.c_uint64 * 29), ("fp", ctypes.c_uint64), ("lr", ctypes.c_uint64),
                ("sp", ctypes.c_uint64), ("pc", ctypes.c_uint64), ("cpsr", ctypes.c_uint32),
                ("flags", ctypes.c_uint32)]


class thread_basic_info(ctypes.Structure):
    """osfmk/mach/thread_info.h (time_value_t is two integer_t)"""
    _fields_ = [("user_time", ctypes.c_int32 * 2), ("system_time", ctypes.c_int32 * 2), ("cpu_usage", ctypes.c_int32),
                ("policy", ctypes.c_int32), ("run_state", ctypes.c_int32), ("flags", ctypes.c_int32),
                ("suspend_count", ctypes.c_int32), ("sleep_time", ctypes.c_int32)]


class kevent(ctypes.Structure):
    """bsd/sys/event.h struct kevent, #pragma pack(4)"""
    _pack_ = 4
    _fields_ = [("ident", ctypes.c_uint64), ("filter", ctypes.c_int16), ("flags", ctypes.c_uint16),
                ("fflags", ctypes.c_uint32), ("data", ctypes.c_int64), ("udata", ctypes.c_uint64)]


class kevent64_s(ctypes.Structure):
    """bsd/sys/event.h"""
    _fields_ = [("ident", ctypes.c_uint64), ("filter", ctypes.c_int16), ("flags", ctypes.c_uint16),
                ("fflags", ctypes.c_uint32), ("data", ctypes.c_int64), ("udata", ctypes.c_uint64),
                ("ext", ctypes.c_uint64 * 2)]


class kevent_qos_s(ctypes.Structure):
    """bsd/sys/event_private.h"""
    _fields_ = [("ident", ctypes.c_uint64), ("filter", ctypes.c_int16), ("flags", ctypes.c_uint16),
                ("qos", ctypes.c_int32), ("udata", ctypes.c_uint64), ("fflags", ctypes.c_uint32),
                ("xflags", ctypes.c_uint32), ("data", ctypes.c_int64), ("ext", ctypes.c_uint64 * 4)]


class kevent_extinfo(ctypes.Structure):
    """bsd/sys/proc_info_private.h"""
    _fields_ = [("kqext_kev", kevent_qos_s), ("kqext_sdata", ctypes.c_uint64), ("kqext_status", ctypes.c_int32),
                ("kqext_sfflags", ctypes.c_int32), ("kqext_reserved", ctypes.c_uint64 * 2)]


class proc_fileinfo(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [("fi_openflags", ctypes.c_uint32), ("fi_status", ctypes.c_uint32), ("fi_offset", ctypes.c_int64),
                ("fi_type", ctypes.c_int32), ("fi_guardflags", ctypes.c_uint32)]


class vinfo_stat(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [("vst_dev", ctypes.c_uint32), ("vst_mode", ctypes.c_uint16), ("vst_nlink", ctypes.c_uint16),
                ("vst_ino", ctypes.c_uint64), ("vst_uid", ctypes.c_uint32), ("vst_gid", ctypes.c_uint32)]
    _fields_ += [(n, ctypes.c_int64) for n in ("vst_atime", "vst_atimensec", "vst_mtime", "vst_mtimensec", "vst_ctime",
                                               "vst_ctimensec", "vst_birthtime", "vst_birthtimensec", "vst_size",
                                               "vst_blocks")]
    _fields_ += [("vst_blksize", ctypes.c_int32), ("vst_flags", ctypes.c_uint32), ("vst_gen", ctypes.c_uint32),
                 ("vst_rdev", ctypes.c_uint32), ("vst_qspare", ctypes.c_int64 * 2)]


class sockbuf_info(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [(n, ctypes.c_uint32) for n in ("sbi_cc", "sbi_hiwat", "sbi_mbcnt", "sbi_mbmax", "sbi_lowat")]
    _fields_ += [("sbi_flags", ctypes.c_int16), ("sbi_timeo", ctypes.c_int16)]


class in4in6_addr(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [("i46a_pad32", ctypes.c_uint32 * 3), ("i46a_addr4", ctypes.c_uint8 * 4)]


class in_addr_union(ctypes.Union):
    """insi_faddr / insi_laddr"""
    _fields_ = [("ina_46", in4in6_addr), ("ina_6", ctypes.c_uint8 * 16)]


class insi_v6(ctypes.Structure):
    _fields_ = [("in6_hlim", ctypes.c_uint8), ("in6_cksum", ctypes.c_int32), ("in6_ifindex", ctypes.c_uint16),
                ("in6_hops", ctypes.c_int16)]


class in_sockinfo(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [("insi_fport", ctypes.c_int32), ("insi_lport", ctypes.c_int32), ("insi_gencnt", ctypes.c_uint64),
                ("insi_flags", ctypes.c_uint32), ("insi_flow", ctypes.c_uint32), ("insi_vflag", ctypes.c_uint8),
                ("insi_ip_ttl", ctypes.c_uint8), ("rfu_1", ctypes.c_uint32), ("insi_faddr", in_addr_union),
                ("insi_laddr", in_addr_union), ("insi_v4", ctypes.c_uint8), ("insi_v6", insi_v6)]


class tcp_sockinfo(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [("tcpsi_ini", in_sockinfo), ("tcpsi_state", ctypes.c_int32), ("tcpsi_timer", ctypes.c_int32 * 4),
                ("tcpsi_mss", ctypes.c_int32), ("tcpsi_flags", ctypes.c_uint32), ("rfu_1", ctypes.c_uint32),
                ("tcpsi_tp", ctypes.c_uint64)]


class un_sockinfo(ctypes.Structure):
    """bsd/sys/proc_info.h (each address is a union of sockaddr_un and char[SOCK_MAXADDRLEN 255]); the largest
    member of soi_proto, so it fixes the union's size"""
    _fields_ = [("unsi_conn_so", ctypes.c_uint64), ("unsi_conn_pcb", ctypes.c_uint64),
                ("unsi_addr", ctypes.c_char * 255), ("unsi_caddr", ctypes.c_char * 255)]


class soi_proto(ctypes.Union):
    _fields_ = [("pri_in", in_sockinfo), ("pri_tcp", tcp_sockinfo), ("pri_un", un_sockinfo)]


class socket_info(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [("soi_stat", vinfo_stat), ("soi_so", ctypes.c_uint64), ("soi_pcb", ctypes.c_uint64),
                ("soi_type", ctypes.c_int32), ("soi_protocol", ctypes.c_int32), ("soi_family", ctypes.c_int32),
                ("soi_options", ctypes.c_int16), ("soi_linger", ctypes.c_int16), ("soi_state", ctypes.c_int16),
                ("soi_qlen", ctypes.c_int16), ("soi_incqlen", ctypes.c_int16), ("soi_qlimit", ctypes.c_int16),
                ("soi_timeo", ctypes.c_int16), ("soi_error", ctypes.c_uint16), ("soi_oobmark", ctypes.c_uint32),
                ("soi_rcv", sockbuf_info), ("soi_snd", sockbuf_info), ("soi_kind", ctypes.c_int32),
                ("rfu_1", ctypes.c_uint32), ("soi_proto", soi_proto)]


class socket_fdinfo(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [("pfi", proc_fileinfo), ("psi", socket_info)]


class kqueue_info(ctypes.Structure):
    _fields_ = [("kq_stat", vinfo_stat), ("kq_state", ctypes.c_uint32), ("rfu_1", ctypes.c_uint32)]


class kqueue_fdinfo(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [("pfi", proc_fileinfo), ("kqueueinfo", kqueue_info)]


class proc_bsdinfo(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [(n, ctypes.c_uint32) for n in ("pbi_flags", "pbi_status", "pbi_xstatus", "pbi_pid", "pbi_ppid",
                                               "pbi_uid", "pbi_gid", "pbi_ruid", "pbi_rgid", "pbi_svuid",
                                               "pbi_svgid", "rfu_1")]
    _fields_ += [("pbi_comm", ctypes.c_char * 16), ("pbi_name", ctypes.c_char * 32)]
    _fields_ += [(n, ctypes.c_uint32) for n in ("pbi_nfiles", "pbi_pgid", "pbi_pjobc", "e_tdev", "e_tpgid")]
    _fields_ += [("pbi_nice", ctypes.c_int32), ("pbi_start_tvsec", ctypes.c_uint64),
                 ("pbi_start_tvusec", ctypes.c_uint64)]


class proc_bsdshortinfo(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [(n, ctypes.c_uint32) for n in ("pbsi_pid", "pbsi_ppid", "pbsi_pgid", "pbsi_status")]
    _fields_ += [("pbsi_comm", ctypes.c_char * 16)]
    _fields_ += [(n, ctypes.c_uint32) for n in ("pbsi_flags", "pbsi_uid", "pbsi_gid", "pbsi_ruid", "pbsi_rgid",
                                                "pbsi_svuid", "pbsi_svgid", "pbsi_rfu")]


class proc_uniqidentifierinfo(ctypes.Structure):
    """bsd/sys/proc_info_private.h (_Static_assert size 56)"""
    _fields_ = [("p_uuid", ctypes.c_uint8 * 16), ("p_uniqueid", ctypes.c_uint64), ("p_puniqueid", ctypes.c_uint64),
                ("p_idversion", ctypes.c_int32), ("p_orig_ppidversion", ctypes.c_int32),
                ("p_reserve2", ctypes.c_uint64), ("p_reserve3", ctypes.c_uint64)]


class proc_archinfo(ctypes.Structure):
    """bsd/sys/proc_info_private.h"""
    _fields_ = [("p_cputype", ctypes.c_int32), ("p_cpusubtype", ctypes.c_int32)]


class proc_fdinfo(ctypes.Structure):
    """bsd/sys/proc_info.h"""
    _fields_ = [("proc_fd", ctypes.c_int32), ("proc_fdtype", ctypes.c_uint32)]


for _struct, _size in ((arm_thread_state64, 272), (thread_basic_info, 40), (kevent, 32), (kevent64_s, 48),
                       (kevent_qos_s, 72), (kevent_extinfo, 104), (socket_fdinfo, 792), (kqueue_fdinfo, 168),
                       (proc_bsdinfo, 136), (proc_bsdshortinfo, 64), (proc_uniqidentifierinfo, 56),
                       (proc_archinfo, 8), (proc_fdinfo, 8)):
    assert ctypes.sizeof(_struct) == _size, _struct.__name__

# ---------------------------------------------------------------------------------------------------------
# The Mach layer: one table of prototypes, and one object whose methods are the only way the code below
# reaches the kernel (a test passes an object with the same methods)

mach_port_t = ctypes.c_uint32  # also task_t, thread_act_t, mach_port_name_t
kern_return_t = ctypes.c_int32
PROTOTYPES = (
    # name, restype, argtypes: as declared in osfmk/mach/*.defs, mach_traps.h and libproc.h
    ("task_for_pid", kern_return_t, (mach_port_t, ctypes.c_int, ctypes.POINTER(mach_port_t))),
    ("task_suspend", kern_return_t, (mach_port_t,)),
    ("task_resume", kern_return_t, (mach_port_t,)),
    ("task_threads", kern_return_t,
     (mach_port_t, ctypes.POINTER(ctypes.POINTER(mach_port_t)), ctypes.POINTER(ctypes.c_uint32))),
    ("thread_suspend", kern_return_t, (mach_port_t,)),
    ("thread_resume", kern_return_t, (mach_port_t,)),
    ("thread_terminate", kern_return_t, (mach_port_t,)),
    ("thread_info", kern_return_t, (mach_port_t, ctypes.c_uint32, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32))),
    ("thread_get_state", kern_return_t, (mach_port_t, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32))),
    ("thread_create_running", kern_return_t,
     (mach_port_t, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32, ctypes.POINTER(mach_port_t))),
    ("mach_vm_allocate", kern_return_t, (mach_port_t, ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint64, ctypes.c_int)),
    ("mach_vm_deallocate", kern_return_t, (mach_port_t, ctypes.c_uint64, ctypes.c_uint64)),
    ("mach_vm_protect", kern_return_t, (mach_port_t, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int, ctypes.c_int)),
    ("mach_vm_write", kern_return_t, (mach_port_t, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_uint32)),
    ("vm_deallocate", kern_return_t, (mach_port_t, ctypes.c_size_t, ctypes.c_size_t)),
    ("mach_port_deallocate", kern_return_t, (mach_port_t, mach_port_t)),
    ("proc_listpids", ctypes.c_int, (ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int)),
    ("proc_pidinfo", ctypes.c_int, (ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int)),
    ("proc_pidfdinfo", ctypes.c_int, (ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int)),
    ("proc_piddynkqueueinfo", ctypes.c_int,
     (ctypes.c_int, ctypes.c_int, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_int)),
    ("csops", ctypes.c_int, (ctypes.c_int, ctypes.c_uint, ctypes.c_void_p, ctypes.c_size_t)),
    ("sysctl", ctypes.c_int, (ctypes.POINTER(ctypes.c_int), ctypes.c_uint, ctypes.c_void_p,
                              ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p, ctypes.c_size_t)),
)

_LIBS = []


def _libsystem():
    """libSystem with every prototype applied, loaded once, on macOS only."""
    if sys.platform != "darwin":
        raise Error("the macOS backend runs on macOS only (this is %s)" % sys.platform)
    if not _LIBS:
        lib = ctypes.CDLL(LIBSYSTEM, use_errno=True)
        for name, restype, argtypes in PROTOTYPES:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        _LIBS.append(lib)
    return _LIBS[0]


class Mach:
    """The calls into macOS, one method each; Mach calls raise MachError, libproc calls OSError."""

    def __init__(self, lib=None):
        self._lib = lib

    @property
    def lib(self):
        if self._lib is None:
            self._lib = _libsystem()
        return self._lib

    def _self(self):
        """mach_task_self() is a macro for the global mach_task_self_ (libsyscall/mach/mach/mach_init.h)."""
        return mach_port_t.in_dll(self.lib, "mach_task_self_").value

    # -- processes, files and signals (libproc, csops, sysctl) --
    def euid(self):
        return os.geteuid()

    def kill(self, pid, sig):
        os.kill(pid, sig)

    def _libproc(self, fn, name, args, size):
        """(return value, buffer bytes) of a libproc call that returns 0 with errno set on failure."""
        buf = ctypes.create_string_buffer(size) if size else None
        ctypes.set_errno(0)
        n = fn(*(args + (buf, size)))
        if n <= 0:
            e = ctypes.get_errno()
            if e:
                raise OSError(e, "%s: %s" % (name, _strerror(e)))
            n = 0
        return n, (buf.raw if buf is not None else b"")

    def listpids(self):
        n, _ = self._libproc(self.lib.proc_listpids, "proc_listpids", (PROC_ALL_PIDS, 0), 0)
        n, raw = self._libproc(self.lib.proc_listpids, "proc_listpids", (PROC_ALL_PIDS, 0), n + 256)
        return [p for p in struct.unpack_from("<%di" % (n // 4), raw) if p > 0]

    def pidinfo(self, pid, flavor, arg, size):
        return self._libproc(self.lib.proc_pidinfo, "proc_pidinfo", (pid, flavor, arg), size)

    def pidfdinfo(self, pid, fd, flavor, size):
        return self._libproc(self.lib.proc_pidfdinfo, "proc_pidfdinfo", (pid, fd, flavor), size)

    def piddynkqueueinfo(self, pid, flavor, kqid, size):
        return self._libproc(self.lib.proc_piddynkqueueinfo, "proc_piddynkqueueinfo", (pid, flavor, kqid), size)

    def csops_status(self, pid):
        """The code-signing flags of pid (CS_OPS_STATUS needs no privilege: bsd/kern/kern_proc.c)."""
        flags = ctypes.c_uint32(0)
        ctypes.set_errno(0)
        if self.lib.csops(pid, CS_OPS_STATUS, ctypes.byref(flags), 4) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "csops: %s" % _strerror(e))
        return flags.value

    def procargs(self, pid):
        """The raw KERN_PROCARGS2 buffer of pid (argc, exec path, argv, environment)."""
        def sysctl(mib, size):
            arr = (ctypes.c_int * len(mib))(*mib)
            buf = ctypes.create_string_buffer(size)
            length = ctypes.c_size_t(size)
            ctypes.set_errno(0)
            if self.lib.sysctl(arr, len(mib), buf, ctypes.byref(length), None, 0) != 0:
                e = ctypes.get_errno()
                raise OSError(e, "sysctl: %s" % _strerror(e))
            return buf.raw[:length.value]
        argmax = struct.unpack("<i", sysctl([CTL_KERN, KERN_ARGMAX], 4))[0]
        return sysctl([CTL_KERN, KERN_PROCARGS2, pid], argmax)

    # -- Mach --
    def task_for_pid(self, pid):
        port = mach_port_t(0)
        _kr(self.lib.task_for_pid(self._self(), pid, ctypes.byref(port)), "task_for_pid")
        return port.value

    def probe_task_for_pid(self, pid, timeout):
        """task_for_pid in a child process that is killed after timeout: its kern_return_t, or None when it did
        not answer (for a non-root caller it can wait forever on taskgated or an authorization prompt)."""
        import select
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                os.close(r)
                port = mach_port_t(0)
                kr = self.lib.task_for_pid(self._self(), pid, ctypes.byref(port))
                os.write(w, struct.pack("<i", kr))
            finally:
                os._exit(0)
        os.close(w)
        try:
            if not select.select([r], [], [], timeout)[0]:
                os.kill(child, signal.SIGKILL)
                return None
            data = os.read(r, 4)
            return struct.unpack("<i", data)[0] if len(data) == 4 else KERN_FAILURE
        finally:
            os.close(r)
            os.waitpid(child, 0)

    def task_suspend(self, task):
        _kr(self.lib.task_suspend(task), "task_suspend")

    def task_resume(self, task):
        _kr(self.lib.task_resume(task), "task_resume")

    def task_threads(self, task):
        """The thread ports of task (one send right each); the out-of-line array is freed here."""
        arr = ctypes.POINTER(mach_port_t)()
        count = ctypes.c_uint32(0)
        _kr(self.lib.task_threads(task, ctypes.byref(arr), ctypes.byref(count)), "task_threads")
        try:
            return [arr[i] for i in range(count.value)]
        finally:
            self.lib.vm_deallocate(self._self(), ctypes.cast(arr, ctypes.c_void_p).value or 0, count.value * 4)

    def thread_suspend(self, thread):
        _kr(self.lib.thread_suspend(thread), "thread_suspend")

    def thread_resume(self, thread):
        _kr(self.lib.thread_resume(thread), "thread_resume")

    def thread_terminate(self, thread):
        _kr(self.lib.thread_terminate(thread), "thread_terminate")

    def thread_suspend_count(self, thread):
        """user_stop_count: the thread_suspend holds on it (osfmk/kern/thread.c retrieve_thread_basic_info)."""
        info = thread_basic_info()
        count = ctypes.c_uint32(THREAD_BASIC_INFO_COUNT)
        _kr(self.lib.thread_info(thread, THREAD_BASIC_INFO, ctypes.byref(info), ctypes.byref(count)), "thread_info")
        return parse_thread_basic_info(bytes(info))

    def thread_get_state(self, thread):
        state = arm_thread_state64()
        count = ctypes.c_uint32(ARM_THREAD_STATE64_COUNT)
        _kr(self.lib.thread_get_state(thread, ARM_THREAD_STATE64, ctypes.byref(state), ctypes.byref(count)),
            "thread_get_state")
        return bytes(state)

    def thread_create_running(self, task, state):
        buf = arm_thread_state64.from_buffer_copy(state)
        child = mach_port_t(0)
        _kr(self.lib.thread_create_running(task, ARM_THREAD_STATE64, ctypes.byref(buf), ARM_THREAD_STATE64_COUNT,
                                           ctypes.byref(child)), "thread_create_running")
        return child.value

    def vm_allocate(self, task, size):
        addr = ctypes.c_uint64(0)
        _kr(self.lib.mach_vm_allocate(task, ctypes.byref(addr), size, VM_FLAGS_ANYWHERE), "mach_vm_allocate")
        return addr.value

    def vm_deallocate(self, task, addr, size):
        _kr(self.lib.mach_vm_deallocate(task, addr, size), "mach_vm_deallocate")

    def vm_protect(self, task, addr, size, prot):
        _kr(self.lib.mach_vm_protect(task, addr, size, 0, prot), "mach_vm_protect")

    def vm_write(self, task, addr, data):
        buf = ctypes.create_string_buffer(bytes(data), len(data))
        _kr(self.lib.mach_vm_write(task, addr, ctypes.addressof(buf), len(data)), "mach_vm_write")

    def port_deallocate(self, port):
        _kr(self.lib.mach_port_deallocate(self._self(), port), "mach_port_deallocate")


_MACH = []


def _mach(mach=None):
    """The given Mach layer, or the real one (libSystem is loaded only when a call needs it)."""
    if mach is not None:
        return mach
    if sys.platform != "darwin":
        raise Error("the macOS backend runs on macOS only (this is %s)" % sys.platform)
    if not _MACH:
        _MACH.append(Mach())
    return _MACH[0]


# ---------------------------------------------------------------------------------------------------------
# Parsers of what libproc returns

def _cstr(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_fdlist(raw):
    """PROC_PIDLISTFDS: [(fd, PROX_FDTYPE_*)]."""
    size = ctypes.sizeof(proc_fdinfo)
    out = []
    for off in range(0, len(raw) - len(raw) % size, size):
        f = proc_fdinfo.from_buffer_copy(raw, off)
        out.append((f.proc_fd, f.proc_fdtype))
    return out


def parse_socket_fdinfo(raw):
    """PROC_PIDFDSOCKETINFO: what park needs of one socket fd (socket_info.c fills it)."""
    s = socket_fdinfo.from_buffer_copy(raw[:ctypes.sizeof(socket_fdinfo)])
    si = s.psi
    ini = si.soi_proto.pri_in
    out = {"so": si.soi_so, "family": si.soi_family, "kind": si.soi_kind, "listening": False, "port": 0, "host": "",
           "options": si.soi_options & 0xFFFF, "qlen": si.soi_qlen, "qlimit": si.soi_qlimit,
           "v6only": bool(ini.insi_flags & IN6P_IPV6_V6ONLY), "vflag": ini.insi_vflag,
           "nonblock": bool(s.pfi.fi_openflags & O_NONBLOCK), "cloexec": bool(s.pfi.fi_status & PROC_FP_CLEXEC),
           "shared": bool(s.pfi.fi_status & PROC_FP_SHARED), "guarded": bool(s.pfi.fi_status & PROC_FP_GUARDED),
           "clofork": bool(s.pfi.fi_status & PROC_FP_CLFORK)}
    if si.soi_kind == SOCKINFO_TCP and si.soi_family in (AF_INET, AF_INET6):
        # insi_lport holds the port in network byte order (bsd/kern/socket_info.c copies inp_lport)
        out["port"] = struct.unpack(">H", struct.pack("<H", ini.insi_lport & 0xFFFF))[0]
        out["listening"] = si.soi_proto.pri_tcp.tcpsi_state == TSI_S_LISTEN
        laddr = ini.insi_laddr
        if si.soi_family == AF_INET:
            out["host"] = socket.inet_ntop(socket.AF_INET, bytes(laddr.ina_46.i46a_addr4))
        elif ini.insi_vflag & INI_IPV4 and not ini.insi_vflag & INI_IPV6 and any(laddr.ina_46.i46a_addr4):
            # an AF_INET6 socket bound to a v4-mapped address keeps it in the in4in6 form (bsd/netinet/in_pcb.h)
            out["host"] = socket.inet_ntop(socket.AF_INET6, bytes(10) + b"\xff\xff" + bytes(laddr.ina_46.i46a_addr4))
        else:
            out["host"] = socket.inet_ntop(socket.AF_INET6, bytes(laddr.ina_6))
    return out


def parse_kqueue_state(raw):
    """PROC_PIDFDKQUEUEINFO: kq_state, whose KQ_KEV32/64/QOS bit says which kevent call the kqueue takes."""
    return kqueue_fdinfo.from_buffer_copy(raw[:ctypes.sizeof(kqueue_fdinfo)]).kqueueinfo.kq_state


def parse_extinfo(raw, n):
    """PROC_PIDFDKQUEUE_EXTINFO: the first n registrations (kern_event.c kevent_extinfo_emit)."""
    size = ctypes.sizeof(kevent_extinfo)
    out = []
    for i in range(min(n, len(raw) // size)):
        e = kevent_extinfo.from_buffer_copy(raw, i * size)
        k = e.kqext_kev
        out.append({"ident": k.ident, "filter": k.filter, "flags": k.flags, "udata": k.udata,
                    "fflags": e.kqext_sfflags & 0xFFFFFFFF, "data": e.kqext_sdata, "status": e.kqext_status})
    return out


def parse_bsdinfo(raw):
    b = proc_bsdinfo.from_buffer_copy(raw[:ctypes.sizeof(proc_bsdinfo)])
    return {"pid": b.pbi_pid, "ppid": b.pbi_ppid, "status": b.pbi_status, "flags": b.pbi_flags, "uid": b.pbi_uid,
            "name": _cstr(b.pbi_name) or _cstr(b.pbi_comm),
            "start": b.pbi_start_tvsec * 1000000 + b.pbi_start_tvusec}


def parse_shortbsdinfo(raw):
    b = proc_bsdshortinfo.from_buffer_copy(raw[:ctypes.sizeof(proc_bsdshortinfo)])
    return {"pid": b.pbsi_pid, "ppid": b.pbsi_ppid, "status": b.pbsi_status, "flags": b.pbsi_flags,
            "uid": b.pbsi_uid, "name": _cstr(b.pbsi_comm), "start": 0}


def parse_uniqueid(raw):
    return proc_uniqidentifierinfo.from_buffer_copy(raw[:ctypes.sizeof(proc_uniqidentifierinfo)]).p_uniqueid


def parse_archinfo(raw):
    a = proc_archinfo.from_buffer_copy(raw[:ctypes.sizeof(proc_archinfo)])
    return a.p_cputype & 0xFFFFFFFF, a.p_cpusubtype & 0xFFFFFFFF


def parse_thread_basic_info(raw):
    return thread_basic_info.from_buffer_copy(raw[:ctypes.sizeof(thread_basic_info)]).suspend_count


def parse_procargs(raw):
    """KERN_PROCARGS2: int argc, the exec path, NUL padding, then argc NUL-terminated arguments."""
    if len(raw) < 4:
        return []
    argc = struct.unpack_from("<i", raw)[0]
    rest = raw[4:]
    end = rest.find(b"\0")
    if end < 0:
        return []
    rest = rest[end:].lstrip(b"\0")
    args = rest.split(b"\0")[:argc]
    return [a.decode("utf-8", "replace") for a in args]


# ---------------------------------------------------------------------------------------------------------
# Discovery

def _fds(m, pid):
    """[(fd, PROX_FDTYPE_*)] of pid; OSError when it cannot be read."""
    n, _ = m.pidinfo(pid, PROC_PIDLISTFDS, 0, 0)  # NULL buffer: the size needed, (nfiles + 20) * 8
    n, raw = m.pidinfo(pid, PROC_PIDLISTFDS, 0, n + 32 * ctypes.sizeof(proc_fdinfo))
    return parse_fdlist(raw[:n])


def _socket(m, pid, fd):
    n, raw = m.pidfdinfo(pid, fd, PROC_PIDFDSOCKETINFO, ctypes.sizeof(socket_fdinfo))
    if n < ctypes.sizeof(socket_fdinfo):
        raise OSError(EBADF, "proc_pidfdinfo: short socket info")
    return parse_socket_fdinfo(raw)


def _scan(m, port=None):
    """([(pid, fd, socket)] for every TCP listener fd park can read (on port, unless None), True when some
    process could not be read)."""
    me = os.getpid()
    found, hidden = [], False
    for pid in m.listpids():
        if pid == me:
            continue
        try:
            fds = _fds(m, pid)
        except OSError as e:
            hidden = hidden or e.errno in (EPERM, EACCES)
            continue
        for fd, kind in fds:
            if kind != PROX_FDTYPE_SOCKET:
                continue
            try:
                s = _socket(m, pid, fd)
            except OSError:
                continue
            if s["listening"] and (port is None or s["port"] == port):
                found.append((pid, fd, s))
    return found, hidden


def listeners(port, mach=None):
    """Every TCP listener on port: [{inode, family, host, port, holders: {pid: [fd, ...]}}]; inode is the
    socket's soi_so (a hash of the kernel socket, the same in every fd and process that holds it)."""
    m = _mach(mach)
    found, hidden = _scan(m, port)
    out = {}
    for pid, fd, s in found:
        l = out.setdefault(s["so"], {"inode": s["so"], "family": s["family"], "host": s["host"], "port": s["port"],
                                     "holders": {}})
        l["holders"].setdefault(pid, []).append(fd)
    for l in out.values():
        for fds in l["holders"].values():
            fds.sort()
    if not out and hidden and m.euid() != 0:
        # libproc only shows this user's processes: say that the port is taken by one park cannot see.
        taken = _port_taken(port)
        if taken:
            return [{"inode": 0, "family": taken[0], "host": taken[1], "port": port, "holders": {}}]
    return sorted(out.values(), key=lambda l: (l["family"], l["host"]))


def _port_taken(port):
    """(family, host) when binding the wildcard address on port fails with EADDRINUSE, else None."""
    import errno as local_errno
    for family, mac_family, host in ((socket.AF_INET, AF_INET, "0.0.0.0"), (socket.AF_INET6, AF_INET6, "::")):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == local_errno.EADDRINUSE:
                return mac_family, host
        finally:
            s.close()
    return None


def ports_listening(mach=None):
    """{port: [pid, ...]} of every TCP listener whose holders park can read."""
    out = {}
    for pid, fd, s in _scan(_mach(mach))[0]:
        out.setdefault(s["port"], set()).add(pid)
    return {p: sorted(v) for p, v in out.items()}


def queue_lengths(inodes, families, mach=None):
    """{inode: (accept queue length, backlog)} for these listeners (soi_qlen, soi_qlimit)."""
    want = set(inodes)
    return {s["so"]: (s["qlen"], s["qlimit"]) for pid, fd, s in _scan(_mach(mach))[0] if s["so"] in want}


def process(pid, mach=None):
    """What park needs to know about pid, or None if there is no such process. start is the start time in
    microseconds (PROC_PIDTBSDINFO: this user's processes, or any as root), 0 where it cannot be read."""
    m = _mach(mach)
    info = None
    try:
        n, raw = m.pidinfo(pid, PROC_PIDTBSDINFO, 0, ctypes.sizeof(proc_bsdinfo))
        if n == ctypes.sizeof(proc_bsdinfo):
            info = parse_bsdinfo(raw)
    except OSError as e:
        if e.errno == ESRCH:
            return None
    if info is None:
        try:
            n, raw = m.pidinfo(pid, PROC_PIDT_SHORTBSDINFO, 0, ctypes.sizeof(proc_bsdshortinfo))
        except OSError:
            return None
        if n != ctypes.sizeof(proc_bsdshortinfo):
            return None
        info = parse_shortbsdinfo(raw)
    try:
        argv = parse_procargs(m.procargs(pid))
    except OSError:
        argv = []
    traced = bool(info["flags"] & PROC_FLAG_TRACED)
    return {
        "pid": pid,
        "name": info["name"],
        "argv": argv,
        "state": {SSTOP: "T", SZOMB: "Z"}.get(info["status"], "S"),
        "ppid": info["ppid"],
        "kernel": False,
        "start": info["start"],
        "uid": info["uid"],
        # PT_ATTACH reparents the traced process to its tracer (bsd/kern/mach_process.c)
        "tracer": info["ppid"] if traced else 0,
        "seccomp": 0,
    }


def stopped(info):
    """True when the process is stopped (SSTOP) by job control."""
    return info["state"] == "T"


def held(info, keeper):
    """True while park's keeper (a pid, or None) keeps the park. The thread holds themselves outlive the keeper
    and are not visible without the task port; a park whose keeper is gone is resumed the same way."""
    return keeper is not None


def time_wait(listener):
    """TIME_WAIT connections that block re-binding the listener: none to wait for on macOS, since resume binds
    with SO_REUSEADDR borrowed, and then xnu looks only for unconnected PCBs on the exact address
    (bsd/netinet/in_pcb.c in_pcbbind, in_pcblookup_local with wild_okay 0)."""
    return []


def ptrace_scope():
    """Linux's Yama setting: there is none on macOS."""
    return None


# ---------------------------------------------------------------------------------------------------------
# What a listener needs to be recreated, read before anything changes

def _uniqueid(m, pid):
    n, raw = m.pidinfo(pid, PROC_PIDUNIQIDENTIFIERINFO, 0, ctypes.sizeof(proc_uniqidentifierinfo))
    return parse_uniqueid(raw)


def _kq_state(m, pid, kq):
    n, raw = m.pidfdinfo(pid, kq, PROC_PIDFDKQUEUEINFO, ctypes.sizeof(kqueue_fdinfo))
    return parse_kqueue_state(raw)


def _knotes(m, pid, kq, dynamic=False):
    """Every registration in one kqueue: fd kq, the workq kqueue (kq -1), or a dynamic kqueue (an id). The
    return value is the total count, which may exceed the buffer (bsd/kern/kern_event.c pid_kqueue_extinfo)."""
    want = 32
    for _ in range(4):
        size = want * ctypes.sizeof(kevent_extinfo)
        if dynamic:
            n, raw = m.piddynkqueueinfo(pid, PROC_PIDDYNKQUEUE_EXTINFO, kq, size)
        else:
            n, raw = m.pidfdinfo(pid, kq, PROC_PIDFDKQUEUE_EXTINFO, size)
        if n <= want:
            return parse_extinfo(raw, n)
        want = n + 16
    raise Error("the kqueues of pid %d keep changing; try again" % pid)


def _dynkqueues(m, pid):
    """The ids of pid's dynamic kqueues (libdispatch workloops)."""
    want = 16
    for _ in range(4):
        n, raw = m.pidinfo(pid, PROC_PIDLISTDYNKQUEUES, 0, want * 8)
        if n <= want:
            return list(struct.unpack_from("<%dQ" % n, raw))
        want = n + 16
    raise Error("the kqueues of pid %d keep changing; try again" % pid)


def _preflight(m, pid, port):
    """Refuse a process that an injected thread would crash, before park touches anything."""
    try:
        n, raw = m.pidinfo(pid, PROC_PIDARCHINFO, 0, ctypes.sizeof(proc_archinfo))
        cputype, subtype = parse_archinfo(raw)
        flags = m.csops_status(pid)
    except OSError as e:
        raise Error("cannot read pid %d (%s)" % (pid, e.strerror), fix="sudo park %d" % port)
    if cputype != CPU_TYPE_ARM64:
        raise Error("pid %d is not a native arm64 process (cputype %#x: x86_64 under Rosetta?); park's macOS "
                    "backend handles arm64 processes only" % (pid, cputype))
    if subtype & 0x00FFFFFF == CPU_SUBTYPE_ARM64E:
        # The kernel refuses raw thread state from a JOP-disabled caller for an arm64e target, and would
        # poison an unsigned pc from an arm64e one (osfmk/arm64/status.c machine_thread_state_convert_from_user).
        raise Error("pid %d is an arm64e process (pointer authentication), which park cannot run code in" % pid)
    if flags & (CS_KILL | CS_HARD):
        # Running park's unsigned page would kill it (CS_KILL) or fault it (CS_HARD): bsd/kern/kern_cs.c.
        raise Error("pid %d runs with code-signing enforcement (flags %#x%s) and would be killed by park's code page"
                    % (pid, flags, ", hardened runtime" if flags & CS_RUNTIME else ""),
                    fix="run a build of the server without the hardened runtime (e.g. go build; ad-hoc signed)")


def _options(s, force, port):
    """[[level, name, number, "int", value]]: SO_REUSEADDR always, IPV6_V6ONLY for IPv6, and every other
    boolean so_options bit that is set; other bits are refused unless force (they are then left out)."""
    opts = s["options"] & ~SO_ACCEPTCONN
    out = [[SOL_SOCKET, "SO_REUSEADDR", SO_REUSEADDR, "int", int(bool(opts & SO_REUSEADDR))]]
    for bit, name in BOOL_OPTIONS:
        if bit != SO_REUSEADDR and opts & bit:
            out.append([SOL_SOCKET, name, bit, "int", 1])
    known = 0
    for bit, _ in BOOL_OPTIONS:
        known |= bit
    if opts & ~known and not force:
        raise Error("the listener on :%d has socket options park cannot restore (so_options %#x)" % (port, opts),
                    fix="park %d --force  (resume recreates it without them)" % port)
    if s["family"] == AF_INET6:
        out.append([IPPROTO_IPV6, "IPV6_V6ONLY", IPV6_V6ONLY, "int", int(s["v6only"])])
    return out


def _holder_view(m, pid, fds, inode, port, force):
    """One holder's fds of the socket with their flags, and every kqueue registration of them."""
    try:
        socks = [_socket(m, pid, fd) for fd in fds]
        table = _fds(m, pid)
    except OSError:
        raise Error("pid %d exited or closed the listener while park looked at it" % pid, fix="park %d" % port)
    entries = []
    for fd, s in zip(fds, socks):
        if s["so"] != inode:
            raise Error("pid %d changed its listener while park looked at it" % pid, fix="park %d  (again)" % port)
        if s["guarded"]:
            # close or dup2 of a guarded fd raises EXC_GUARD, which kills the process (bsd/kern/kern_descrip.c)
            raise Error("pid %d guards its listener fd %d (a guarded fd); closing it would crash the process"
                        % (pid, fd))
        if s["clofork"] and not force:
            raise Error("pid %d set close-on-fork on its listener fd %d, which park cannot restore" % (pid, fd),
                        fix="park %d --force" % port)
        entries.append({"fd": fd, "cloexec": s["cloexec"], "nonblock": s["nonblock"]})
    regs = []
    for kq, kind in table:
        if kind != PROX_FDTYPE_KQUEUE:
            continue
        try:
            state = _kq_state(m, pid, kq)
            knotes = _knotes(m, pid, kq)
        except OSError as e:
            raise Error("cannot read the kqueue fd %d of pid %d (%s)" % (kq, pid, e.strerror),
                        fix="sudo park %d" % port)
        for k in knotes:
            if k["ident"] not in fds or k["filter"] not in FD_FILTERS:
                continue
            if k["filter"] not in (EVFILT_READ, EVFILT_WRITE):
                if not force:
                    raise Error("pid %d watches its listener with kqueue filter %d, which park cannot restore"
                                % (pid, k["filter"]), fix="park %d --force  (that registration will not come back)"
                                % port)
                continue
            if state & PROC_KQUEUE_32:
                api = "kevent"
            elif state & (PROC_KQUEUE_64 | PROC_KQUEUE_QOS):
                api = "kevent64"
            else:
                raise Error("pid %d has a kqueue (fd %d) in an unknown state %#x" % (pid, kq, state))
            regs.append({"kq": kq, "api": api, "ident": k["ident"], "filter": k["filter"],
                         "flags": k["flags"] & EV_KEPT, "fflags": k["fflags"], "data": k["data"],
                         "udata": k["udata"], "disabled": bool(k["status"] & KN_DISABLED)})
    # libdispatch keeps its sources in the workq kqueue (fd -1) and in dynamic kqueues (workloops), whose
    # udata point at dispatch's own state and which only kevent_id can change: not something to recreate.
    try:
        dispatch = _knotes(m, pid, -1)
        for kqid in _dynkqueues(m, pid):
            dispatch += _knotes(m, pid, kqid, dynamic=True)
    except OSError as e:
        raise Error("cannot read the kqueues of pid %d (%s)" % (pid, e.strerror), fix="sudo park %d" % port)
    if any(k["ident"] in fds and k["filter"] in FD_FILTERS for k in dispatch):
        raise Error("pid %d watches its listener through libdispatch (a dispatch source), which park cannot "
                    "restore" % pid)
    try:
        uniqueid = _uniqueid(m, pid)
    except OSError:
        raise Error("pid %d exited while park looked at it" % pid, fix="park %d" % port)
    return {"pid": pid, "uniqueid": uniqueid, "fds": entries, "kqueue": regs}


def inspect(listener, force=False, mach=None):
    """Fill in a listener from listeners() with everything resume needs; raise Error if it cannot be restored."""
    m = _mach(mach)
    holders, port = listener["holders"], listener["port"]
    if len(holders) > 1:
        raise Error("pids %s share the listener on :%d (a reloader and its worker?); on macOS park can recreate "
                    "a listener in one process only" % (", ".join(map(str, sorted(holders))), port),
                    fix="run the server without its reloader or pre-forked workers, then park %d" % port)
    pid = next(iter(holders))
    fds = sorted(holders[pid])
    _preflight(m, pid, port)
    try:
        s = _socket(m, pid, fds[0])
    except OSError:
        raise Error("pid %d exited while park looked at it" % pid, fix="park %d" % port)
    if s["shared"] and len(fds) == 1:
        # fg_count > 1 (bsd/kern/proc_info.c fill_fileinfo) with one fd found: another reference (an fd in
        # flight, a fileport, a process park cannot read) would keep the socket listening after park closes it.
        raise Error("the listener on :%d is also held by something park cannot see (another user's process, or "
                    "an fd being passed)" % port, fix="sudo park %d" % port)
    if s["family"] == AF_INET6 and s["host"].lower().startswith("fe80:"):
        raise Error("the listener on :%d is bound to a link-local IPv6 address, whose scope park cannot read" % port)
    out = dict(listener)
    out["family"] = s["family"]
    out["host"] = s["host"]
    out["address"] = [s["host"], port] + ([0, 0] if s["family"] == AF_INET6 else [])
    out["options"] = _options(s, force, port)
    out["backlog"] = s["qlimit"]  # so_qlimit, as listen() stored it (bsd/kern/uipc_socket.c solisten)
    holder = _holder_view(m, pid, fds, listener["inode"], port, force)
    out["holders"] = [holder]
    out["nonblock"] = holder["fds"][0]["nonblock"]
    return out


# ---------------------------------------------------------------------------------------------------------
# Holding threads and running system calls inside a process

def _bounded(fn, seconds, timeout_error):
    """fn() on a daemon thread, given up after `seconds` (the thread is left behind, blocked in the kernel):
    the child's probe does not prove that park's own task_for_pid will not wait for taskgated too."""
    import threading
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise timeout_error
    if "error" in box:
        raise box["error"]
    return box["value"]


def _task_port(m, pid, again):
    """task_for_pid for pid. As non-root it can block forever (taskgated, an authorization prompt: psutil
    #2885), so it is first tried in a child process that park kills after PROBE_SECONDS."""
    fix = ("sudo %s  (or run park with a python3 signed with com.apple.security.cs.debugger, as a member of "
           "the _developer group)" % again)
    root = m.euid() == 0
    if not root:
        kr = m.probe_task_for_pid(pid, PROBE_SECONDS)
        if kr is None:
            raise Error("macOS did not let park at pid %d within %d s (task_for_pid waits for taskgated or a "
                        "password prompt)" % (pid, PROBE_SECONDS), fix=fix)
        if kr != KERN_SUCCESS:
            raise Error("macOS refused park access to pid %d (task_for_pid: %s)" % (pid, kern_name(kr)), fix=fix)
    try:
        if root:
            return m.task_for_pid(pid)
        return _bounded(lambda: m.task_for_pid(pid), PROBE_SECONDS, Error(
            "macOS did not let park at pid %d within %d s (task_for_pid waits for taskgated or a password "
            "prompt)" % (pid, PROBE_SECONDS), fix=fix))
    except MachError as e:
        if not root:
            raise Error("macOS refused park access to pid %d (task_for_pid: %s)" % (pid, kern_name(e.kr)), fix=fix)
        try:
            flags = m.csops_status(pid)
        except OSError:
            flags = 0
        why = ("an Apple platform binary" if flags & CS_PLATFORM_BINARY else
               "built with the hardened runtime and without get-task-allow" if flags & CS_RUNTIME else
               "a platform binary, or hardened without get-task-allow")
        raise Error("macOS refused park access to pid %d even as root (task_for_pid: %s): it is %s (code-signing "
                    "flags %#x)" % (pid, kern_name(e.kr), why, flags),
                    fix="sign the server with the com.apple.security.get-task-allow entitlement, or run a build "
                        "without the hardened runtime")


class _Target:
    """One process park works on: its task port, the threads this run holds, and the stub's two pages."""

    def __init__(self, m, pid, again):
        self.m, self.pid, self.again = m, pid, again
        self.task = None
        self.held = []  # thread ports this run holds once each
        self.parked = []  # those of them that were held before (by the park that parked it)
        self.base = None

    def attach(self):
        self.task = _task_port(self.m, self.pid, self.again)

    def hold(self):
        """Hold every thread with thread_suspend. task_suspend around the listing keeps new threads from
        escaping it; it is lifted at once, since a suspended task would hold the injected thread as well
        (osfmk/kern/thread.c thread_create_running_internal). A thread_suspend hold outlives park."""
        m = self.m
        try:
            m.task_suspend(self.task)
        except MachError as e:
            raise Error("cannot hold pid %d (%s)" % (self.pid, e))
        try:
            seen = set(self.held)
            for _ in range(20):
                fresh = []
                for t in m.task_threads(self.task):
                    if t in seen:
                        m.port_deallocate(t)  # one more reference to a name this run already holds
                    else:
                        seen.add(t)
                        fresh.append(t)
                if not fresh:
                    return
                for i, t in enumerate(fresh):
                    try:
                        before = m.thread_suspend_count(t)
                        m.thread_suspend(t)
                    except MachError as e:
                        m.port_deallocate(t)
                        if e.kr in (KERN_TERMINATED, KERN_INVALID_ARGUMENT, MACH_SEND_INVALID_DEST):
                            seen.discard(t)  # the thread ended meanwhile; its name may come back for another
                            continue
                        for rest in fresh[i + 1:]:
                            m.port_deallocate(rest)
                        raise Error("cannot hold a thread of pid %d (%s)" % (self.pid, e))
                    self.held.append(t)
                    if before > 0:
                        self.parked.append(t)
            raise Error("pid %d keeps creating threads; nothing was changed" % self.pid, fix="try again")
        except MachError as e:
            raise Error("cannot hold pid %d (%s)" % (self.pid, e))
        finally:
            try:
                m.task_resume(self.task)
            except MachError:
                pass

    def call(self, nr, *args, data=b""):
        """Run one system call in a new thread of the target: its result, or OSError with the target's errno."""
        m = self.m
        try:
            if self.base is None:
                self._map()
            if data:
                m.vm_write(self.task, self.base + PAGE, bytes(data))
            state = arm_thread_state64()
            for i, a in enumerate(args):
                state.x[i] = (self.base + PAGE if a is DATA else a) & MASK64
            state.x[16] = nr
            state.sp = self.base + 2 * PAGE - 256  # 16-byte aligned, in the data page; the stub uses no stack
            state.pc = self.base
            state.lr = 0  # returning would fault and kill the process: the stub never returns
            state.flags = ARM_NO_PTRAUTH
            # The new thread inherits the signal mask of the thread that creates it (bsd/kern/kern_fork.c
            # uthread_init); with every signal blocked no handler (Go's needs its TLS) ever runs on it.
            old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            try:
                thread = m.thread_create_running(self.task, bytes(state))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
        except MachError as e:
            raise self._refused(e)
        try:
            done = self._wait(thread, nr)
        except Error as e:
            raise Uncertain(str(e))  # the call may have run: callers look at the fds before deciding
        finally:
            self._end(thread)
        if done.x[20] & 1:  # the carry flag, as the stub's cset saved it
            e = done.x[19] & 0xFFFFFFFF
            raise OSError(e, "%s: %s" % (SYSCALL_NAMES.get(nr, nr), _strerror(e)))
        return done.x[19]

    def _refused(self, e):
        if e.call == "thread_create_running" and e.kr == KERN_PROTECTION_FAILURE:
            return Error("pid %d is an arm64e process; park cannot run code in it" % self.pid)
        if e.call == "thread_create_running" and e.kr == KERN_DENIED:
            return Error("a macOS security policy denied park a thread in pid %d (%s)" % (self.pid, e))
        if e.call == "mach_vm_protect":
            return Error("macOS refused to make park's code page executable in pid %d (%s)" % (self.pid, e))
        return Error("cannot run a system call in pid %d (%s)" % (self.pid, e))

    def _map(self):
        """Two 16 KiB pages: the stub, written while RW and then made R|X (W^X: the kernel strips X from a W+X
        request, osfmk/vm/vm_map.c), and a data page that stays RW and is never executable."""
        m = self.m
        base = m.vm_allocate(self.task, 2 * PAGE)
        try:
            m.vm_write(self.task, base, STUB)
            m.vm_protect(self.task, base, PAGE, VM_PROT_READ | VM_PROT_EXECUTE)
        except BaseException:
            try:
                m.vm_deallocate(self.task, base, 2 * PAGE)
            except MachError:
                pass
            raise  # self.base stays None: a later call maps afresh instead of running a page without the stub
        self.base = base

    def _wait(self, thread, nr):
        """Poll the thread's registers (thread_get_state stops it briefly) until its pc is in the wait loop."""
        deadline = time.monotonic() + CALL_TIMEOUT
        pause = 0.00005
        while True:
            try:
                state = arm_thread_state64.from_buffer_copy(self.m.thread_get_state(thread))
            except MachError as e:
                raise Error("pid %d ended while park worked on it (%s)" % (self.pid, e))
            at = state.pc - self.base
            if STUB_DONE[0] <= at <= STUB_DONE[1]:
                return state
            if not 0 <= at < len(STUB):
                raise Error("park's thread in pid %d left its code (pc %#x)" % (self.pid, state.pc))
            if time.monotonic() > deadline:
                raise Error("%s did not finish in pid %d within %g s (is it held by a debugger?)"
                            % (SYSCALL_NAMES.get(nr, nr), self.pid, CALL_TIMEOUT))
            time.sleep(pause)
            pause = min(pause * 2, 0.002)

    def _end(self, thread):
        """Stop, terminate (thread_terminate waits until it is off the CPU) and let go of the injected thread."""
        for step in (self.m.thread_suspend, self.m.thread_terminate, self.m.port_deallocate):
            try:
                step(thread)
            except MachError:
                pass

    def unhold(self):
        """Lift this run's holds (not park's), keeping the task port and pages for another try."""
        failed, kept = None, []
        for t in self.held:
            try:
                self.m.thread_resume(t)
            except MachError as e:
                failed = failed or e
                kept.append(t)  # still held: finish() must try again, so keep its port
                continue
            self._drop(t)
        self.held, self.parked = kept, [t for t in self.parked if t in kept]
        return failed

    def finish(self, resume, parked_too=False):
        """Free the pages, then lift this run's holds if resume (and park's as well if parked_too), and let
        go of every port. With resume False the holds stay: that is what keeps a parked process parked.
        Returns the first hold that could not be lifted (a page that cannot be freed only stays mapped)."""
        failed = None
        if self.base is not None:
            try:
                self.m.vm_deallocate(self.task, self.base, 2 * PAGE)
            except MachError:
                pass
            self.base = None
        for t in self.held:
            for _ in range((1 + (parked_too and t in self.parked)) if resume else 0):
                try:
                    self.m.thread_resume(t)
                except MachError as e:
                    if e.kr not in (KERN_TERMINATED, MACH_SEND_INVALID_DEST, KERN_INVALID_ARGUMENT):
                        failed = failed or e
            self._drop(t)
        self.held, self.parked = [], []
        if self.task is not None:
            self._drop(self.task)
            self.task = None
        return failed

    def _drop(self, port):
        try:
            self.m.port_deallocate(port)
        except MachError:
            pass


def _targets(m, plans, again):
    pids = sorted({h["pid"] for l in plans for h in l["holders"]})
    return {pid: _Target(m, pid, again) for pid in pids}


def _finish(targets, resume, parked_too=False, quiet=False):
    """finish() every target; a failure is an Error unless quiet (another error is already on its way)."""
    failed = [t.finish(resume, parked_too) for t in targets.values()]
    failed = [f for f in failed if f is not None]
    if failed and not quiet:
        raise Error("could not release pid %s cleanly (%s)" % (", ".join(map(str, targets)), failed[0]),
                    fix="park release %d" % min(targets))


def _signal(m, pids, sig):
    for pid in pids:
        try:
            m.kill(pid, sig)
        except OSError:
            pass


def _is_stopped(m, pid):
    """p_stat is SSTOP (PROC_PIDT_SHORTBSDINFO, which any user may read)."""
    try:
        n, raw = m.pidinfo(pid, PROC_PIDT_SHORTBSDINFO, 0, ctypes.sizeof(proc_bsdshortinfo))
    except OSError:
        return False
    return n == ctypes.sizeof(proc_bsdshortinfo) and parse_shortbsdinfo(raw)["status"] == SSTOP


def _continue_stopped(m, targets):
    """SIGCONT the held processes that are stopped: a stopped task holds every new thread (stop() is
    task_suspend_internal, bsd/kern/kern_sig.c), the injected one included. Their threads stay held."""
    was = [pid for pid in targets if _is_stopped(m, pid)]
    _signal(m, was, signal.SIGCONT)
    return was


def _queued(m, plan):
    """Connections waiting in the accept queue of these listeners (read from their holders only)."""
    total = 0
    for l in plan:
        h = l["holders"][0]
        try:
            total += _socket(m, h["pid"], h["fds"][0]["fd"])["qlen"]
        except OSError:
            pass
    return total


def _verify(m, plan):
    """Once every thread is held: the listeners are as recorded (fds, flags, kqueue registrations) and no
    other process (a child forked meanwhile) holds one. Anything else is an Error: nothing has changed yet."""
    for l in plan:
        for h in l["holders"]:
            now = _holder_view(m, h["pid"], [f["fd"] for f in h["fds"]], l["inode"], l["port"], True)
            if now != h:
                raise Error("pid %d changed its listener's fds, flags or kqueue registrations while park worked; "
                            "nothing was changed" % h["pid"], fix="park %d  (again)" % l["port"])
    pids = {h["pid"] for l in plan for h in l["holders"]}
    for l in plan:
        for other in listeners(l["port"], m):
            if other["inode"] == l["inode"] and set(other["holders"]) - pids:
                raise Error("pid %s also holds the listener now (a new child?); nothing was changed"
                            % ", ".join(map(str, sorted(set(other["holders"]) - pids))),
                            fix="park %d  (again)" % l["port"])


def _close_all(targets, plan, closed):
    """Close every recorded fd of every listener in its holder; closed collects (pid, fd) as they go."""
    for l in plan:
        for h in l["holders"]:
            for f in h["fds"]:
                t = targets[h["pid"]]
                try:
                    t.call(SYS_close, f["fd"])
                except OSError as e:
                    raise Error("cannot close fd %d in pid %d (%s)" % (f["fd"], h["pid"], e.strerror), errno=e.errno)
                except Uncertain:
                    if f["fd"] not in {fd for fd, _ in _fds(t.m, h["pid"])}:
                        closed.append((h["pid"], f["fd"]))  # it did run: put it back like any other
                    raise
                closed.append((h["pid"], f["fd"]))


def _put_back(m, targets, plan, closed, failure, port):
    """After a failure with some fds closed: give them back. If that fails too, the processes stay parked
    (their threads held) rather than run without their listener: an Error with parked=True."""
    try:
        _recreate(targets, plan, force=True, closed=closed)
        for l in plan:
            h = l["holders"][0]
            s = _socket(m, h["pid"], h["fds"][0]["fd"])
            if not s["listening"] or s["port"] != l["port"]:
                raise failure
    except BaseException:
        raise Error("%s; park could not put the listener back, so the processes stay parked" % failure,
                    fix="park resume %d  (or park release %d to continue them as they are)" % (port, port),
                    parked=True)


# ---------------------------------------------------------------------------------------------------------
# Park, resume, swap, release

def park(plan, drain=2.0, suspend_seccomp=False, mach=None):
    """Hold every thread of every holder, close the listeners, leave the threads held.

    Returns {"reset": n, "held": seconds}. On failure the target is left running, as it was, unless the
    Error says parked=True (the listener could not be put back: the target stays parked)."""
    m = _mach(mach)
    port = plan[0]["port"]
    targets = _targets(m, plan, "park %d" % port)
    if all(_is_stopped(m, pid) for pid in targets):
        drain = 0  # already stopped: it cannot accept anything
    deadline = time.monotonic() + drain
    state = {"parked": False, "continued": [], "started": None}
    try:
        for t in targets.values():
            t.attach()
        while True:
            # Let the server accept what is already queued, so closing resets nobody (bounded wait).
            while time.monotonic() < deadline and _queued(m, plan):
                time.sleep(0.005)
            state["started"] = state["started"] or time.perf_counter()
            for t in targets.values():
                t.hold()
            reset = _queued(m, plan)
            if not reset or time.monotonic() >= deadline:
                break
            for t in targets.values():
                failed = t.unhold()
                if failed:
                    raise Error("cannot let pid %d accept while park waits (%s)" % (t.pid, failed))
        _verify(m, plan)
        state["continued"] = _continue_stopped(m, targets)
        closed = []
        try:
            _close_all(targets, plan, closed)
        except BaseException as failure:
            if closed:
                try:
                    _put_back(m, targets, plan, closed, failure, port)
                except Error as e:
                    state["parked"] = e.parked
                    raise
            raise
        state["parked"] = True
    except BaseException:
        _leave(m, targets, state, quiet=True)
        raise
    held = _leave(m, targets, state)
    return {"reset": reset, "held": held}


def _leave(m, targets, state, quiet=False, resumed=False):
    """End a park, resume or swap. Parked: the processes keep this run's holds (no SIGSTOP: job control stays
    the shell's). Resumed: every hold is lifted, park's too. Otherwise this run's holds are lifted. Either way
    what job control had stopped is stopped again."""
    held = time.perf_counter() - state["started"] if state["started"] else 0.0
    _signal(m, state["continued"], signal.SIGSTOP)
    _finish(targets, resume=not state["parked"], parked_too=resumed, quiet=quiet)
    return held


def resume(plan, force=False, suspend_seccomp=False, given=None, mach=None):
    """Recreate each listener in its held holders and release them. On failure they stay parked, as they were.
    given (park's own sockets from --hold) cannot be handed over on macOS yet."""
    port = plan[0]["port"]
    if given is not None:
        raise Error("handing a held socket to the parked process is not implemented on macOS",
                    fix="park resume %d" % port)
    m = _mach(mach)
    targets = _targets(m, plan, "park resume %d" % port)
    state = {"parked": False, "continued": [], "started": time.perf_counter()}
    try:
        try:
            for l in plan:
                for h in l["holders"]:
                    if _uniqueid(m, h["pid"]) != h["uniqueid"]:
                        raise Error("pid %d is now a different process; it was left alone" % h["pid"],
                                    fix="park list --prune")
            for t in targets.values():
                t.attach()
            for t in targets.values():
                t.hold()
            # A process that job control stopped would hold the injected thread (a stopped task holds them all).
            state["continued"] = _continue_stopped(m, targets)
            for l in plan:
                for h in l["holders"]:
                    _check_parked(m, h)
        except OSError as e:
            raise Error("cannot read pid %s (%s)" % (", ".join(map(str, targets)), e.strerror))
        _recreate(targets, plan, force)
    except BaseException:
        # Still parked: this run's holds are lifted, park's stay, and what was stopped is stopped again.
        _leave(m, targets, state, quiet=True)
        raise
    return {"held": _leave(m, targets, state, resumed=True)}


def _check_parked(m, h):
    """The holder's fd numbers are still free and its kqueues still there (nothing ran it meanwhile)."""
    table = dict(_fds(m, h["pid"]))
    for f in h["fds"]:
        if f["fd"] in table:
            raise Error("pid %d reused fd %d while parked (something released it)" % (h["pid"], f["fd"]),
                        fix="park release %d  (continue it as it is), or restart the server" % h["pid"])
    for r in h["kqueue"]:
        if table.get(r["kq"]) != PROX_FDTYPE_KQUEUE:
            raise Error("pid %d closed the kqueue (fd %d) its listener was registered in" % (h["pid"], r["kq"]),
                        fix="park release %d  (continue it as it is), or restart the server" % h["pid"])


def swap(plan_a, plan_b, suspend_seccomp=False, mach=None):
    """Move the listeners of plan_a to plan_b's port and those of plan_b to plan_a's, in their own processes.
    All or nothing: on failure both are put back on their ports, running."""
    m = _mach(mach)
    port_a, port_b = plan_a[0]["port"], plan_b[0]["port"]
    moved = [_on_port(l, port_b) for l in plan_a] + [_on_port(l, port_a) for l in plan_b]
    both = plan_a + plan_b
    targets = _targets(m, both, "park swap %d %d" % (port_a, port_b))
    state = {"parked": False, "continued": [], "started": time.perf_counter()}
    try:
        for t in targets.values():
            t.attach()
        for t in targets.values():
            t.hold()
        _verify(m, both)
        state["continued"] = _continue_stopped(m, targets)
        closed = []
        try:
            _close_all(targets, both, closed)
            _recreate(targets, moved, force=False)
        except BaseException as failure:
            if closed:
                try:
                    _put_back(m, targets, both, closed, failure, port_a)
                except Error as e:
                    state["parked"] = e.parked
                    e.fix = "park resume %d; park resume %d" % (port_a, port_b)
                    raise
            raise
    except BaseException:
        _leave(m, targets, state, quiet=True)
        raise
    return {"held": _leave(m, targets, state)}


def _on_port(l, port):
    """The same listener, moved to another port."""
    out = dict(l)
    out["port"] = port
    out["address"] = [l["address"][0], port] + list(l["address"][2:])
    return out


def release(pids, mach=None):
    """Lift park's thread holds on pids without recreating anything. SIGCONT alone does not: it undoes only a
    task-level stop (bsd/kern/kern_sig.c), not thread_suspend. park.py sends its signals afterwards."""
    m = _mach(mach)
    for pid in pids:
        targets = {pid: _Target(m, pid, "park release %d" % pid)}
        try:
            targets[pid].attach()
            targets[pid].hold()
        except BaseException:
            _finish(targets, resume=True, quiet=True)
            raise
        _finish(targets, resume=True, parked_too=True)


def hold_socket(listener, backlog=4096):
    """park --hold needs the held socket handed to the parked process, which is not implemented on macOS."""
    raise Error("park --hold is not available on macOS yet (handing the socket over is not implemented)",
                fix="park resume %d, then park %d without --hold" % (listener["port"], listener["port"]))


# ---------------------------------------------------------------------------------------------------------
# Recreating a listener

def sockaddr(family, address):
    """struct sockaddr_in (16 bytes) / sockaddr_in6 (28 bytes), with the BSD length byte first."""
    if family == AF_INET:
        return struct.pack("<BB", 16, AF_INET) + struct.pack(">H", address[1]) + \
            socket.inet_pton(socket.AF_INET, address[0]) + bytes(8)
    flow, scope = (list(address[2:]) + [0, 0])[:2]
    return struct.pack("<BB", 28, AF_INET6) + struct.pack(">HI", address[1], flow) + \
        socket.inet_pton(socket.AF_INET6, address[0]) + struct.pack("<I", scope)


def changelist(api, regs):
    """The kevent changes that re-add registrations with their saved flags, fflags, data and exact udata."""
    out = b""
    for r in regs:
        flags = EV_ADD | (r["flags"] & EV_KEPT) | (EV_DISABLE if r["disabled"] else 0)
        ev = (kevent if api == "kevent" else kevent64_s)()
        ev.ident, ev.filter, ev.flags, ev.fflags = r["ident"], r["filter"], flags, r["fflags"]
        ev.data, ev.udata = r["data"], r["udata"]
        out += bytes(ev)
    return out


def _recreate(targets, plan, force, closed=None):
    """Recreate every listener of plan in its holder; all or nothing. With closed (the (pid, fd) a failed park
    closed), only those fds come back: from a remaining fd of the same socket if there is one."""
    placed = []  # (target, fd) now holding a new socket, closed again if anything fails
    # Every thread is held, so only park's calls change the fd tables: whatever appears was made here, even
    # by a call whose completion park did not see (Uncertain), and is closed again if this fails.
    before = {pid: {fd for fd, _ in _fds(t.m, pid)} for pid, t in targets.items()}
    try:
        for l in plan:
            h = l["holders"][0]
            missing = [f for f in h["fds"] if closed is None or (h["pid"], f["fd"]) in closed]
            present = [f["fd"] for f in h["fds"] if f not in missing]
            if missing:
                _recreate_one(targets[h["pid"]], l, force, placed, missing, present)
    except BaseException:
        for t, fd in reversed(placed):
            try:
                t.call(SYS_close, fd)
            except (OSError, Error):
                pass
        for pid, t in targets.items():
            try:
                extra = {fd for fd, _ in _fds(t.m, pid)} - before[pid]
            except (OSError, Error):
                continue
            for fd in sorted(extra):
                try:
                    t.call(SYS_close, fd)
                except (OSError, Error):
                    pass
        raise


def _recreate_one(t, l, force, placed, missing, present):
    """socket, options, bind, listen(backlog), dup2 to each fd number, O_NONBLOCK and FD_CLOEXEC as they were,
    then the kqueue registrations through the call the kqueue was stamped for. When the socket is still open at
    fd numbers `present`, the `missing` ones are dup2'ed from there instead."""
    h = l["holders"][0]
    numbers = [f["fd"] for f in missing]
    try:
        if present:
            new = present[0]
        else:
            new = t.call(SYS_socket, l["family"], SOCK_STREAM, IPPROTO_TCP)
            placed.append((t, new))
            _configure(t, l, new, force)
        for fd in numbers:
            if fd != new:
                t.call(SYS_dup2, new, fd)  # dup2 leaves FD_CLOEXEC clear
                placed.append((t, fd))
        if not present and new not in numbers:
            t.call(SYS_close, new)
            placed.remove((t, new))
        if l["nonblock"] and not present:
            t.call(SYS_fcntl, numbers[0], F_SETFL, O_NONBLOCK)  # file status: shared by every fd number
        for f in missing:
            if f["cloexec"]:
                t.call(SYS_fcntl, f["fd"], F_SETFD, FD_CLOEXEC)
        by_kq = {}
        for r in h["kqueue"]:
            if r["ident"] in numbers:
                by_kq.setdefault((r["kq"], r["api"]), []).append(r)
        for (kq, api), regs in sorted(by_kq.items()):
            # The API must match the kqueue's stamp, or EINVAL (bsd/kern/kern_event.c kevent_get_kqfile);
            # with no event list the changes are applied and the call returns at once.
            changes = changelist(api, regs)
            if api == "kevent":
                t.call(SYS_kevent, kq, DATA, len(regs), 0, 0, 0, data=changes)
            else:
                t.call(SYS_kevent64, kq, DATA, len(regs), 0, 0, 0, 0, data=changes)
    except OSError as e:
        raise Error("cannot recreate the listener on %s in pid %d (%s)" % (_where(l), h["pid"], e.strerror),
                    errno=e.errno)


def _configure(t, l, new, force):
    """Options, bind and listen on a new socket."""
    reuse = 0
    for level, name, num, kind, value in l["options"]:
        if name == "SO_REUSEADDR":
            reuse = value
        else:
            _setsockopt(t, new, level, num, value, name, force)
    # Borrowed for the bind, so TIME_WAIT entries of the server's own connections do not block it (see time_wait);
    # a live listener on the same address still does (EADDRINUSE), unless both have SO_REUSEPORT.
    _setsockopt(t, new, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR", False)
    addr = sockaddr(l["family"], l["address"])
    try:
        t.call(SYS_bind, new, DATA, len(addr), data=addr)
        t.call(SYS_listen, new, l["backlog"])
    except OSError as e:
        raise Error("cannot listen on %s again: %s" % (_where(l), e.strerror.split(": ", 1)[-1]), errno=e.errno)
    if not reuse:
        _setsockopt(t, new, SOL_SOCKET, SO_REUSEADDR, 0, "SO_REUSEADDR", False)


def _setsockopt(t, fd, level, num, value, name, force):
    data = struct.pack("<i", value)
    try:
        t.call(SYS_setsockopt, fd, level, num, DATA, len(data), data=data)
    except OSError as e:
        if not force:
            raise Error("cannot restore %s on the listener in pid %d: %s" % (name, t.pid, e.strerror),
                        fix="park resume %d --force  (skips options that cannot be restored)" % t.pid)


def _where(l):
    host = l["address"][0]
    return ("[%s]:%d" if ":" in host else "%s:%d") % (host, l["address"][1])
