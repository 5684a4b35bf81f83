"""The seccomp filter bwrap loads into the sandbox (`bwrap --seccomp FD`): a second layer under
the namespaces, compiled by libseccomp through its ctypes binding `pyseccomp`.

What it adds (see docs/howto/sandbox.md): the kernel interfaces an answer has no use for, and
that most local privilege escalations go through, return EPERM: new namespaces of any kind
(including user namespaces, which bwrap's --disable-userns only blocks when we are not root),
mounts, BPF, perf events, userfaultfd, io_uring, keyrings, ptrace and cross-process memory
access, module and kexec loading. Default allow: a denylist keeps every ordinary program
(threads, subprocesses, numpy) working; it narrows the kernel's surface, it is not a whitelist.
"""

from __future__ import annotations

import errno
import functools
import os

# new namespaces through clone(2)'s flags; clone3 passes them in memory seccomp cannot read, so it
# answers ENOSYS and the C library falls back to clone (what Docker and Flatpak do)
_CLONE_NS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
             "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
             "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080}
DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "keyctl", "add_key", "request_key", "ptrace", "process_vm_readv", "process_vm_writev",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "open_by_handle_at",
    "name_to_handle_at", "syslog", "acct", "swapon", "swapoff", "reboot", "quotactl", "lookup_dcookie", "uselib",
)


@functools.lru_cache(maxsize=1)
def seccomp_bpf() -> bytes | None:
    """The compiled filter (a few hundred bytes), or None where libseccomp cannot be loaded."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError, RuntimeError, AttributeError):  # no binding, no libseccomp.so, or one too old
        return None
    f = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except (RuntimeError, OSError, ValueError):  # a syscall this kernel's architecture does not have
            continue
    for flag in _CLONE_NS.values():
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    r, w = os.pipe()
    with os.fdopen(r, "rb") as out:
        with os.fdopen(w, "wb") as sink:
            f.export_bpf(sink)
        return out.read()


def seccomp_fd() -> int | None:
    """A pipe's read end holding the filter, for `bwrap --seccomp FD` (bwrap reads it and closes it)."""
    bpf = seccomp_bpf()
    if bpf is None:
        return None
    r, w = os.pipe()
    os.write(w, bpf)  # far below a pipe's buffer
    os.close(w)
    return r
