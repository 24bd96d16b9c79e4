"""A sandboxed child: jail, then serve one script's events over the channel.

The order in :func:`main` is the security argument: the jail (including the
seccomp filter) is complete before the channel is read at all, so not even a
frame that was already buffered on the socket can run before the filter.

One asyncio loop serves every invocation of the script concurrently; each
invocation is one task, and everything it does outside the process (a
dispatch stub's ``fetch``, an outbound ``fetch``) is a *call* answered by the
supervisor.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import re
import resource
import select
import selectors
import socket
import sys
import time
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import greenlet
import msgspec

from protocol.messages import (
    MAX_CHUNK,
    PROTOCOL_VERSION,
    STREAMED,
    Abort,
    AssetsBinding,
    BindingResult,
    Body,
    BodyChunk,
    BrokeredBinding,
    ByRef,
    Cancel,
    Credit,
    DispatchNamespaceBinding,
    ExceptionInfo,
    Hello,
    Inline,
    Invoke,
    InvokeDone,
    InvokeFailed,
    JsonBinding,
    Limits,
    Load,
    Loaded,
    Log,
    Release,
    Report,
    ResponseStart,
    ScriptBundle,
    ServiceBinding,
    Socket,
    SubFailed,
    SubRequest,
    SubResponse,
    TextBinding,
    Trim,
)

from . import bindings as storage_bindings
from . import (
    compat,
    content_coding,
    durable_objects,
    events,
    jail,
    landlock,
    loader,
    logs,
    reshare,
    stdlib_shims,
    tail_call,
    thread_shims,
    unavailable,
    warmup,
    websockets,
    workers,
)
from .channel import Channel
from .cpu_budgets import MESSAGE as CPU_MESSAGE
from .cpu_budgets import CpuBudgets, CpuLimitExceeded
from .pyodide_shim import JsException
from .run_sync import cancel_waits
from .streams import IncomingBody, OutgoingBody, pump

#: Log budget per invocation, and the channel backlog past which logs are dropped.
MAX_LOG_LINES = 1000
MAX_LOG_BYTES = 256 * 1024
MAX_LOG_BACKLOG = 1024 * 1024

#: Exit status of a child that ran out of memory (the supervisor maps it to
#: ``exceededMemory`` together with its own measurement).
EXIT_OUT_OF_MEMORY = 3


class _Handled(Exception):
    """A non-request event's handler returned: skip the response path."""


_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


#: Where a script version's files are (supervisor.pool.bundles): .../bundles/<name>/ (a keyed hash of the version)
_BUNDLE_PREFIX = re.compile(r"^.*/bundles/[0-9a-f]+/")


def _tenant_stack(exc: BaseException) -> str:
    """The traceback without the runtime's own frames (the tenant's code is what matters)."""
    summary = traceback.TracebackException.from_exception(exc)
    seen: set[int] = set()
    part: traceback.TracebackException | None = summary
    while part is not None and id(part) not in seen:  # the exception and what it was raised from
        seen.add(id(part))
        frames = [f for f in part.stack if not f.filename.startswith(_RUNTIME_DIR)]
        for frame in frames:
            # The tenant's own files by their path in its project, as on
            # Cloudflare (and without the host's state directory in them).
            frame.filename = _BUNDLE_PREFIX.sub("", frame.filename)
        part.stack = traceback.StackSummary.from_list(frames)
        if getattr(part.exc_type, "__module__", "").startswith("sandbox."):
            # The runtime's own class (a callee's error re-raised, a binding's)
            # by the name the trace gives it, not its module path in the runtime.
            name = getattr(exc, "name", None) if part is summary else None
            part.exc_type = _named(name or part.exc_type.__name__)
        part = part.__cause__ or part.__context__
    return "".join(summary.format())


def _named(name: str) -> type:
    """A stand-in exception class that prints as ``name``, bare."""
    return type(str(name), (Exception,), {"__module__": "builtins"})


def exception_info(exc: BaseException, with_stack: bool = True) -> ExceptionInfo:
    stack = _tenant_stack(exc) if with_stack else ""
    # A platform error keeps its platform name (exceededCpu, WorkerNotFound, ...)
    # so the supervisor can tell the outcome when tenant code lets it escape;
    # any JsException its JavaScript name (TypeError, ...), as Cloudflare reports it.
    name = exc.name if isinstance(exc, JsException) else type(exc).__name__
    return ExceptionInfo(logs.wire_text(logs.cut(str(name), 256)),
                         logs.wire_text(logs.cut(logs.strip_state_paths(logs.exception_text(exc)))),
                         logs.wire_text(logs.strip_state_paths(stack)[-8192:]))


# ---------------------------------------------------------------------------
# env and dispatch-namespace stubs
# ---------------------------------------------------------------------------


#: ``options["limits"]`` keys, in each spelling tenants use, per Limits field.
_LIMIT_KEYS: dict[str, tuple[str, ...]] = {
    "cpu_ms": ("cpuMs", "cpu_ms"),
    "sub_requests": ("subRequests", "sub_requests", "subrequests"),
    "wall_ms": ("wallMs", "wall_ms", "wallTimeMs", "wall_time_ms"),
    "memory_mb": ("memoryMb", "memory_mb", "memoryMB"),
}
_INTEGER_LIMITS = frozenset({"sub_requests", "memory_mb"})


def _limit_value(field: str, key: str, value: Any) -> float | int:
    """One limit, checked here so that a bad value is the caller's TypeError
    (naming the field), never a frame the supervisor must refuse."""
    where = f"dispatcher.get(): options.limits.{key}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number, got {type(value).__name__} {value!r}")
    if value != value or value in (float("inf"), float("-inf")) or value <= 0:
        raise TypeError(f"{where} must be a positive finite number, got {value!r}")
    if field in _INTEGER_LIMITS:
        if value != int(value):
            raise TypeError(f"{where} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _limits_from(options: Any) -> tuple[Limits | None, dict | None]:
    """Read and check ``options`` of ``dispatcher.get`` (camelCase or snake_case keys)."""
    if options is None:
        return None, None
    if not isinstance(options, dict):
        raise TypeError(f"dispatcher.get(): options must be a dict, got {type(options).__name__}")
    raw = options.get("limits")
    limits = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise TypeError(f"dispatcher.get(): options.limits must be a dict, got {type(raw).__name__}")
        known = {key for keys in _LIMIT_KEYS.values() for key in keys}
        unknown = sorted(str(k) for k in raw if k not in known)
        if unknown:
            raise TypeError(f"dispatcher.get(): unknown options.limits key {unknown[0]!r}; "
                            "known: cpuMs, subRequests, wallMs, memoryMb")
        values: dict[str, Any] = {}
        for field, keys in _LIMIT_KEYS.items():
            for key in keys:
                if raw.get(key) is not None:
                    values[field] = _limit_value(field, key, raw[key])
                    break
        limits = Limits(**values) if values else None
    outbound = options.get("outbound")
    params = None
    if outbound is not None:
        if not isinstance(outbound, dict) or not all(isinstance(k, str) for k in outbound):
            raise TypeError("dispatcher.get(): options.outbound must be a dict with string keys")
        params = dict(outbound)
        try:
            msgspec.msgpack.encode(params)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"dispatcher.get(): options.outbound values must be plain data "
                            f"(str, numbers, bool, None, lists, dicts): {exc}") from None
    return limits, params


class Fetcher:
    """A stub whose ``fetch`` invokes another worker through the supervisor."""

    def __init__(self, runtime: Runtime, kind: str, binding: str, target: str,
                 options: dict | None = None) -> None:
        self._runtime = runtime
        self._kind = kind
        self._binding = binding
        self._target = target
        self._limits, self._params = _limits_from(options)

    async def fetch(self, resource: Any, *extra: Any, method: str | None = None, headers: Any = None,
                    body: Any = None, redirect: str | None = None, **init: Any) -> workers.Response:
        workers.one_positional(extra)
        request = workers.as_request(resource, method, headers, body, redirect)
        return await self._runtime.sub_request(
            self._kind, request, binding=self._binding, target=self._target,
            limits=self._limits, params=self._params, tail=tail_call.is_tail(sys._getframe(1)),
        )

    def dup(self) -> Fetcher:
        """A copy of the stub (Cloudflare's reserved ``dup``: never an RPC call)."""
        copy = Fetcher.__new__(Fetcher)
        copy.__dict__.update(self.__dict__)
        return copy

    def __getattr__(self, name: str) -> Any:
        """Workers RPC: ``await env.SERVICE.method(*args)`` calls ``method`` on
        the service's ``Default`` entrypoint (a dispatch stub's user worker
        too). Arguments and result are plain data (keywords travel as one
        trailing object, as Cloudflare's SDK passes them to JavaScript)."""
        if name.startswith("_") or self._kind == "assets":
            raise AttributeError(name)

        async def rpc(*args: Any, **kwargs: Any) -> Any:
            from .bindings.durable_objects import decode_result, encode_rpc

            body, functions = await encode_rpc([*args, kwargs] if kwargs else list(args), f"{name}()")
            request = workers.Request(f"https://rpc.invalid/{name}", method="POST", body=body)
            response = await self._runtime.sub_request(
                self._kind, request, binding=self._binding, target=self._target,
                limits=self._limits, params=self._params, rpc=name, functions=functions)
            return decode_result(await response.bytes(), getattr(response, "_rpc_functions", ()))

        rpc.__name__ = name
        return rpc

    def __repr__(self) -> str:
        return f"<Fetcher {self._kind} {self._target!r}>"


class DispatchNamespace:
    """``env.dispatcher``: ``get(name, args=None, options=None)`` gives a stub."""

    def __init__(self, runtime: Runtime, binding: str) -> None:
        self._runtime = runtime
        self._binding = binding

    def get(self, name: str, args: Any = None, options: dict | None = None) -> Fetcher:
        if not isinstance(name, str) or not name:
            raise TypeError("dispatcher.get() needs a script name")
        return Fetcher(self._runtime, "dispatch", self._binding, name, options)


class Env:
    """``self.env``: bindings as attributes (and items, for ``env["X"]``)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)

    def __getitem__(self, name: str) -> Any:
        return self.__dict__[name]

    def __contains__(self, name: str) -> bool:
        return name in self.__dict__

    def get(self, name: str, default: Any = None) -> Any:
        return self.__dict__.get(name, default)

    def __repr__(self) -> str:
        return f"<Env {sorted(self.__dict__)}>"


# ---------------------------------------------------------------------------
# The runtime
# ---------------------------------------------------------------------------


#: What the trace's logs say when the supervisor ends ``waitUntil`` work at
#: its deadline (Cloudflare's wording).
WAIT_UNTIL_CANCELED = ("waitUntil() tasks did not complete within the allowed time after "
                       "invocation end and have been cancelled.")


class _Handled(Exception):
    """An event other than a request was answered; nothing more to send."""


class _Invocation:
    __slots__ = ("task", "background", "responded", "lingering", "background_error", "answered",
                 "cpu_exceeded")

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.background: set[asyncio.Task] = set()
        self.responded = False
        #: The handler is over; only ``waitUntil`` work keeps the invocation open.
        self.lingering = False
        #: The first exception ``waitUntil`` work raised: a queue batch's fate
        #: depends on it.
        self.background_error: BaseException | None = None
        #: The response of a tail call the supervisor already answered this
        #: invocation with (sandbox.tail_call): returned, it is not sent again.
        self.answered: workers.Response | None = None
        #: Its CPU budget ran out while it shared the child (sandbox.cpu_budgets):
        #: its failure is sent; nothing more is said of how it ended.
        self.cpu_exceeded = False


_EVENT_READ, _EVENT_WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
# asyncio's own bounds for its turn (asyncio.base_events), kept by ChildLoop's.
_MAX_SELECT_TIMEOUT_S = 24 * 3600
_MIN_SCHEDULED_TIMER_HANDLES = 100
_MIN_CANCELLED_TIMER_HANDLES_FRACTION = 0.5
#: Generations of callbacks one turn of ChildLoop runs before it polls for
#: I/O again (asyncio's turn: one). Three carry a request from its frame to
#: the write of its answer; a tenant's callbacks that keep making more (a
#: loop of ``await asyncio.sleep(0)``) still let the channel be read every
#: third generation.
_PASSES = 3

#: A child loop's kernel side: its epoll instance and wake-up socket pair.
KernelSide = tuple[selectors.EpollSelector, socket.socket, socket.socket]


class ChildLoop(asyncio.SelectorEventLoop):
    """The children's event loop, built once in the zygote (see :func:`prebuild`).

    Building a loop runs some sixty Python calls, and each one copied pages
    of the zygote into the child (reference counts): ~100 pages per child,
    measured. Built before the fork, the loop object is shared instead.
    What cannot be shared is its kernel side, the epoll instance and the
    wake-up socket pair: the zygote makes a fresh one for each fork
    (:meth:`renew_kernel_sides`), which only that child keeps, and the
    child keeps their descriptors open through the jail's closing of fds
    (:meth:`kernel_fds`). Making them in the child instead copied another
    ~70 pages into every child (selectors' and socket's Python code).
    The zygote never runs this loop.
    """

    #: The runtime's CPU budgets (sandbox.cpu_budgets): while they are
    #: metering, each callback runs through them.
    cpu_budgets: CpuBudgets | None = None

    def kernel_fds(self) -> set[int]:
        return {self._selector.fileno(), self._ssock.fileno(), self._csock.fileno()}

    # Every invocation runs ``create_task`` once and ``call_soon`` twice (its
    # task's first step, the channel's flush). asyncio's versions pass through
    # four more Python functions each (closed and debug checks, a helper) that
    # a child, never in debug mode and never closed while it serves, does not
    # need. Each function a request runs is a page or two of this child's
    # memory that every request touches: over 300 tenants those touches are
    # cache misses, and most of a tenant's CPU per request (measured: user
    # invocation ~20 us hot, ~160 us round-robin over 300 children).
    def call_soon(self, callback: Callable[..., Any], *args: Any,
                  context: Any = None) -> asyncio.Handle:
        if self._debug or self._closed:
            return super().call_soon(callback, *args, context=context)
        handle = asyncio.Handle(callback, args, self, context)
        self._ready.append(handle)
        return handle

    def _run_once(self) -> None:
        """One turn of the loop, as asyncio's, in one Python function:
        asyncio's turn runs the selector's ``select``, ``_process_events``
        and one ``_add_callback`` per ready descriptor besides. Its own turn
        also could not serve :mod:`sandbox.run_sync`: after each callback,
        this one stops if the greenlet running it no longer drives the loop
        (a task step that hopped has ended; see :meth:`hop`). Debug mode, or
        a selector without the attributes read here, take asyncio's turn
        (and cannot hop)."""
        selector = self._selector
        fd_to_key = getattr(selector, "_fd_to_key", None)
        epoll = getattr(selector, "_selector", None)
        if self._debug or fd_to_key is None or type(epoll) is not select.epoll:
            super()._run_once()
            return
        ready = self._ready
        scheduled = self._scheduled
        if scheduled:
            self._drop_cancelled_timers()
        if ready or self._stopping:
            timeout: float = 0
        elif scheduled:
            timeout = min(max(0.0, scheduled[0]._when - self.time()), _MAX_SELECT_TIMEOUT_S)
        else:
            timeout = -1
        try:
            polled = epoll.poll(timeout, max(len(fd_to_key), 1))
        except InterruptedError:
            polled = []
        for fd, flags in polled:
            key = fd_to_key.get(fd)
            if key is None:
                continue
            reader, writer = key.data
            if flags & ~select.EPOLLOUT and reader is not None and key.events & _EVENT_READ:
                if reader._cancelled:
                    self._remove_reader(key.fileobj)
                else:
                    ready.append(reader)
            if flags & ~select.EPOLLIN and writer is not None and key.events & _EVENT_WRITE:
                if writer._cancelled:
                    self._remove_writer(key.fileobj)
                else:
                    ready.append(writer)
        if scheduled:
            end_time = self.time() + self._clock_resolution
            while scheduled and scheduled[0]._when < end_time:
                handle = heapq.heappop(scheduled)
                handle._scheduled = False
                ready.append(handle)
        # Counted down, and the deque checked: a hop's other greenlet may
        # have run some of this turn's callbacks meanwhile. What those
        # callbacks make ready runs in this turn too, up to _PASSES times:
        # an invocation's frame makes its task's first step ready, and that
        # step the channel's flush, and asyncio's turn polled the epoll
        # instance again (a syscall with no timeout) before each of them.
        budgets = self.cpu_budgets
        for _ in range(_PASSES):
            todo = len(ready)
            if not todo:
                return
            while todo and ready:
                todo -= 1
                handle = ready.popleft()
                if not handle._cancelled:
                    if budgets is not None and budgets.metering:
                        budgets.run(handle)
                    else:
                        handle._run()
                    if self._hopped and self._driver is not greenlet.getcurrent():
                        self._hand_back()
                        return
            if self._stopping:
                return

    def _drop_cancelled_timers(self) -> None:
        """As asyncio's turn: cancelled timers leave the heap, all at once
        when they are many, else from its head."""
        scheduled = self._scheduled
        count = len(scheduled)
        if count > _MIN_SCHEDULED_TIMER_HANDLES and \
                self._timer_cancelled_count / count > _MIN_CANCELLED_TIMER_HANDLES_FRACTION:
            kept = []
            for handle in scheduled:
                if handle._cancelled:
                    handle._scheduled = False
                else:
                    kept.append(handle)
            heapq.heapify(kept)
            self._scheduled = kept
            self._timer_cancelled_count = 0
            return
        while scheduled and scheduled[0]._cancelled:
            self._timer_cancelled_count -= 1
            handle = heapq.heappop(scheduled)
            handle._scheduled = False

    # -- hops (sandbox.run_sync) ----------------------------------------------
    #: Set at the first hop: from then on the loop is driven by ``_driver``,
    #: a greenlet of its own, and ``_root`` (the one that called
    #: ``run_forever``, which drove it until then) waits for the loop to stop.
    _hopped = False
    _driver: greenlet.greenlet | None = None
    _root: greenlet.greenlet | None = None
    #: Greenlets that hopped (those :meth:`resume` may switch back into).
    _waiters: weakref.WeakSet[greenlet.greenlet] | None = None
    #: Makes the greenlets :meth:`hop` hands the loop to (see :meth:`_spawn`).
    _spawner: greenlet.greenlet | None = None

    def waited_before(self, g: greenlet.greenlet) -> bool:
        """Did ``g`` hop (and so may wait again, from where it was resumed)?"""
        return self._waiters is not None and g in self._waiters

    def run_forever(self) -> None:
        self._root = greenlet.getcurrent()  # it drives the loop until a hop
        # Started here, at the root's shallow depth, where it stays.
        self._spawner = greenlet.greenlet(self._spawn, parent=self._root)
        self._spawner.switch(self._root)
        super().run_forever()

    def _spawn(self, requester: greenlet.greenlet) -> None:
        """The spawner's life: a driver greenlet per hop, each started here.

        A new greenlet begins with the Python recursion depth of the greenlet
        that first switches into it, and keeps it: made in :meth:`hop`, deep in
        the step that waits, every hop's driver began as deep as that step,
        the next hop's deeper again, and after a few dozen invocations that
        wait (a Django view's queries through ``run_sync``) the child hit
        ``RecursionError``, or overflowed its C stack and died. Started from
        this greenlet, which always waits at this same shallow point, each
        driver begins as shallow as the first."""
        me = greenlet.getcurrent()

        def parked() -> None:
            me.switch()  # back to the spawner until a hop switches in
            self._drive()

        requester = requester.switch()  # started: wait for the first hop
        while True:
            driver = greenlet.greenlet(parked, parent=self._root)
            driver.switch()
            requester = requester.switch(driver)

    @property
    def driver(self) -> greenlet.greenlet | None:
        """The greenlet that drives the loop (runs its turns) now."""
        return self._driver if self._hopped else self._root

    def hop(self) -> None:
        """Called by the driving greenlet from deep in a task step: a new
        greenlet drives the loop from here; this one waits where it is until
        :meth:`resume` switches back to it."""
        me = greenlet.getcurrent()
        self._hopped = True
        if self._waiters is None:
            self._waiters = weakref.WeakSet()
        self._waiters.add(me)
        assert self._spawner is not None
        self._driver = self._spawner.switch(me)
        self._driver.switch()

    def yield_driving(self) -> None:
        """A resumed greenlet waits again: control goes back to the driver."""
        assert self._driver is not None
        self._driver.switch()

    def resume(self, waiting: greenlet.greenlet) -> None:
        """In the driving greenlet (a callback): run ``waiting`` on from its
        wait until it waits again or its task step ends; then go on driving."""
        if waiting is not self._root and waiting.parent is not None:
            waiting.parent = greenlet.getcurrent()  # where it goes when it ends
        waiting.switch()

    def _hand_back(self) -> None:
        """This greenlet's task step, which hopped, has ended: the loop is the
        driver's. A greenlet made by :meth:`hop` ends (its ``_drive`` returns,
        back to the driver that resumed it); the root waits for the stop."""
        if greenlet.getcurrent() is self._root:
            self.yield_driving()

    def _drive(self) -> None:
        """A driver greenlet's life: turns of the loop until another drives
        it, or until it stops (then the root returns from ``run_forever``)."""
        me = greenlet.getcurrent()
        while True:
            self._run_once()
            if self._driver is not me:
                return
            if self._stopping:
                break
        self._hopped, self._driver = False, None
        assert self._root is not None
        self._root.switch()

    def create_task(self, coro: Any, *, name: str | None = None,
                    context: Any = None) -> asyncio.Task:
        if self._task_factory is not None or self._closed or name is not None:
            return super().create_task(coro, name=name, context=context)
        return asyncio.Task(coro, loop=self, context=context)

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future:
        """No threads in the jail: ``func`` runs now, as Pyodide's loop runs it
        (``asyncio.to_thread``, ``asgiref``'s ``sync_to_async``; see
        :mod:`sandbox.thread_shims`)."""
        return thread_shims.run_inline(self, func, *args)

    def renew_kernel_sides(self, count: int) -> list[KernelSide]:
        """In the zygote, before a batch of ``count`` forks: a new epoll
        instance and wake-up pair for each child to come (each fork takes
        its own with :meth:`take_kernel_side`). The zygote's copies of the
        last batch's are closed first: their children have their own, and
        the zygote never waits on them."""
        self._close_self_pipe()
        self._selector.close()
        sides = []
        for _ in range(count):
            self._selector = selectors.EpollSelector()
            self._make_self_pipe()
            sides.append((self._selector, self._ssock, self._csock))
        self._internal_fds = 1  # one self-pipe in use at a time, as asyncio counts them
        return sides

    def take_kernel_side(self, side: KernelSide) -> None:
        """Just before a fork: the next child's epoll instance and wake-up pair."""
        self._selector, self._ssock, self._csock = side

    @staticmethod
    def close_kernel_sides(sides: list[KernelSide]) -> None:
        """After a batch: the zygote's copies of its children's kernel sides."""
        for selector, ssock, csock in sides:
            ssock.close()
            csock.close()
            selector.close()


class Runtime:
    """Dispatches the supervisor's frames and runs the script's handlers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sandboxed: bool = False,
                 layer2: landlock.Ruleset | None = None) -> None:
        self.loop = loop
        #: In a jailed child (not the zygote's rehearsal): confine and patch at Load.
        self._sandboxed = sandboxed
        #: Landlock's second layer, enforced at Load (see sandbox.jail.confine_to_bundle).
        self._layer2 = layer2
        self.channel: Channel | None = None
        self.closed = asyncio.Event()
        self.script: ScriptBundle | None = None
        self.env: Env | None = None
        self._script: events.Handlers | None = None
        self._load_error: ExceptionInfo | None = None
        #: Live Durable Object instances (sandbox.durable_objects).
        self.objects = durable_objects.Objects()
        #: The WebSockets this child serves (sandbox.websockets).
        self.sockets = websockets.Sockets(self)
        self.invocations: dict[int, _Invocation] = {}
        #: Each invocation's CPU budget while several share the child.
        self.cpu_budgets = CpuBudgets(self._cpu_exceeded)
        if isinstance(loop, ChildLoop):
            loop.cpu_budgets = self.cpu_budgets
        #: Queue batches and cron runs waiting for their ``waitUntil`` work: its
        #: first error is the event's failure, reported once, as that (see _settled_call).
        self.settling: set[int] = set()
        self.incoming: dict[int, IncomingBody] = {}
        self.outgoing: dict[int, OutgoingBody] = {}
        self.calls: dict[int, asyncio.Future] = {}
        self._next_call = -1
        self._log_budgets: dict[int, list[int]] = {}
        #: What a child installs as its log sinks and sys.stdout / sys.stderr
        #: (main), made with the runtime: in the zygote, before the fork, for
        #: a prebuilt one. Made in each child, they were allocations from size
        #: classes its fresh pools had no page for yet: a spare's set-up
        #: faulted ~281 times with them, ~269 without (means of 3 runs each).
        self.log_sink: Callable[[str, str, bool], None] = self.log
        self.stdout = logs.LineWriter("log")
        self.stderr = logs.LineWriter("error")
        self._handlers: dict[type, Callable[[Any], None]] = {
            Load: self._on_load,
            Invoke: self._on_invoke,
            Cancel: self._on_cancel,
            SubResponse: self._on_call_result,
            SubFailed: self._on_call_result,
            BindingResult: self._on_call_result,
            BodyChunk: self._on_chunk,
            Credit: self._on_credit,
            Abort: self._on_abort,
            Trim: self._on_trim,
            Release: self._on_release,
        }

    def adopt_layer2(self, layer2: landlock.Ruleset | None) -> None:
        """A runtime built in the zygote gets its child's Landlock second layer."""
        self._layer2 = layer2

    # -- channel ------------------------------------------------------------
    def attach(self, channel: Channel) -> None:
        self.channel = channel
        # Frames go straight to the channel from now on: one Python call
        # fewer per frame (see ChildLoop.call_soon for why that counts).
        self.send = channel.send  # type: ignore[method-assign]

    def on_message(self, message: Any) -> None:
        self._handlers[type(message)](message)

    def on_closed(self) -> None:
        self.closed.set()
        self.loop.stop()  # the child's main() returns (see there)

    def send(self, message: Any) -> None:
        assert self.channel is not None
        self.channel.send(message)

    def log(self, level: str, message: str, cut: bool = False, args: bool = False) -> None:
        """One log line for the current invocation, within its budget
        (``args``: ``message`` is a console call's arguments, as JSON).

        Past :data:`MAX_LOG_LINES` lines or :data:`MAX_LOG_BYTES` bytes per
        invocation, or while the channel is backed up, lines are counted and
        dropped: a print loop must not exhaust memory or flood the platform.
        """
        inv = workers.current_invocation.get()
        budget = self._log_budgets.get(inv)
        if budget is None:
            budget = self._log_budgets[inv] = [MAX_LOG_LINES, MAX_LOG_BYTES, 0]
        assert self.channel is not None
        if budget[0] <= 0 or budget[1] < len(message) or self.channel.backlog > MAX_LOG_BACKLOG:
            budget[2] += 1
            return
        budget[0] -= 1
        budget[1] -= len(message)
        self.send(Log(inv, level, message, time.time() * 1000.0, cut, args))
        self.channel.push()  # one write per line, at most MAX_LOG_LINES per invocation

    def _end_logs(self, inv: int) -> None:
        budget = self._log_budgets.pop(inv, None)
        if budget is not None and budget[2]:
            self.send(Log(inv, "warn", f"[{budget[2]} log lines dropped: over the log limit]",
                          time.time() * 1000.0, True))

    # -- load ---------------------------------------------------------------
    def _on_load(self, message: Load) -> None:
        if self.script is not None:
            raise RuntimeError("Load received twice")
        warmup.give_way()
        self.script = message.script
        # The codings workerd applies, and more, depend on the script's compatibility.
        compat.configure(message.script.compatibility_date, message.script.compatibility_flags)
        content_coding.configure()
        values: dict[str, Any] = {}
        for binding in message.script.bindings:
            if isinstance(binding, TextBinding):
                values[binding.name] = binding.text
            elif isinstance(binding, JsonBinding):
                # A JavaScript object in Cloudflare's env: attribute access as well.
                values[binding.name] = storage_bindings.wrap(binding.value)
            elif isinstance(binding, DispatchNamespaceBinding):
                values[binding.name] = DispatchNamespace(self, binding.name)
            elif isinstance(binding, AssetsBinding):
                values[binding.name] = Fetcher(self, "assets", binding.name, "")
            elif isinstance(binding, ServiceBinding):
                # The supervisor resolves the target from the stored binding;
                # the child only names the binding.
                values[binding.name] = Fetcher(self, "service", binding.name, "")
            elif isinstance(binding, BrokeredBinding):
                # KV, D1, R2...: calls name the binding; the supervisor holds the rest.
                values[binding.name] = storage_bindings.make(binding.kind, binding.name)
        self.env = Env(values)
        try:
            if self._sandboxed:
                self._confine(message.script)
            script = message.script
            module = loader.load(script.bundle, script.main_module, script.package_dirs, script.main_code)
            self._script = events.Handlers(module)
            if not self._script:
                raise loader.ScriptLoadError(
                    "the script has no fetch handler: define `class Default(WorkerEntrypoint)` "
                    "with `async def fetch(self, request)`, or `async def on_fetch(request, env)` "
                    "(a tail worker: `async def tail(self, events)`; a script others bind to: "
                    "a named `WorkerEntrypoint` or `DurableObject` class)"
                )
        except loader.ScriptLoadError as exc:
            cause = exc.__cause__ or exc
            self._load_error = ExceptionInfo(
                "ScriptLoadError", logs.wire_text(logs.cut(logs.strip_state_paths(str(exc)))),
                logs.wire_text(logs.strip_state_paths("".join(traceback.format_exception(cause)))[-8192:]))
        except MemoryError:
            self._out_of_memory(0)
        kinds = () if self._script is None or self._load_error else tuple(sorted(self._script.kinds))
        classes = () if self._script is None or self._load_error else tuple(sorted(
            name for name, value in vars(self._script.module).items()
            if isinstance(value, type) and not name.startswith("_")))[:1000]
        self.send(Loaded(self._load_error, kinds, classes))

    def _confine(self, script: ScriptBundle) -> None:
        """Before any of the script's code: its own bundle only, and clear errors."""
        layer2, self._layer2 = self._layer2, None
        try:
            jail.confine_to_bundle(layer2, script.bundle, script.package_dirs)
        except OSError as exc:
            # Fail closed: the script is not imported at all.
            raise loader.ScriptLoadError(
                f"the sandbox could not confine the script to its bundle: {exc}") from exc
        unavailable.activate()
        stdlib_shims.activate()

    # -- invocations ----------------------------------------------------------
    def _on_invoke(self, message: Invoke) -> None:
        state = _Invocation()
        self.invocations[message.id] = state
        self.cpu_budgets.started(message.id, message.cpu_budget_ns)
        # The task's context names its invocation from its first step on (the
        # task copies the context it is made in): a handler that runs to its
        # end in that step is charged to it too (sandbox.cpu_budgets).
        token = workers.current_invocation.set(message.id)
        state.task = self.loop.create_task(self._serve(message, state))
        workers.current_invocation.reset(token)

    def _request_for(self, message: Invoke) -> workers.Request:
        request = workers.Request.__new__(workers.Request)
        request.url = message.url
        request._method = message.method.decode("latin-1")
        request.headers = workers.Headers._from_raw(message.headers)
        request.redirect = "manual"
        request._body_used = False
        request._body = None if message.body is None else self.receive_body(message.body,
                                                                             message.id)
        # Workers for Platforms' untrusted mode: a dispatch namespace's user
        # workers do not get request.cf (only the platform's scripts do).
        script = self.script
        request._cf = None if script is not None and script.namespace else workers.INCOMING
        return request

    def receive_body(self, body: Body | None, stream: int) -> bytes | IncomingBody | Any:
        """A body the supervisor sends: its bytes, a stream to pull, or (a 101
        response's) a WebSocket that can only be handed on."""
        if body is None:
            return None
        if type(body) is Inline:
            return body.data
        if type(body) is Socket:
            return websockets.HandedOn(body.ws)
        incoming = IncomingBody(self.channel, stream)  # type: ignore[arg-type]
        self.incoming[stream] = incoming
        return incoming

    def send_body(self, body: Any, stream: int) -> tuple[Body | None, OutgoingBody | None]:
        """How a body the child sends travels: inline, handed on unread, or
        streamed (then with the sender to pump it through)."""
        if body is None:
            return None, None
        if isinstance(body, bytes) and len(body) <= MAX_CHUNK:
            return Inline(body), None
        if isinstance(body, IncomingBody) and not body.started:
            # Handed on untouched: the supervisor pipes it; we never see it.
            self.incoming.pop(body.stream_id, None)
            return ByRef(body.stream_id), None
        out = OutgoingBody(self.channel, stream)  # type: ignore[arg-type]
        self.outgoing[stream] = out
        return STREAMED, out

    def _env_for(self, params: dict[str, Any] | None) -> Env:
        assert self.env is not None
        if not params:
            return self.env
        values = dict(self.env.__dict__)
        for name, value in params.items():
            values.setdefault(name, value)
        return Env(values)

    async def _serve(self, message: Invoke, state: _Invocation) -> None:
        inv = message.id
        workers.current_invocation.set(inv)
        try:
            if self._load_error is not None:
                self.send(InvokeFailed(inv, self._load_error))
                return
            assert self._script is not None
            env = self._env_for(message.params) if message.params else self.env
            # An HTTP request (the common case) without a detour through the event table.
            kind, args = ("fetch", ()) if message.event is None \
                else events.kind_and_args(message.event)
            if kind == "websocket":
                await self.sockets.deliver(message.event)  # type: ignore[arg-type]
                state.responded = True
                self.send(ResponseStart(inv, 200, []))
                raise _Handled
            if kind == "durable_object":
                request = self._request_for(message)
                response = await self.objects.serve(
                    self._script.module, message.event, inv, env, request)
                await self._respond(inv, response, state, getattr(response, "_rpc_functions", None))
                raise _Handled
            if kind == "rpc":
                event = message.event
                response = await self._script.rpc(
                    event.method, workers.Context(inv, event.props), env,  # type: ignore[union-attr]
                    await self._request_for(message).bytes(), event.entrypoint,  # type: ignore[union-attr]
                    event.functions, event.function)  # type: ignore[union-attr]
                await self._respond(inv, response, state, getattr(response, "_rpc_functions", None))
                raise _Handled
            if kind != "fetch":
                # Not a request: the handler's return is not a response; an
                # empty head says it returned (an exception fails it as usual).
                try:
                    if kind in ("queue", "scheduled"):
                        await self._settled_call(kind, inv, state, env, args)
                    else:
                        await self._script.call(kind, workers.Context(inv), env, *args)
                finally:
                    owed = events.settlement(inv, args)
                    if owed is not None:
                        self.send(owed)
                state.responded = True
                self.send(ResponseStart(inv, 200, []))
                raise _Handled
            request = self._request_for(message)
            if message.event is None:  # Default's fetch: the hot path, nothing more to look at
                response = await self._script.call("fetch", workers.Context(inv), env, request)
            else:  # a service binding's named entrypoint
                event = message.event
                response = await self._script.call("fetch", workers.Context(inv, event.props), env,  # type: ignore[union-attr]
                                                   request, entrypoint=event.entrypoint)  # type: ignore[union-attr]
            if state.answered is not None and response is state.answered:
                state.responded = True  # a tail call's (sandbox.tail_call): the supervisor sent it
            elif not isinstance(response, workers.Response):
                raise TypeError(
                    f"the fetch handler returned {type(response).__name__}, not a Response"
                )
            else:
                await self._respond(inv, response, state)
        except _Handled:
            pass
        except CpuLimitExceeded:
            self._cpu_exceeded(inv)
        except asyncio.CancelledError:
            if not state.responded and not state.cpu_exceeded:
                self.send(InvokeFailed(inv, ExceptionInfo("Canceled", "the client went away")))
        except MemoryError:
            self._out_of_memory(inv)
        except BaseException as exc:  # noqa: BLE001 - tenant errors are reported, not fatal
            if state.cpu_exceeded:
                pass
            elif state.responded:
                self.send(Report(inv, exception_info(exc)))
                stream = self.outgoing.get(inv)
                if stream is not None:
                    stream.fail(f"{type(exc).__name__}: {exc}")
            else:
                self.send(InvokeFailed(inv, exception_info(exc)))
        finally:
            self.outgoing.pop(inv, None)
            body = self.incoming.pop(inv, None)
            if body is not None:
                body.cancel()
        if state.cpu_exceeded:
            return  # ended by _cpu_exceeded, which said so
        state.lingering = True
        if state.background:
            # A Cancel from here on ends the waitUntil tasks, not this one, so
            # InvokeDone is always sent (the supervisor kills a child that
            # does not send it in time).
            await asyncio.gather(*state.background, return_exceptions=True)
        self.invocations.pop(inv, None)
        self.cpu_budgets.ended(inv)
        self.sockets.invocation_ended(inv)
        if self._log_budgets:
            self._end_logs(inv)
        self.send(InvokeDone(inv))

    def _cpu_exceeded(self, inv: int) -> None:
        """Invocation ``inv`` spent its CPU budget while sharing the child
        (sandbox.cpu_budgets): it fails with ``exceededCpu``, as a kernel
        kill would fail it, and its handler and ``waitUntil`` work stop;
        the other invocations of the child go on."""
        state = self.invocations.get(inv)
        if state is None or state.cpu_exceeded:
            return
        state.cpu_exceeded = True
        # None of its callbacks runs again (sandbox.cpu_budgets): it is over
        # now, its waitUntil work with it, and this is its end.
        self.cpu_budgets.spend(inv)
        self.send(InvokeFailed(inv, ExceptionInfo("CpuLimitExceeded", CPU_MESSAGE), cpu_exceeded=True))
        stream = self.outgoing.pop(inv, None)
        if stream is not None:
            stream.fail(CPU_MESSAGE)
        body = self.incoming.pop(inv, None)
        if body is not None:
            body.cancel()
        self.invocations.pop(inv, None)
        self.cpu_budgets.ended(inv)
        self.sockets.invocation_ended(inv)
        if self._log_budgets:
            self._end_logs(inv)
        self.send(InvokeDone(inv))

    async def _respond(self, inv: int, response: workers.Response, state: _Invocation,
                       functions: list[int] | None = None) -> None:
        """Send the response; until its head is sent, a failure here is the
        invocation's (``InvokeFailed``), not a report on a response under way.
        ``functions``: those an RPC result (the body) carries."""
        if functions:
            body = response._body
            sent, out = self.send_body(body, inv)
            self.send(ResponseStart(inv, response.status, [], sent, functions=functions,
                                    length=len(body) if out is not None else None))  # type: ignore[arg-type]
            state.responded = True
            if out is not None:
                await pump(body, out)
            return
        if response.web_socket is not None:
            socket = self.sockets.body_of(response)
            self.send(ResponseStart(inv, 101, response.headers._raw(), socket))
            state.responded = True  # after: a head too large to send fails the invocation
            return
        if response._body_used:
            raise workers.BodyUsedError("the response's body was already read")
        # Only a phrase of the worker's own is sent: the standard one is the
        # supervisor's cached status line. Checked again, as code may have set
        # the attribute after the constructor checked it.
        text = response.status_text
        if text == workers._STATUS_TEXT.get(response.status, ""):
            text = ""
        else:
            text = workers._checked_status_text(text)
        body = response._body
        if body is not None and not response._encode_manual and type(body) is not IncomingBody:
            # A Content-Encoding the worker set on a body it made: encoded here,
            # as workerd's encodeBody "automatic" does.
            coding = content_coding.coding_of(response.headers.get("content-encoding"))
            if coding is not None:
                body = response._body = (content_coding.encode(body, coding) if type(body) is bytes
                                         else content_coding.encoding(body.__aiter__(), coding))
        if type(body) is bytes and len(body) <= MAX_CHUNK:  # most responses: inline
            self.send(ResponseStart(inv, response.status, response.headers._raw(), Inline(body), text))
            state.responded = True  # after: a head too large to send fails the invocation
            return
        sent, out = self.send_body(body, inv)
        # Bytes streamed in chunks still have a known length: said in the head,
        # the client gets a Content-Length rather than chunks (as from workerd).
        length = len(body) if type(body) is bytes else None
        self.send(ResponseStart(inv, response.status, response.headers._raw(), sent, text, length))
        state.responded = True  # after: a head too large to send fails the invocation
        if out is not None:
            await pump(response._body, out)

    def _on_cancel(self, message: Cancel) -> None:
        """Stop an invocation: its handler, or its ``waitUntil`` work past the deadline."""
        state = self.invocations.get(message.id)
        if state is None:
            return
        if not state.lingering:
            if state.task is not None:
                state.task.cancel()
                cancel_waits(state.task)  # its synchronous code may be waiting in run_sync
            return
        pending = [task for task in state.background if not task.done()]
        if pending:
            token = workers.current_invocation.set(message.id)
            try:
                self.log("warn", WAIT_UNTIL_CANCELED)
            finally:
                workers.current_invocation.reset(token)
        for task in pending:
            task.cancel()
            cancel_waits(task)

    async def _settled_call(self, kind: str, inv: int, state: _Invocation, env: Env, args: tuple) -> None:
        """A queue batch or a cron run ends once its handler returned and the
        work it gave ``waitUntil`` is done, and if that work failed, so did
        the event: workerd sets both outcomes from ``waitUntilStatus()``, and
        a failed batch's undecided messages are retried (Cloudflare's Queues
        consumer API). Raises the work's error for that, and so the trace has
        it once, as workerd's does (it was reported by ``wait_until`` and then
        again as the event's failure). Should the handler itself fail, or the
        event be cancelled, the work's error is reported beside that."""
        assert self._script is not None
        self.settling.add(inv)
        try:
            await self._script.call(kind, workers.Context(inv), env, *args)
            while pending := [task for task in state.background if not task.done()]:
                await asyncio.wait(pending)
        except BaseException as exc:
            error = state.background_error
            if error is not None and error is not exc:  # a task queue() awaited too: once
                self.send(Report(inv, exception_info(error)))
            raise
        finally:
            self.settling.discard(inv)
        if state.background_error is not None:
            raise state.background_error

    def wait_until(self, inv: int, awaitable: Any) -> None:
        state = self.invocations.get(inv)

        async def guarded() -> None:
            workers.current_invocation.set(inv)
            try:
                await awaitable
            except asyncio.CancelledError:
                pass  # ended at its deadline: the trace already says so
            except BaseException as exc:  # noqa: BLE001
                if state is not None and state.background_error is None:
                    state.background_error = exc
                    if inv in self.settling:
                        return  # the batch fails with it: reported then, once
                self.send(Report(inv, exception_info(exc)))

        task = self.loop.create_task(guarded())
        if state is not None:
            state.background.add(task)

    def hold(self, task: asyncio.Future) -> None:
        """The current invocation ends only after ``task``: a storage call its
        code started and did not await (see ``sandbox.durable_objects.eager``).
        Unlike ``waitUntil`` work, its failure is the caller's to see, if it
        awaits it; nothing is reported for it here."""
        state = self.invocations.get(workers.current_invocation.get())
        if state is not None:
            state.background.add(task)  # type: ignore[arg-type]

    def _out_of_memory(self, inv: int) -> None:
        """A MemoryError leaves the heap in an unknown state: report and end."""
        self.send(InvokeFailed(inv, ExceptionInfo("MemoryError", "the worker exceeded its memory limit")))
        assert self.channel is not None
        self.channel.flush_now()
        os._exit(EXIT_OUT_OF_MEMORY)

    def _on_release(self, message: Release) -> None:
        """No stub of these exported functions is left (supervisor.pool.rpc_stubs)."""
        from .bindings import rpc_stubs

        rpc_stubs.release(message.functions)

    def _on_trim(self, message: Trim) -> None:
        """Idle (the supervisor's word): give unchanged copied pages back.

        An invocation that started since the supervisor looked would only
        copy again what it touches, so it is not worth the work then.
        """
        if not self.invocations:
            try:
                reshare.give_back(message.pages)
            except OSError:
                pass  # each page is mapped whole or not at all: nothing is left half done

    # -- calls (subrequests) ------------------------------------------------
    async def sub_request(self, kind: str, request: workers.Request, *, binding: str = "",
                          target: str = "", limits: Limits | None = None,
                          params: dict | None = None, rpc: str = "", tail: bool = False,
                          functions: list[int] | None = None) -> workers.Response:
        parent = workers.current_invocation.get()
        if parent == 0 or parent not in self.invocations:
            raise RuntimeError("fetch() can only be used while handling a request")
        if request._body_used:
            raise workers.BodyUsedError("the request's body was already read")
        call = self._next_call
        self._next_call -= 1
        future = self.loop.create_future()
        self.calls[call] = future
        body = request._body
        request._body_used = body is not None
        sending: asyncio.Task | None = None
        sent, out = (None, None) if body is None else self.send_body(body, call)
        headers = request.headers._raw()
        # Bytes streamed in chunks: their length is known (see SubRequest.length).
        length = len(body) if out is not None and type(body) is bytes else None
        if kind != "fetch" and not request.headers.has("content-length"):
            # What an HTTP client says of a body of known length (a WSGI app
            # reads exactly CONTENT_LENGTH bytes of it); outbound HTTP gets it
            # from the supervisor's client. Never beside a Transfer-Encoding
            # (RFC 9112 6.1): a chunked request the dispatcher forwards whole.
            known = len(sent.data) if type(sent) is Inline and sent.data else length
            if known is not None:
                headers = [h for h in headers if h[0].lower() != b"transfer-encoding"]
                headers.append((b"content-length", str(known).encode()))
        try:
            self.send(SubRequest(
                call=call, parent=parent, kind=kind,  # type: ignore[arg-type]
                method=request._method.encode("latin-1"), url=request.url,
                headers=headers, binding=binding, target=target,
                body=sent, redirect=request.redirect, limits=limits, params=params, rpc=rpc,
                length=length, tail=tail, functions=functions or [],
            ))
        except BaseException:  # MessageTooLarge: nothing was sent, nothing is owed
            self.calls.pop(call, None)
            self.outgoing.pop(call, None)
            raise
        if out is not None:
            sending = self.loop.create_task(pump(body, out))
        try:
            result = await future
        except asyncio.CancelledError:
            # The first Abort fails the body if it is still being sent; the
            # pump's own, as it is cancelled, then cancels the call (see
            # ChildProcess._on_abort), as the binding calls' path does.
            self.send(Abort(call, "caller cancelled"))
            if sending is not None:
                sending.cancel()
            raise
        finally:
            self.calls.pop(call, None)
            if sending is not None and sending.done():
                self.outgoing.pop(call, None)
        if isinstance(result, SubFailed):
            if sending is not None:
                sending.cancel()
                self.outgoing.pop(call, None)
            raise workers.platform_error(result.error.name, result.error.message)
        response = workers.response_with(
            result.status, None if result.body is None else self.receive_body(result.body, call),
            workers.Headers._from_raw(result.headers), result.status_text)
        if kind == "fetch" and result.body is not None:
            # As workerd's fetch: the body is decoded when the worker reads it.
            response._coding = content_coding.coding_of(response.headers.get("content-encoding"))
        response.url = result.url or request.url
        response.redirected = result.redirected
        if result.functions:
            response._rpc_functions = result.functions  # type: ignore[attr-defined]
        if result.answered:
            state = self.invocations.get(parent)
            if state is not None:
                state.answered = response
        return response

    def _on_call_result(self, message: SubResponse | SubFailed | BindingResult) -> None:
        future = self.calls.get(message.call)
        if future is not None and not future.done():
            future.set_result(message)

    # -- streams --------------------------------------------------------------
    def _on_chunk(self, message: BodyChunk) -> None:
        body = self.incoming.get(message.stream)
        if body is not None:
            body.feed(message.data, message.end)
            if message.end:
                del self.incoming[message.stream]

    def _on_credit(self, message: Credit) -> None:
        out = self.outgoing.get(message.stream)
        if out is not None:
            out.grant(message.nbytes)

    def _on_abort(self, message: Abort) -> None:
        body = self.incoming.pop(message.stream, None)
        if body is not None:
            body.abort(message.reason)
        out = self.outgoing.pop(message.stream, None)
        if out is not None:
            out.abort(message.reason)


def prebuild() -> tuple[ChildLoop, Runtime]:
    """In the zygote, before it freezes: every child's loop and runtime (see ChildLoop)."""
    loop = ChildLoop()
    runtime = Runtime(loop, sandboxed=True)
    runtime.cpu_budgets.install()  # a signal's disposition passes through the fork
    return loop, runtime


def prebuild_channel(sock: socket.socket, loop: ChildLoop, runtime: Runtime) -> Channel:
    """In the zygote, before a child's fork, with that child's kernel side
    taken (ChildLoop.take_kernel_side): its channel, registered in its own
    epoll instance. Made here, the channel and asyncio's ``add_reader``
    copied ~50 of the zygote's pages into every child (measured); nothing
    reads it before the child is jailed and runs its loop."""
    sock.setblocking(False)  # the socket's open file, which only that child keeps
    return Channel(sock, loop, runtime.on_message, runtime.on_closed)


#: The zygote's original streams (``sys.__stdout__``, ``sys.__stderr__``),
#: referenced here so that a child replacing them does not free them.
_ZYGOTE_STREAMS = (sys.__stdout__, sys.__stderr__)


def _mark(marks: list[tuple[int, int]]) -> None:
    """The end of a set-up step: this thread's CPU time and the process's
    minor faults so far (copies of the zygote's pages, nearly all)."""
    marks.append((time.thread_time_ns(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt))


def main(sock: socket.socket, devnull: int, address_space: int, bpf: bytes,
         rules: jail.FileRules, keep: tuple[int, ...],
         prebuilt: tuple[ChildLoop, Runtime] | None = None,
         channel: Channel | None = None, layer2: landlock.Ruleset | None = None,
         cgroup_fd: int = -1) -> int:
    """Entry point of a forked child; returns its exit status. ``keep``: the
    descriptors its jail leaves open, worked out by the zygote before the
    fork (jail.fds_to_keep). ``cgroup_fd``: its memory cgroup's join file,
    or -1 (see jail.join_cgroup_slot)."""
    # The CPU clock and the fault count of a new process start at zero at its fork.
    marks: list[tuple[int, int]] = []
    _mark(marks)
    layer2 = jail.jail_child(devnull, address_space, rules, keep, layer2, cgroup_fd)
    _mark(marks)
    if prebuilt is not None:
        # Its epoll and wake-up pair are this child's (renew_kernel_sides);
        # the zygote made the loop current before the fork (Zygote.spawn).
        loop, runtime = prebuilt
        runtime.adopt_layer2(layer2)
    else:
        loop = ChildLoop()
        runtime = Runtime(loop, sandboxed=True, layer2=layer2)
        runtime.cpu_budgets.install()
        asyncio.set_event_loop(loop)
    if channel is None:
        sock.setblocking(False)
    _mark(marks)
    jail.lock(bpf)
    _mark(marks)
    # ---- jailed from here on; only now is the channel read ----
    workers._runtime = runtime
    logs.set_sink(runtime.log_sink)
    # The originals too, as in Pyodide (where they are the same streams):
    # code that writes to sys.__stderr__ (a last-resort handler, faulthandler
    # users) is heard, not lost on /dev/null. (The zygote's own are held by
    # _ZYGOTE_STREAMS: freed here, they were closed, flushed and their
    # buffers freed in every child.)
    sys.stdout, sys.stderr = runtime.stdout, runtime.stderr
    sys.__stdout__, sys.__stderr__ = runtime.stdout, runtime.stderr  # type: ignore[misc]
    logs.install_logging()
    _mark(marks)
    if channel is None:
        channel = Channel(sock, loop, runtime.on_message, runtime.on_closed)
    runtime.attach(channel)
    _mark(marks)
    steps = [marks[0], *((b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(marks))]
    channel.send(Hello(PROTOCOL_VERSION, os.getpid(), tuple(ns // 1000 for ns, _ in steps),
                       tuple(faults for _, faults in steps)))
    loop.call_soon(warmup.prefault)  # before any Load is read: frames wait in the socket
    # Until the channel closes (Runtime.on_closed stops the loop): no task
    # and future to wait on, as run_until_complete would make, in every spare.
    loop.run_forever()
    return 0
