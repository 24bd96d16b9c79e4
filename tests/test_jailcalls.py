"""The jail's system calls (sandbox/native/jailcalls.c) against the real kernel.

Each check runs in a forked process, since what these calls do cannot be
undone; the parent reads the verdict from the exit status.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
from collections.abc import Callable

import pytest

from sandbox import jailcalls, landlock

#: uname(2), which a test filter refuses: harmless, and os.uname() reaches it directly.
UNAME = {"x86_64": 63, "aarch64": 160}.get(platform.machine())

BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _in_child(body: Callable[[], bool]) -> int:
    """Run ``body`` in a forked process: 0 if it returned True, 1 if False, 2 if it raised."""
    pid = jailcalls.fork()
    if pid == 0:
        code = 2
        try:
            code = 0 if body() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(UNAME is None, reason="no uname syscall number for this machine")
def test_an_installed_filter_is_enforced_and_stays_in_its_process() -> None:
    program = b"".join([
        _insn(BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
        _insn(BPF_JEQ_K, 0, 1, UNAME),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
        _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ])

    def refused_after_loading() -> bool:
        os.uname()  # allowed before
        jailcalls.seccomp_load(program)
        try:
            os.uname()
        except PermissionError:
            return True
        return False

    assert _in_child(refused_after_loading) == 0
    os.uname()  # the parent never had it


@pytest.mark.parametrize("program", [b"", b"1234567", b"\0" * 8 * 4097])
def test_a_malformed_program_is_refused_before_the_kernel_sees_it(program: bytes) -> None:
    with pytest.raises(ValueError, match="seccomp_load: the program must be 1 to 4096 instructions"):
        jailcalls.seccomp_load(program)


def test_a_landlock_layer_confines_reads_to_its_rules(tmp_path) -> None:
    abi, why = landlock.abi_version()
    if not abi:
        pytest.skip(why)
    allowed, other = tmp_path / "allowed", tmp_path / "other"
    for directory in (allowed, other):
        directory.mkdir()
        (directory / "f").write_text("x")
    ruleset = landlock.Ruleset(abi)
    parent = os.open(allowed, os.O_PATH | os.O_DIRECTORY)
    try:
        jailcalls.landlock_add_path(ruleset.fd, landlock.READ_DIR, parent)
    finally:
        os.close(parent)

    def confined() -> bool:
        jailcalls.no_new_privs()
        jailcalls.landlock_restrict(ruleset.fd)
        if (allowed / "f").read_text() != "x":
            return False
        try:
            (other / "f").read_text()
        except PermissionError:
            return True
        return False

    try:
        assert _in_child(confined) == 0
    finally:
        ruleset.close()
    assert (other / "f").read_text() == "x"  # the parent is not confined


def test_a_failed_call_raises_oserror_with_its_errno_and_its_name() -> None:
    with pytest.raises(OSError, match="landlock_restrict_self: ") as caught:
        jailcalls.landlock_restrict(-1)
    assert caught.value.errno == errno.EBADF
    abi, why = landlock.abi_version()
    if not abi:
        pytest.skip(why)
    ruleset = landlock.Ruleset(abi)
    try:
        with pytest.raises(OSError, match="landlock_add_rule /nowhere: ") as caught:
            ruleset.allow_read(-1, True, "/nowhere")
    finally:
        ruleset.close()
    assert caught.value.errno == errno.EBADF


def _dumpable() -> bool:
    import ctypes  # for the check only: PR_GET_DUMPABLE has no builtin

    return bool(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))


def test_not_dumpable_takes_effect_in_the_calling_process_only() -> None:
    def undumpable() -> bool:
        jailcalls.not_dumpable()
        return not _dumpable()

    assert _in_child(undumpable) == 0
    assert _dumpable()
