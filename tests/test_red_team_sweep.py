"""A red-team sweep: attacks a hostile tenant makes from its own code, for real.

Each test deploys a hostile script into a real ``corral serve`` (the
``corral`` fixture, or ``fresh_corral`` where the attack is on the
supervisor's own resources), runs the attack through a real request and
checks that it failed safely: the call refused (or the child killed, for a
call only an attack makes), the supervisor alive, another tenant served.
What the older suites already try (``test_jail``, ``test_compromised_child``,
``test_hardening``, ``test_red_team``...) is not repeated here.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import pytest

from tests.harness import Corral, status_field
from tests.test_jail import KILLABLE_TEMPLATE, worker

x86_64_only = pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 syscall numbers")

EPERM, ENOENT, EROFS, ENOSYS = 1, 2, 30, 38

CONTROL = '''
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("control ok")
'''


def healthy(corral: Corral) -> None:
    """The supervisor is up and another tenant is served."""
    assert corral.alive(), corral.log()
    corral.deploy("sweep-control", CONTROL)
    r = corral.request("/", host="sweep-control.localhost")
    assert (r.status, r.body) == (200, b"control ok"), r


def failures_since(corral: Corral, before: int) -> list[dict]:
    """Log lines since ``before`` that say a handler of the supervisor's failed."""
    return [e for e in corral.log_events()[before:]
            if e.get("event") in ("child.handler_failed", "pool.after_turn_failed", "serve.crashed")
            or "Traceback" in json.dumps(e)]


def wait_for_log(corral: Corral, predicate, what: str) -> dict:
    """The first log line matching ``predicate``, waited for (the server
    writes it as the event happens; the request that caused it is over)."""
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in corral.log_events() if predicate(e)]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no log line {what}:\n{corral.log()}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------
# the seccomp filter: calls only an attack makes kill the child, and only it
# ---------------------------------------------------------------------------

#: Calls on the policy's kill list that test_jail does not make (x86-64 numbers).
KILLERS = {
    "bpf": "libc.syscall(321, 0, 0, 0)",  # BPF_MAP_CREATE with no attributes
    "perf_event_open": "libc.syscall(298, 0, 0, -1, -1, 0)",
    "userfaultfd": "libc.syscall(323, 0)",
    "process_vm_writev": "libc.syscall(311, supervisor, 0, 0, 0, 0, 0)",
    "process_madvise": "libc.syscall(440, 0, 0, 0, 0, 0)",
    "pidfd_getfd": "libc.syscall(438, 0, 0, 0)",
    "kcmp": "libc.syscall(312, supervisor, os.getpid(), 0, 0, 0)",
    "keyctl": "libc.syscall(250, 0, -3, 0)",  # KEYCTL_GET_KEYRING_ID of the user keyring
    "add_key": 'libc.syscall(248, b"user", b"k", b"v", 1, -4)',
    "request_key": 'libc.syscall(249, b"user", b"k", 0, 0)',
    "name_to_handle_at": 'libc.syscall(303, -100, b"/", 0, 0, 0)',
    "open_by_handle_at": "libc.syscall(304, -100, 0, 0)",
    "fsopen": 'libc.syscall(430, b"tmpfs", 0)',
    "open_tree": 'libc.syscall(428, -100, b"/", 1)',
    "move_mount": 'libc.syscall(429, -1, b"", -100, b"/", 0)',
    "mount_setattr": 'libc.syscall(442, -100, b"/", 0, 0, 0)',
    "io_uring_register": "libc.syscall(427, 0, 0, 0, 0)",
    "init_module": "libc.syscall(175, 0, 0, 0)",
    "modify_ldt": "libc.syscall(154, 0, 0, 0)",
    "iopl": "libc.syscall(172, 3)",
    "syslog": "libc.syscall(103, 3, 0, 0)",
}


@x86_64_only
@pytest.mark.parametrize("attack", sorted(KILLERS))
def test_a_call_only_an_attack_makes_kills_only_its_child(corral: Corral, attack: str) -> None:
    name = f"sweep-kill-{attack.replace('_', '-')}"
    corral.deploy(name, worker(KILLABLE_TEMPLATE.replace("ATTACK", KILLERS[attack])))
    victim = corral.request("/?mode=pid", host=f"{name}.localhost").json()["pid"]
    r = corral.request(f"/?mode=attack&supervisor={corral.proc.pid}", host=f"{name}.localhost")
    assert 500 <= r.status <= 599 and b"survived" not in r.body, f"{attack} was run: {r!r}"
    wait_for_log(corral, lambda e: e.get("event") == "child.seccomp_kill" and e.get("pid") == victim,
                 f"child.seccomp_kill for {victim}")
    healthy(corral)
    assert corral.request("/?mode=pid", host=f"{name}.localhost").json()["pid"] != victim


# ---------------------------------------------------------------------------
# the seccomp filter: calls that reach other processes or the kernel are refused
# ---------------------------------------------------------------------------

PROBE = r'''
import ctypes, fcntl, os, signal, struct
from workers import Response, WorkerEntrypoint

ct = ctypes
libc = ct.CDLL(None, use_errno=True)
libc.syscall.restype = ct.c_long


def sc(*args):
    """A raw system call: [result, errno]."""
    ct.set_errno(0)
    result = libc.syscall(*[ct.c_long(a) if isinstance(a, int) else a for a in args])
    return [result, ct.get_errno()]


def buf(n=128):
    return ct.create_string_buffer(n)


def attempt(fn, *args):
    try:
        return ["ok", fn(*args)]
    except OSError as exc:
        return ["err", exc.errno]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        sup, zygote = [int(x) for x in request.url.split("?", 1)[1].split(",")]
        channel = __import__("workers")._runtime.channel._sock.fileno()
        out = {
            # Signals, scheduling and memory of other processes (there is no
            # PID namespace: the supervisor's and the zygote's pids are real).
            "rt_sigqueueinfo": sc(129, sup, 9, buf()),
            "rt_tgsigqueueinfo": sc(297, sup, sup, 9, buf()),
            "tgkill_supervisor": sc(234, sup, sup, 9),
            "tkill_zygote": sc(200, zygote, 9),
            "pidfd_send_signal": sc(424, 0, 9, 0, 0),
            "sched_setattr": sc(314, 0, buf(56), 0),
            "sched_setscheduler_fifo": sc(144, 0, 1, buf(8)),
            "setpriority_supervisor": sc(141, 0, sup, 19),
            "ioprio_set_supervisor": sc(251, 1, sup, 0),
            "get_robust_list_supervisor": sc(274, sup, buf(8), buf(8)),
            "migrate_pages_supervisor": sc(256, sup, 8, 0, 0),
            "prlimit_supervisor": sc(302, sup, 7, 0, buf(16)),
            "prlimit_pid_high_bits": sc(302, 1 << 32, 7, 0, buf(16)),
            "prlimit_raise_own": sc(302, 0, 7, struct.pack("QQ", 1 << 20, 1 << 20), 0),
            # Namespaces, new processes, executable memory files, personality.
            "unshare_user": sc(272, 0x10000000),
            "setns": sc(308, channel, 0),
            "mount": sc(165, b"none", b"/", b"tmpfs", 0, 0),
            "pivot_root": sc(155, b"/", b"/"),
            "ptrace_attach_supervisor": sc(101, 16, sup, 0, 0),
            "pidfd_open_supervisor": sc(434, sup, 0),
            "clone3": sc(435, buf(88), 88),
            "memfd_create": sc(319, b"x", 0),
            "execveat": sc(322, -100, b"/bin/sh", 0, 0, 0),
            "personality_no_aslr": sc(135, 0x0040000),
            "prctl_set_mm": sc(157, 35, 0, 0, 0, 0),
            "arch_prctl_cpuid": sc(158, 0x1012, 0),
            # Sockets of every other family, and System V / POSIX IPC.
            "socket_netlink": sc(41, 16, 3, 0),
            "socket_packet": sc(41, 17, 3, 0),
            "socket_vsock": sc(41, 40, 1, 0),
            "socket_unix_abstract": sc(41, 1, 1, 0),
            "mq_open": sc(240, b"/corral", 0o100, 0o600, 0),
            "shmget": sc(29, 0, 4096, 0o1666),
            "msgget": sc(68, 0, 0o1666),
            "semget": sc(64, 0, 1, 0o1666),
            # Kernel interfaces the policy never lists.
            "fanotify_init": sc(300, 0, 0),
            "inotify_init": sc(253),
            "membarrier": sc(324, 0, 0, 0),
            "mlockall": sc(151, 3),
            "clock_settime": sc(227, 0, buf(16)),
            "vmsplice": sc(278, 0, 0, 0, 0),
            # A write flag hidden in the upper half of openat's flags.
            "openat_high_bits": sc(257, -100, b"/tmp/x", (1 << 32) | 0o101, 0o644),
            "proc": sc(257, -100, b"/proc/1/environ", 0),
            "dev_kmsg": sc(257, -100, b"/dev/kmsg", 0),
            "sys": attempt(os.listdir, "/sys"),
            # Signal-driven I/O: the kernel signals the descriptor's owner
            # when it is ready, so owning the channel would signal the supervisor.
            "setown_supervisor": sc(72, channel, 8, sup),
            "setown_high_bits": sc(72, channel, (1 << 32) | 8, sup),
            "setown_group": sc(72, channel, 8, -sup),
            "setown_ex": sc(72, channel, 15, struct.pack("ii", 1, sup)),
            # ... while what libraries do with fcntl still works.
            "getfl": sc(72, channel, 3, 0),
            "dupfd_cloexec": sc(72, channel, 1030, 40),
            "setsig": sc(72, channel, 10, 0),
            "getown": sc(72, channel, 9, 0),
        }
        if out["dupfd_cloexec"][0] >= 0:
            os.close(out["dupfd_cloexec"][0])
        return Response.json(out)
'''

#: What each probe must get: [-1, errno] (one of several where the kernel may differ).
REFUSED_WITH = {
    EPERM: ("tgkill_supervisor", "tkill_zygote", "pidfd_send_signal", "setpriority_supervisor",
            "migrate_pages_supervisor", "prlimit_supervisor", "prlimit_pid_high_bits",
            "prlimit_raise_own", "unshare_user", "setns", "mount", "pivot_root",
            "ptrace_attach_supervisor", "pidfd_open_supervisor", "clone3", "memfd_create", "execveat",
            "personality_no_aslr", "prctl_set_mm", "socket_netlink", "socket_packet",
            "socket_vsock", "socket_unix_abstract", "setown_supervisor", "setown_high_bits",
            "setown_group", "setown_ex"),
    ENOSYS: ("rt_sigqueueinfo", "rt_tgsigqueueinfo", "sched_setattr", "sched_setscheduler_fifo",
             "ioprio_set_supervisor", "get_robust_list_supervisor", "arch_prctl_cpuid", "mq_open",
             "shmget", "msgget", "semget", "fanotify_init", "inotify_init", "membarrier", "mlockall",
             "clock_settime", "vmsplice"),
    EROFS: ("openat_high_bits",),
    ENOENT: ("proc", "dev_kmsg"),
}


@x86_64_only
def test_calls_on_other_processes_and_the_kernel_are_refused(corral: Corral) -> None:
    """Among them ``fcntl(channel, F_SETOWN, supervisor)``: with ``O_ASYNC``
    the kernel then signals the supervisor whenever it sends the child a
    frame (SIGKILL, with ``F_SETSIG``), around the refused ``kill``. It was
    allowed; only the kernel's permission check (another uid, Landlock's
    signal scope on 6.12+) stood in the way, and an unprivileged Corral
    runs its children under its own uid."""
    corral.deploy("sweep-probe", PROBE)
    zygote = corral.zygote()
    r = corral.request(f"/?{corral.proc.pid},{zygote}", host="sweep-probe.localhost")
    assert r.status == 200, (r, corral.log())
    out = r.json()
    for errno, names in REFUSED_WITH.items():
        for name in names:
            assert out[name] == [-1, errno], (name, out[name])
    assert out["sys"] == ["err", ENOENT], out["sys"]
    assert out["getfl"][0] >= 0 and out["dupfd_cloexec"][0] >= 3, out
    assert out["setsig"] == [0, 0] and out["getown"] == [0, 0], out  # nobody owns the channel
    # A second request sends the child frames: nobody was signalled.
    assert corral.request(f"/?{corral.proc.pid},{zygote}", host="sweep-probe.localhost").status == 200
    assert corral.zygote() == zygote
    healthy(corral)


# ---------------------------------------------------------------------------
# a child that does not read its channel
# ---------------------------------------------------------------------------

#: The start of every compromised child below: ``M`` (protocol.messages) and
#: ``encode``, with which a child that skips the SDK writes frames of its own,
#: and ``refused_calls``, the frames of a flood of calls refused at once.
RAW = r'''
import array, asyncio, os, select, socket, struct, sys, time
import workers
from workers import Response, WorkerEntrypoint, fetch

M = sys.modules["protocol.messages"]
encode = sys.modules["msgspec"].msgpack.Encoder().encode


def reserve_calls(count):
    """The first of ``count`` call ids taken past the runtime's own (fresh
    negative ids, below every one it made), for frames sent by hand."""
    runtime = workers._runtime
    first = runtime._next_call
    runtime._next_call = first - count
    return first


def refused_calls(inv, call, count):
    """``count`` framed binding calls below ``call`` on a binding the worker
    does not have (each refused at once); the last call number and the bytes."""
    blob = bytearray()
    for _ in range(count):
        call -= 1
        frame = encode(M.BindingCall(call, inv, "NOPE", "get"))
        blob += struct.pack(">I", len(frame)) + frame
    return call, blob
'''


FLOOD = RAW + r'''


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        runtime = workers._runtime
        inv = workers.current_invocation.get()
        call = reserve_calls(10**9)
        fd = runtime.channel._sock.fileno()
        batches = int(request.url.split("batches=")[1])
        poll = select.poll()
        poll.register(fd, select.POLLOUT)
        written = 0
        # Binding calls on a binding it does not have: each is answered
        # with a refusal, which this child never reads (its loop is here).
        for _ in range(batches):
            call, blob = refused_calls(inv, call, 5000)
            view = memoryview(blob)
            while view:
                if not poll.poll(2000):  # the supervisor stopped reading it
                    return Response.json({"written": written, "held": True})
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    continue
                view = view[n:]
                written += n
        return Response.json({"written": written, "held": False})
'''


def _peak_rss_mb(pid: int) -> float:
    return status_field(pid, "VmHWM") / 1024


def test_a_child_that_does_not_read_its_answers_is_not_read_either(fresh_corral: Corral) -> None:
    """Every frame the supervisor reads may queue an answer for the child,
    and an answer earns back the frame allowance: a child writing cheap
    calls and never reading made the supervisor hold the answers, 840 MB
    for 14 MB of calls in one request (unbounded: the host's memory, every
    tenant's). Now a child with more than a few MB queued is not read until
    it takes them: its own writes block."""
    corral = fresh_corral
    healthy(corral)
    corral.deploy("sweep-flood", FLOOD)
    before = _peak_rss_mb(corral.proc.pid)
    r = corral.request("/?batches=600", host="sweep-flood.localhost", timeout=120)
    assert r.status == 200, (r, corral.log())
    out = r.json()
    assert out["held"] is True, out
    grown = _peak_rss_mb(corral.proc.pid) - before
    assert grown < 150, f"the supervisor grew by {grown:.0f} MB holding a child's unread answers"
    line = wait_for_log(corral, lambda e: e.get("event") == "child.frames_throttled", "child.frames_throttled")
    assert "does not read" in line["reason"] and line["script"] == "default/sweep-flood", line
    # Its answers were all taken in the end: the child serves again, and so does everyone.
    assert corral.request("/?batches=1", host="sweep-flood.localhost").json()["held"] is False
    healthy(corral)


# ---------------------------------------------------------------------------
# tail-call claims (SubRequest.tail) only ever answer the claimant's own request
# ---------------------------------------------------------------------------

TAIL = r'''
import asyncio, json
import workers
from workers import DurableObject, Request, Response, WorkerEntrypoint


def claim(url):
    """A call that claims to be a tail call (SubRequest.tail), wherever it is made."""
    return workers._runtime.sub_request("fetch", Request(url), tail=True)


class Claimer(DurableObject):
    async def fetch(self, request):
        # Not an HTTP request's invocation: its answer is not a response.
        r = await claim(request.url)
        return Response("object:" + str(r.status) + ":" + await r.text())


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        mode = request.url.split("mode=")[1].split("&")[0]
        target = request.url.split("target=")[1]
        if mode == "many":
            # Many claims at once: one may answer; the others are ordinary calls.
            answers = await asyncio.gather(*[claim(f"{target}{i}") for i in range(8)])
            return Response("mine:" + ",".join(str(a.status) for a in answers))
        if mode == "after":
            async def later():
                r = await claim(target + "late")
                await r.text()
            self.ctx.waitUntil(later())
            return Response("mine-first")
        if mode == "object":
            stub = self.env.OBJ.getByName("o")
            return await stub.fetch(Request(target + "object"))
        if mode == "ignored":
            await claim(target + "ignored")
            return Response("mine-after-claim")
        return Response("?")
'''


def test_false_tail_claims_only_ever_answer_the_claimants_own_request(corral: Corral, upstream) -> None:
    corral.deploy("sweep-tail", TAIL, bindings=[
        {"type": "durable_object_namespace", "name": "OBJ", "class_name": "Claimer"}])
    target = upstream.url("/echo/")
    before = len(corral.log_events())
    host = "sweep-tail.localhost"

    # Eight claims at once: the client gets exactly one response, a callee's
    # (the first answered) or the handler's own, never a mix.
    r = corral.request(f"/?mode=many&target={target}", host=host)
    assert r.status == 200, r
    assert r.text.startswith("mine:") or json.loads(r.body)["path"].startswith("/echo/"), r

    # A claim after the response: the response stands; the call is an ordinary one.
    r = corral.request(f"/?mode=after&target={target}", host=host)
    assert (r.status, r.text) == (200, "mine-first"), r

    # In a Durable Object's invocation (an event, not the client's request):
    # the object answers with what it read of the call.
    r = corral.request(f"/?mode=object&target={target}", host=host)
    assert r.status == 200 and r.text.startswith("object:200:"), r
    assert json.loads(r.text.split(":", 2)[2])["path"] == "/echo/object", r

    # A claim whose result the handler ignores answers its own request only.
    r = corral.request(f"/?mode=ignored&target={target}", host=host)
    assert r.status == 200, r
    assert r.text == "mine-after-claim" or json.loads(r.body)["path"] == "/echo/ignored", r

    assert not failures_since(corral, before), failures_since(corral, before)
    healthy(corral)


# ---------------------------------------------------------------------------
# bodies held by the supervisor for a call
# ---------------------------------------------------------------------------

OVERSIZED_INLINE = RAW + r'''


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        runtime = workers._runtime
        call = reserve_calls(10**6)
        url = request.url.split("url=")[1]
        size = M.MAX_CHUNK + 1 if "big" in request.url else M.MAX_CHUNK
        # What the runtime streams, sent inline: the supervisor would hold it
        # (a frame may be 1 MB) for as long as the call waits.
        answer = runtime.calls[call] = runtime.loop.create_future()
        runtime.send(M.SubRequest(call, workers.current_invocation.get(), "fetch", b"POST",
                                  url, [], body=M.Inline(b"x" * size)))
        answer = await answer
        return Response(str(getattr(answer, "status", answer)))
'''


def test_an_inline_body_larger_than_a_chunk_kills_its_child(corral: Corral, upstream) -> None:
    """A body inline in a frame is held by the supervisor while its call
    waits; a child sending 1 MB ones (the frame limit) to a server that
    never answered made the supervisor hold 515 MB for 500 calls of one
    request, 16 times what the runtime can make it hold (it streams any
    body over :data:`MAX_CHUNK`). Such a frame is now a protocol violation."""
    corral.deploy("sweep-inline", OVERSIZED_INLINE)
    host = "sweep-inline.localhost"
    # The runtime's own limit passes.
    ok = corral.request(f"/?url={upstream.url('/echo/inline-ok')}", host=host)
    assert (ok.status, ok.text) == (200, "200"), ok
    r = corral.request(f"/?big&url={upstream.url('/echo/inline-big')}", host=host)
    assert 500 <= r.status <= 599, r
    line = wait_for_log(corral, lambda e: e.get("event") == "child.ended"
                        and "inline body" in str(e.get("reason")), "child.ended for an inline body")
    assert line["script"] == "default/sweep-inline" and "protocol violation" in line["reason"], line
    assert not upstream.seen("/echo/inline-big"), "the oversized body was sent on"
    healthy(corral)


# ---------------------------------------------------------------------------
# values the channel's decoder must refuse
# ---------------------------------------------------------------------------

DEEP = RAW + r'''


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        depth = int(request.url.split("depth=")[1])
        runtime = workers._runtime
        call = reserve_calls(10**6)
        answer = runtime.calls[call] = runtime.loop.create_future()
        # Arrays nested ``depth`` deep, as no encoder in the child would make
        # them (its own recursion limit): written as bytes, within one frame.
        frame = encode(M.BindingCall(call, workers.current_invocation.get(), "KV", "get", ["@@@@"]))
        frame = frame.replace(encode("@@@@"), b"\x91" * depth + encode("k"))
        runtime.channel._out += struct.pack(">I", len(frame)) + frame
        runtime.channel.push()
        answer = await answer
        return Response(type(answer).__name__ + ":" + answer.error.message)
'''


@pytest.mark.parametrize("depth", [900, 5_000, 1_000_000])
def test_a_value_nested_past_any_limit_is_refused_at_the_channel(corral: Corral, depth: int) -> None:
    """msgpack arrays nested ``depth`` deep in one frame (1 MB at most):
    decoded as a call's argument while under the recursion limit (and the
    call refused by name), else a malformed frame that kills the child."""
    corral.deploy("sweep-deep", DEEP, bindings=[{"type": "kv_namespace", "name": "KV", "namespace_id": "kv-deep"}])
    before = len(corral.log_events())
    r = corral.request(f"/?depth={depth}", host="sweep-deep.localhost")
    if depth < 1000:
        assert (r.status, r.text) == (200, "SubFailed:key must be a string, got list"), r
    else:
        assert 500 <= r.status <= 599, r
        line = wait_for_log(corral, lambda e: e.get("event") == "child.ended"
                            and e.get("script") == "default/sweep-deep"
                            and "malformed frame" in str(e.get("reason")), "child.ended for a deep frame")
        assert "protocol violation" in line["reason"], line
    assert not failures_since(corral, before), failures_since(corral, before)
    healthy(corral)


# ---------------------------------------------------------------------------
# calls refused at once, as fast as a child can write them
# ---------------------------------------------------------------------------

CALL_FLOOD = RAW + r'''


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        runtime = workers._runtime
        inv = workers.current_invocation.get()
        call = reserve_calls(10**9)
        total = int(request.url.split("frames=")[1])
        # Calls on a binding it does not have, each refused at once; the
        # refusals are read (and dropped: no future waits for them).
        for _ in range(total // 2000):
            call, blob = refused_calls(inv, call, 2000)
            runtime.channel._out += blob
            runtime.channel.push()
            await runtime.channel.drain(1)
        return Response("done")
'''


def test_a_flood_of_calls_refused_at_once_is_throttled(corral: Corral) -> None:
    """Each frame a child sends costs the supervisor's one loop; its frame
    allowance bounds that, and every frame the supervisor sends it used to
    earn 256 more, answers to its own calls included: a child writing calls
    refused at once (and reading the refusals) was never throttled, and
    kept the loop every tenant's request crosses busy for as long as its
    request lasted (2.5 million frames in 8 s). Answers earn nothing now."""
    corral.deploy("sweep-call-flood", CALL_FLOOD)
    before = len(corral.log_events())
    r = corral.request("/?frames=100000", host="sweep-call-flood.localhost", timeout=60)
    assert (r.status, r.text) == (200, "done"), r
    throttled = [e for e in corral.log_events()[before:] if e.get("event") == "child.frames_throttled"
                 and e.get("script") == "default/sweep-call-flood"]
    assert any("more frames than its answers and time allow" in e["reason"] for e in throttled), \
        corral.log()[-3000:]
    healthy(corral)


# ---------------------------------------------------------------------------
# a queue consumer's decisions
# ---------------------------------------------------------------------------

QUEUE_CONSUMER = r'''
import math
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await self.env.Q.send({"n": 1})
        return Response("sent")

    async def queue(self, batch, env, ctx):
        for message in batch.messages:
            # Around the SDK's check (0 to 43200 s): its own record of the decision.
            batch._retried[message.id] = math.nan
'''


def test_a_queue_retry_delay_no_storage_can_take_kills_its_child(corral: Corral) -> None:
    """A retry delay of NaN (SQLite's NULL) failed the batch's settling
    every second for ever, each time with a warning; infinite or negative
    ones were stored as they came. The supervisor now checks a consumer's
    decisions as the SDK does, and a child that skips the SDK is killed:
    the batch is retried as after any failure."""
    corral.deploy("sweep-queue", QUEUE_CONSUMER,
                  bindings=[{"type": "queue", "name": "Q", "queue_name": "sweep-jobs"}],
                  extra_metadata={"queue_consumers": [
                      {"queue": "sweep-jobs", "max_batch_size": 1, "max_batch_timeout": 0.1, "max_retries": 0}]})
    before = len(corral.log_events())
    assert corral.request("/", host="sweep-queue.localhost").text == "sent"
    line = wait_for_log(corral, lambda e: e.get("event") == "child.ended"
                        and e.get("script") == "default/sweep-queue"
                        and "queue retry delay" in str(e.get("reason")), "child.ended for a NaN delay")
    assert "protocol violation" in line["reason"] and "nan" in line["reason"], line
    assert not [e for e in corral.log_events()[before:] if e.get("event") == "queue.storage_failed"]
    assert not failures_since(corral, before), failures_since(corral, before)
    healthy(corral)


FD_PASSER = RAW + r"""


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        runtime = workers._runtime
        runtime.channel.push()
        sock = runtime.channel._sock
        inv = workers.current_invocation.get()
        sent = 0
        # Its /dev/null, 16 times a message, riding on valid frames (a log
        # line each): a supervisor that took descriptors in would hold
        # them, and run out. (The kernel refuses more in flight than the
        # sender's own descriptor limit: ETOOMANYREFS, then the frame alone.)
        fds = array.array("i", [0] * 16).tobytes()
        for i in range(200):
            frame = encode(M.Log(inv, "log", f"passing {i}", time.time() * 1000))
            data = struct.pack(">I", len(frame)) + frame
            try:
                sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                sent += 16
            except OSError:
                sock.sendmsg([data])
        return Response(str(sent))
"""


def test_descriptors_passed_on_the_channel_are_never_taken_in(corral: Corral) -> None:
    """A child may attach descriptors (SCM_RIGHTS) to what it writes on its
    channel; the supervisor reads without ancillary data, so the kernel
    closes them, and its descriptor table does not grow."""
    corral.deploy("sweep-fds", FD_PASSER)
    assert corral.request("/", host="sweep-fds.localhost").status == 200  # warm
    before = len(list(Path(f"/proc/{corral.proc.pid}/fd").iterdir()))
    r = corral.request("/", host="sweep-fds.localhost")
    assert r.status == 200 and int(r.text) > 0, r
    after = len(list(Path(f"/proc/{corral.proc.pid}/fd").iterdir()))
    assert after < before + 100, (before, after)
    healthy(corral)


BIG_HEAD = RAW + r"""


async def raw_call(url, params):
    # A call as only a child that skips the SDK makes it: with parameters.
    runtime = workers._runtime
    call = reserve_calls(1)
    answer = runtime.calls[call] = runtime.loop.create_future()
    runtime.send(M.SubRequest(call, workers.current_invocation.get(), "fetch", b"GET", url, [],
                              params=params))
    answer = await answer
    if isinstance(answer, M.SubFailed):
        raise workers.platform_error(answer.error.name, answer.error.message)
    return answer


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        what = request.url.split("what=")[1].split("&")[0]
        size = int(request.url.split("size=")[1].split("&")[0])
        url = request.url.split("url=")[1]
        try:
            if what == "headers":
                r = await fetch(url, headers={"x-big": "x" * size})
            elif what == "url":
                r = await fetch(url + "?" + "q" * size)
            else:
                r = await raw_call(url, {"p": "x" * size})
            return Response(f"sent {r.status}")
        except Exception as exc:
            return Response(f"refused {exc}")
"""


@pytest.mark.parametrize("what, fits, past, words", [
    ("headers", 60_000, 200_000, "the request's headers are too large: 200005 bytes"),
    ("url", 10_000, 20_000, "the request's URL is too long"),
    ("params", 10_000, 200_000, "the call's method, target and parameters are too large"),
])
def test_a_call_whose_head_is_past_its_limits_is_refused(corral: Corral, upstream, what: str, fits: int,
                                                        past: int, words: str) -> None:
    """The supervisor keeps a call's head for as long as the call waits,
    and a frame may be 1 MB: 500 fetches with a 1 MB header to a server that
    never answered held 520 MB, as many with 1 MB of outbound parameters
    (which a plain fetch does not even use) as much. Past Cloudflare's limits
    (headers 128 KB, URL 16 KB; the rest of a head 64 KB) a call is refused
    with an error saying which; the request itself goes on."""
    corral.deploy("sweep-head", BIG_HEAD)
    host = "sweep-head.localhost"
    r = corral.request(f"/?what={what}&size={fits}&url={upstream.url(f'/echo/{what}-fits')}", host=host)
    assert r.text == "sent 200", r
    r = corral.request(f"/?what={what}&size={past}&url={upstream.url(f'/echo/{what}-past')}", host=host)
    assert r.status == 200 and r.text.startswith("refused ") and words in r.text, r
    assert not upstream.seen(f"/echo/{what}-past")
    healthy(corral)


# ---------------------------------------------------------------------------
# what a tenant can read of other tenants' traffic
# ---------------------------------------------------------------------------

IDS = '''
import os
import workers
from workers import Response, WorkerEntrypoint

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(f"{workers.current_invocation.get()} {os.getpid()}")
'''


def test_invocation_ids_say_nothing_of_other_tenants_traffic(corral: Corral) -> None:
    """The id of each invocation a child is sent is its own pid and its own
    count. One count for the whole host told a tenant, from the gap between
    two of its ids, how many requests every other tenant got meanwhile."""
    corral.deploy("sweep-ids", IDS)
    corral.deploy("sweep-control", CONTROL)
    first, pid = map(int, corral.request("/", host="sweep-ids.localhost").text.split())
    for _ in range(30):
        assert corral.request("/", host="sweep-control.localhost").status == 200
    second, same_pid = map(int, corral.request("/", host="sweep-ids.localhost").text.split())
    assert same_pid == pid, "the same child was to serve both"
    assert second - first == 1, (first, second)
    assert first >> 31 == pid, (first, pid)


# ---------------------------------------------------------------------------
# record locks and dnotify on the files every tenant shares
# ---------------------------------------------------------------------------

LOCKS = r'''
import errno
import fcntl
import os
import struct
from workers import Response, WorkerEntrypoint

# struct flock on x86_64: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad)
FLOCK = "hhxxxxqqixxxx"
HELD = []


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        shared = os.__file__  # read-only, and open to every tenant
        if request.url.endswith("/hold"):
            fd = os.open(shared, os.O_RDONLY)
            HELD.append(fd)
            # A read lock on bytes 7..9: the first "bits" of a message.
            fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack(FLOCK, fcntl.F_RDLCK, 0, 7, 3, 0))
            return Response("held")
        fd = os.open(shared, os.O_RDONLY)
        try:
            probe = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(FLOCK, fcntl.F_WRLCK, 0, 0, 0, 0))
            kind, _, _, _, pid = struct.unpack(FLOCK, probe)
            try:
                fcntl.fcntl(fd, 1026, 0x1 | 0x80000000)  # F_NOTIFY: DN_ACCESS | DN_MULTISHOT
                notify = "allowed"
            except OSError as e:
                notify = errno.errorcode[e.errno]
        finally:
            os.close(fd)
        return Response.json({"unlocked": kind == fcntl.F_UNLCK, "pid": pid, "notify": notify})
'''


def test_tenants_see_no_record_lock_and_no_dnotify_of_each_other(corral: Corral) -> None:
    """A read lock on a shared read-only file was seen by every other tenant
    (F_GETLK), with its holder's host pid: a covert channel across tenants.
    dnotify on a shared folder told a tenant when another read it. Locks now
    succeed and lock nothing; F_NOTIFY is refused."""
    corral.deploy("sweep-locker", LOCKS)
    corral.deploy("sweep-peeker", LOCKS)
    assert corral.request("/hold", host="sweep-locker.localhost").text == "held"
    out = corral.request("/peek", host="sweep-peeker.localhost").json()
    assert out == {"unlocked": True, "pid": 0, "notify": "ENOSYS"}, out


PROCESS_SPY = r'''
import ctypes
import errno
import time
from workers import Response, WorkerEntrypoint

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
GETPGID, GETSID, SCHED_GETSCHEDULER, CLOCK_GETTIME, FUTEX = 121, 124, 145, 228, 202


def raw(number, *args):
    ctypes.set_errno(0)
    result = libc.syscall(number, *args)
    return result if result >= 0 else errno.errorcode[ctypes.get_errno()]


def cpu_clock_of(pid):
    return (~pid << 3) | 2  # a process's CPU clock, as glibc's clock_getcpuclockid names it


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        other = int(request.url.rsplit("=", 1)[1])
        spec = (ctypes.c_long * 2)()
        word = ctypes.c_uint32(0)
        return Response.json({
            "own_pgid": raw(GETPGID, 0) > 0,
            "other_pgid": raw(GETPGID, other),
            "other_sid": raw(GETSID, other),
            "other_scheduler": raw(SCHED_GETSCHEDULER, other),
            "other_cpu_clock": raw(CLOCK_GETTIME, cpu_clock_of(other), ctypes.byref(spec)),
            "own_cpu_time": time.process_time() > 0,
            "own_cpu_clock": raw(CLOCK_GETTIME, 2, ctypes.byref(spec)),
            # FUTEX_WAKE_PRIVATE, as glibc makes it; FUTEX_WAKE (shared), as on a
            # page of a file every tenant maps.
            "private_wake": raw(FUTEX, ctypes.byref(word), 1 | 128, 1, 0, 0, 0),
            "shared_wake": raw(FUTEX, ctypes.byref(word), 1, 1, 0, 0, 0),
        })
'''


@x86_64_only
def test_a_tenant_sees_no_other_process_nor_its_cpu_clock_nor_a_shared_futex(corral: Corral) -> None:
    """Any pid's process group, session, scheduling policy and CPU clock were
    readable (a tenant watched another's CPU time per request, and the
    supervisor's); a shared futex on a page of a file every tenant maps woke
    another tenant's wait (a covert channel). All are about the caller only now."""
    corral.deploy("sweep-procspy", PROCESS_SPY)
    out = corral.request(f"/?pid={corral.proc.pid}", host="sweep-procspy.localhost").json()
    assert out == {"own_pgid": True, "other_pgid": "EPERM", "other_sid": "EPERM",
                   "other_scheduler": "EPERM", "other_cpu_clock": "EPERM", "own_cpu_time": True,
                   "own_cpu_clock": 0, "private_wake": 0, "shared_wake": "EPERM"}, out
