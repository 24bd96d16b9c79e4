"""Every message the supervisor and a sandboxed child exchange.

Messages are msgspec Structs in two tagged unions, one per direction, encoded
as msgpack arrays (``array_like``) because the hot path sends several per
request and arrays are both smaller and faster than maps.

Identifiers and streams
-----------------------
An *invocation* is one event (an HTTP request) delivered to a child; the
supervisor numbers them with positive ids. A *call* is a sub-request a child
makes (a dispatch-namespace stub's ``fetch``, an outbound ``fetch``); the child
numbers them with negative ids. Because the two spaces cannot collide, a body
stream is named by the id it belongs to, in either direction:

* request body of invocation ``i``: supervisor -> child, stream ``i``
* response body of invocation ``i``: child -> supervisor, stream ``i``
* request body of call ``c``: child -> supervisor, stream ``c``
* response body of call ``c``: supervisor -> child, stream ``c``

Flow control
------------
A body is one :data:`Body`: :class:`Inline` when small and complete,
:class:`Streamed` as :class:`BodyChunk` frames otherwise. A stream starts
with **zero credit**: the receiver sends :class:`Credit` as its consumer wants
data, and the sender never has more bytes in flight than it was granted. This
makes every stream pull-based: an unread body costs nothing, and a body can
be handed on by reference (:class:`ByRef`) without ever crossing a process it
does not need to. The rules themselves are :mod:`protocol.flow`.
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, Union

import msgspec

#: Bumped whenever a message changes shape; a child speaking another version
#: is killed at its first frame.
PROTOCOL_VERSION = 12

#: Largest chunk of a streamed body, and largest inline body.
MAX_CHUNK = 64 * 1024

#: Credit a receiver grants at a time; bounds memory held per stream.
STREAM_WINDOW = 4 * MAX_CHUNK

Header = tuple[bytes, bytes]


class _Msg(msgspec.Struct, array_like=True, omit_defaults=True, frozen=True, gc=False):
    """Base of all messages: positional msgpack arrays, defaults left out.

    ``gc=False`` (here and on every shape below): messages are frozen trees
    of decoded data that can never be part of a reference cycle, and a busy
    supervisor makes several per request; tracked, they filled the
    collector's young generations and made each collection walk them."""


# --------------------------------------------------------------------------
# Shapes carried inside messages
# --------------------------------------------------------------------------


class Inline(msgspec.Struct, array_like=True, frozen=True, gc=False, tag="inline"):
    """The whole body, in the message (at most :data:`MAX_CHUNK` bytes)."""

    data: bytes


class Streamed(msgspec.Struct, array_like=True, frozen=True, gc=False, tag="stream"):
    """The body follows as :class:`BodyChunk` frames on the message's own stream."""


class ByRef(msgspec.Struct, array_like=True, frozen=True, gc=False, tag="ref"):
    """The unread body of stream ``stream`` (the invocation's request body or
    a call's response), handed on: the supervisor pipes it, the child never
    reads it. Only from a child."""

    stream: int


class Socket(msgspec.Struct, array_like=True, frozen=True, gc=False, tag="ws"):
    """A WebSocket instead of a body (a 101 response's ``webSocket``).

    From a child: its own socket ``ws`` (> 0), whose server end it accepted,
    with ``hibernate`` when a Durable Object accepted it through
    ``ctx.acceptWebSocket`` (its events then go to the object, not to
    listeners); or (< 0) one the supervisor handed it in a response, handed
    on. To a child: such a handle, always < 0.
    """

    ws: int
    hibernate: bool = False


#: How a message's body travels (None: it has none).
Body = Union[Inline, Streamed, ByRef, Socket]
#: The one :class:`Streamed` value (it carries nothing).
STREAMED = Streamed()


class ExceptionInfo(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """An exception raised by tenant code or by the platform on its behalf."""

    name: str
    message: str
    stack: str = ""


class Limits(msgspec.Struct, array_like=True, omit_defaults=True, frozen=True, gc=False):
    """Per-invocation limits; ``None`` means "the platform default"."""

    cpu_ms: float | None = None
    sub_requests: int | None = None
    wall_ms: float | None = None
    memory_mb: int | None = None


class TextBinding(_Msg, tag="text"):
    """``plain_text`` and ``secret_text`` bindings: a string on ``env``."""

    name: str
    text: str


class JsonBinding(_Msg, tag="json"):
    """A JSON value on ``env`` (``json`` bindings, ``[vars]`` tables)."""

    name: str
    value: Any


class DispatchNamespaceBinding(_Msg, tag="dispatch_namespace"):
    """``env.<name>.get(script)`` invokes user workers in ``namespace``."""

    name: str
    namespace: str


class ServiceBinding(_Msg, tag="service"):
    """``env.<name>.fetch(request)`` invokes a platform script."""

    name: str
    service: str


class BrokeredBinding(_Msg, tag="brokered"):
    """A binding the supervisor serves (KV, D1, R2, and later Durable Objects
    and queues): the child knows its ``kind`` (the binding's Cloudflare type,
    e.g. ``"kv_namespace"``) and its name, never the id or the data scope
    behind it. Calls on it are :class:`BindingCall` frames naming the binding."""

    name: str
    kind: str


class AssetsBinding(_Msg, tag="assets"):
    """``env.<name>.fetch(request)`` serves the script's own static assets."""

    name: str


Binding = Union[TextBinding, JsonBinding, DispatchNamespaceBinding, ServiceBinding, BrokeredBinding,
                AssetsBinding]


class MainCode(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """The main module's compiled code and its import root's listing, from
    the supervisor's memory, so that a cold start reads nothing from disk.

    A bundle untouched for a while is no longer in the page cache, and a
    storm of first requests then waited on the disk for each one (a
    directory listing and a ``.pyc``: tens of milliseconds each under
    contention, measured). The files stay the truth: ``pyc`` is exactly the
    bundle's ``__pycache__`` file for the main module, ``root_entries`` the
    names in its folder.
    """

    pyc: bytes
    root_entries: list[str]


#: How every pyc in a bundle starts (the supervisor compiles them, the child
#: runs them): this Python's magic number, then flags 0b01: hash-based and
#: never checked against the source, since a bundle's files never change.
PYC_HEADER = importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")


class ScriptBundle(msgspec.Struct, array_like=True, omit_defaults=True, frozen=True, gc=False):
    """Everything a child needs to run one script, sent once at assignment.

    The code is in files: ``bundle`` is the absolute path of the script
    version's directory (read-only in the child's view), so ``__file__``,
    data files and ``importlib.resources`` are real. ``main_code``, when the
    supervisor holds it, spares the child reading the main module from there.
    """

    namespace: str  # "" for platform scripts
    name: str
    version: str
    main_module: str  # relative to ``bundle``
    bundle: str
    bindings: list[Binding] = []
    compatibility_date: str = ""
    #: Package-store directories the bundle uses, readable besides the bundle.
    package_dirs: list[str] = []
    main_code: MainCode | None = None
    #: The script's compatibility flags (with its date, what the runtime's
    #: defaults are: the queues' content type, say).
    compatibility_flags: list[str] = []


# --------------------------------------------------------------------------
# Events: what an invocation delivers (one member per handler type)
# --------------------------------------------------------------------------


class RequestEvent(_Msg, tag="request"):
    """An HTTP request for ``fetch``; the request itself is :class:`Invoke`'s
    method, url, headers and body. The default when ``Invoke.event`` is None,
    which is ``Default``'s ``fetch``; sent only for another ``entrypoint``
    class (a service binding's named entrypoint)."""

    entrypoint: str = ""
    #: The service binding's props (the callee's ``ctx.props``).
    props: dict[str, Any] | None = None


class TailEvent(_Msg, tag="tail"):
    """Trace events for a tail worker's ``tail(events)``: JSON-able dicts
    with Cloudflare's TraceItem field names (SPEC section 4)."""

    events: list[Any]


class ScheduledEvent(_Msg, tag="scheduled"):
    """A cron trigger: the script's ``scheduled(controller, env, ctx)`` runs.

    ``scheduled_time`` is in ms since the epoch (``controller.scheduledTime``).
    The child answers with an empty 200 ``ResponseStart`` when the handler
    returns, or ``InvokeFailed``; limits, outcomes and traces are a request's.
    """

    cron: str
    scheduled_time: float


class DurableObjectEvent(_Msg, tag="dobject"):
    """A call on the Durable Object ``object_id`` of class ``class_name``.

    ``method`` is ``"fetch"`` (the Invoke's HTTP fields are the request and
    the response is the object's), ``"alarm"`` (its alarm handler), an RPC
    method name (the Invoke's body is the msgpack-encoded argument list;
    the response body the msgpack-encoded result), or ``"#evict"`` (drop
    the live instance; its storage stays). The supervisor sends one at a
    time per object (its input gate), and resolves the object's
    ``ctx.storage`` calls (:data:`DO_STORAGE`) from this event, never from
    the child.
    """

    class_name: str
    object_id: str
    method: str
    name: str | None = None
    retry_count: int = 0
    #: For ``"alarm"``: when it was set to fire (ms since the epoch), for the trace.
    scheduled_time: float = 0.0
    #: For ``"#webSocket"``, for the trace: ``message`` or ``close``, and a close's code and cleanness.
    socket_event: str = ""
    socket_code: int = 0
    socket_clean: bool = False
    #: The class is KV-backed (created by a ``new_classes`` migration): no
    #: ``ctx.storage.sql``, no synchronous ``ctx.storage.kv``, values of at
    #: most 128 KiB. False (SQLite-backed) for ``new_sqlite_classes`` and for
    #: a class no migration named, as before; set by the supervisor, never the child.
    kv_backed: bool = False
    #: For an RPC method: the handles of the functions its arguments carry
    #: (supervisor.pool.rpc_stubs), in the order the value names them.
    functions: list[int] = []


class QueueMessage(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One message of a queue batch; ``body`` encoded as ``content_type`` says
    (``v8``: msgpack of plain data, ``json``, ``text``, ``bytes``)."""

    id: str
    timestamp: float  # ms since the epoch
    body: bytes
    content_type: str
    attempts: int


class QueueEvent(_Msg, tag="queue"):
    """A batch for the consumer's ``queue(batch, env, ctx)``. Before its
    ResponseStart or InvokeFailed the child sends :class:`QueueSettled`."""

    queue: str
    messages: list[QueueMessage]


class WebSocketEvent(_Msg, tag="wsevent"):
    """Something happened on the child's accepted socket ``ws``: a ``message``
    from the client (``data``, ``text``), or its ``close`` (``code``,
    ``reason``, ``clean``). For a socket a Durable Object accepted to
    hibernate, the same fields travel as the ``#webSocket`` call's arguments
    instead (sandbox.durable_objects)."""

    ws: int
    kind: str
    data: bytes = b""
    text: bool = False
    code: int = 0
    reason: str = ""
    clean: bool = False


#: The event an :class:`Invoke` delivers; the child dispatches on the
#: member's type (sandbox.events).
class RpcEvent(_Msg, tag="rpc"):
    """A Workers RPC call of ``method`` on the script's entrypoint class
    ``entrypoint`` ("": ``Default``), as ``env.SERVICE.method(...)`` makes it
    from another worker. The Invoke's body is the msgpack-encoded argument
    list, the response body the encoded result."""

    method: str
    entrypoint: str = ""
    #: The service binding's props (the callee's ``ctx.props``).
    props: dict[str, Any] | None = None
    #: The handles of the functions the arguments carry (supervisor.pool.rpc_stubs).
    functions: list[int] = []
    #: Not a method: a call of the function this child exported as
    #: ``function`` (a stub of it was called elsewhere); ``method`` is "".
    function: int = 0


Event = Union[RequestEvent, TailEvent, ScheduledEvent, DurableObjectEvent, QueueEvent, WebSocketEvent,
              RpcEvent]


# --------------------------------------------------------------------------
# Supervisor -> child
# --------------------------------------------------------------------------


class Load(_Msg, tag="load"):
    """Assign this (already jailed) child to a script; sent exactly once."""

    script: ScriptBundle


class Invoke(_Msg, tag="invoke"):
    """Deliver one event to the script: an HTTP request to its ``fetch``
    handler, or (``event``) another kind to the handler of that kind.

    ``params`` carries outbound-worker parameters set by the dispatcher for the
    subrequest this invocation represents; they appear on ``env``. ``event``
    set means another handler runs (a tail, ``scheduled``...): the HTTP fields
    are then only what the trace shows, and the child answers with an empty
    :class:`ResponseStart` once the handler returns.
    """

    id: int
    method: bytes
    url: str
    headers: list[Header]
    body: Body | None = None
    params: dict[str, Any] | None = None
    event: Event | None = None
    #: Its CPU budget when the kernel keeps it exactly (0: none such): while
    #: other invocations share the child, the child keeps it per invocation
    #: (sandbox.cpu_budgets), the kernel the sum.
    cpu_budget_ns: int = 0


class Cancel(_Msg, tag="cancel"):
    """The caller of invocation ``id`` went away; stop working on it."""

    id: int


class SubResponse(_Msg, tag="subresp"):
    """The response head (and inline body) of the child's call ``call``."""

    call: int
    status: int
    headers: list[Header]
    body: Body | None = None
    url: str = ""
    redirected: bool = False
    #: The response's statusText when it is not the status's standard phrase
    #: ("" otherwise, and then not sent); last, so older frames still decode.
    status_text: str = ""
    #: The supervisor has already answered the caller's own invocation with
    #: this response (the call was a :attr:`SubRequest.tail` call): its
    #: headers and body went there and are not sent, and the child sends no
    #: ResponseStart of its own for it. Last, so older frames still decode.
    answered: bool = False
    #: An RPC result's functions: the handles the caller's invocation now
    #: holds, in the order the value names them (supervisor.pool.rpc_stubs).
    functions: list[int] = []


class SubFailed(_Msg, tag="subfail"):
    """Call ``call`` failed; the child raises ``error`` from its ``fetch``."""

    call: int
    error: ExceptionInfo


class Release(_Msg, tag="release"):
    """No invocation holds a stub of these exported functions any more: the
    child lets them go (supervisor.pool.rpc_stubs)."""

    functions: list[int]


class BindingResult(_Msg, tag="bresult"):
    """The answer to :class:`BindingCall` ``call``: a plain-data ``value``
    and, for calls that return bytes (a KV value, an R2 object), a body
    (inline, or streamed on stream ``call``). A failure is :class:`SubFailed`."""

    call: int
    value: Any = None
    body: Body | None = None


# --------------------------------------------------------------------------
# Child -> supervisor
# --------------------------------------------------------------------------


#: The steps of a new child's own set-up, in order, as :class:`Hello` reports
#: them: from the fork to its first Python line, the jail (session, signals,
#: Landlock, descriptors, limits, identity), the event loop it was handed,
#: the seccomp filter, the runtime's sinks and logging, and the channel.
SETUP_STEPS = ("fork", "jail", "loop", "filter", "runtime", "channel")


class Hello(_Msg, tag="hello"):
    """First frame of every child, sent only after its jail is complete.

    ``setup_us`` is the CPU the child spent on each of :data:`SETUP_STEPS`
    (microseconds, in that order), and ``setup_faults`` its minor page faults
    in each (under CPython 3.11 nearly all of them copies of the zygote's
    pages, i.e. the private memory each step costs), so that the cost of a
    spare is measured where it is paid, step by step, in every child."""

    version: int
    pid: int
    setup_us: tuple[int, ...] = ()
    setup_faults: tuple[int, ...] = ()


class Loaded(_Msg, tag="loaded"):
    """Answer to :class:`Load`: the script imported, or why not, the
    handlers it defines (``fetch``, ``scheduled``, ``queue``, ``tail``, ...),
    and the classes its main module exports (what a Durable Object binding
    may name)."""

    error: ExceptionInfo | None = None
    handlers: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()


class ResponseStart(_Msg, tag="respond"):
    """The response to invocation ``id``.

    The body is inline, streamed or, when the script returns a subrequest's
    response (or its own request body) untouched, :class:`ByRef`.
    """

    id: int
    status: int
    headers: list[Header]
    body: Body | None = None
    #: The reason phrase when it is not the status's standard one ("" then,
    #: and not sent); last, so older frames still decode.
    status_text: str = ""
    #: A :class:`Streamed` body's length when the child knows it in advance
    #: (bytes beyond :data:`MAX_CHUNK`), so the client gets a Content-Length
    #: rather than chunks, as workerd frames it. A claim, not a fact: the
    #: supervisor counts the bytes and closes the connection if they differ.
    #: Ignored for other bodies (an inline one's is its size; a
    #: :class:`ByRef` one's is its source's). Last, so older frames decode.
    length: int | None = None
    #: An RPC result's functions: each an id this child exported (> 0) or
    #: ``-handle`` of a stub the invocation holds (supervisor.pool.rpc_stubs).
    functions: list[int] = []


class InvokeFailed(_Msg, tag="failed"):
    """Invocation ``id`` raised instead of responding (or its stream broke).

    ``cpu_exceeded``: the runtime stopped it, its CPU budget spent while
    other invocations shared the child (sandbox.cpu_budgets). A field of
    its own, not an exception name: a tenant's exception may bear any name
    (``class exceededCpu(Exception)`` passed for the platform's verdict)."""

    id: int
    error: ExceptionInfo
    cpu_exceeded: bool = False


class InvokeDone(_Msg, tag="done"):
    """Invocation ``id`` finished entirely, ``waitUntil`` work included."""

    id: int


class QueueSettled(_Msg, tag="qsettled"):
    """What a queue consumer decided explicitly, before its invocation ends:
    message ids acked and retried (with a delay in seconds, or None), and
    ``ackAll`` / ``retryAll`` (``all``: "ack", "retry" or ""). Messages it
    left undecided are acked if the handler returned, retried if it raised."""

    id: int
    acked: list[str] = []
    retried: list[tuple[str, float | None]] = []
    all: str = ""
    all_delay: float | None = None


class Log(_Msg, tag="log"):
    """A line the script printed or logged during invocation ``id`` (0: at load).

    ``cut``: the child cut this line, or dropped lines before it, at its
    log limits; the trace event says it is ``truncated``.

    ``args``: ``message`` is the JSON text of a console call's argument
    list (``console.log("a", 1)``: ``["a",1]``), as workerd keeps a log's
    message; the trace lists the values. Else it is one line of text (a
    ``print``, a ``logging`` record, ``console.log`` of one string). Last,
    with a default, so older frames still decode."""

    id: int
    level: str
    message: str
    ts: float
    cut: bool = False
    args: bool = False


class Report(_Msg, tag="report"):
    """An exception the script raised that did not fail a response (e.g. in waitUntil)."""

    id: int
    error: ExceptionInfo


class SubRequest(_Msg, tag="subreq"):
    """Call ``call`` (negative) made on behalf of invocation ``parent``.

    ``kind`` is ``"dispatch"`` (``target`` names a script in the binding's
    namespace), ``"service"`` (``target`` is a platform script) or
    ``"fetch"`` (an outbound request to ``url``), ``"assets"`` (the script's
    own static assets, ``env.ASSETS.fetch``) or ``"loader"`` (``target`` is the
    id of a dynamic worker of the Worker Loader ``binding``). A :class:`ByRef`
    body forwards a body the child holds unread (its request's, a call's response).
    """

    call: int
    parent: int
    kind: Literal["dispatch", "service", "fetch", "assets", "loader", "stub"]
    method: bytes
    url: str
    headers: list[Header]
    binding: str = ""
    target: str = ""
    body: Body | None = None
    redirect: str = "follow"
    limits: Limits | None = None
    params: dict[str, Any] | None = None
    #: Set for a Workers RPC call (``env.SERVICE.method(...)``): the method's
    #: name; the body is the msgpack-encoded argument list (see :class:`RpcEvent`).
    rpc: str = ""
    #: A :class:`Streamed` body's length when the child knows it in advance
    #: (bytes beyond :data:`MAX_CHUNK`), so an upstream gets a Content-Length
    #: rather than chunks, as from workerd (S3's presigned PUT refuses a
    #: chunked body). A claim: the HTTP client sends no more and no fewer
    #: bytes than it says, or the fetch fails. Last, so older frames decode.
    length: int | None = None
    #: A tail call: the handler's root coroutine returns what this call
    #: returns, untouched (``return await stub.fetch(request)``, told from its
    #: bytecode). The supervisor may then answer the caller's own invocation
    #: with the callee's response the moment it comes, rather than after a
    #: round trip through this child (:attr:`SubResponse.answered`). A claim
    #: about the child's own response only: a child that makes it falsely
    #: answers its own caller with a response it could have returned anyway.
    tail: bool = False
    #: The functions an RPC call's arguments carry: each an id this child
    #: exported (> 0) or ``-handle`` of a stub the parent holds, passed on.
    #: For ``kind="stub"`` (a call of a stub), ``target`` is its handle.
    functions: list[int] = []


class WsSend(_Msg, tag="wssend"):
    """The child's socket ``ws`` sends a message to its client, or (``fin``
    false) a part of one: a message may be larger than a frame may be."""

    ws: int
    data: bytes
    text: bool = False
    fin: bool = True


class WsClose(_Msg, tag="wsclose"):
    """The child's socket ``ws`` closes (``code``, ``reason`` to the client).
    ``code`` 1005 ("no status received") is a close frame with no code and no
    reason, what ``close()`` without a code sends."""

    ws: int
    code: int = 1000
    reason: str = ""
    #: No 101 carried the socket and the invocation that made it has ended:
    #: no client will ever connect, and the supervisor forgets it.
    orphan: bool = False


class WsConnect(_Msg, tag="wsconnect"):
    """The child opens its socket ``ws`` to a server, ``new WebSocket(url)``,
    for invocation ``parent`` (a subrequest of it, under the egress policy).
    The supervisor connects and the socket's ``open`` (or ``error``, then
    ``close``) and the server's messages come back as :class:`WebSocketEvent`
    invocations, as a client's do; ``WsSend`` and ``WsClose`` go to the server."""

    ws: int
    parent: int
    url: str
    protocols: list[str] = []


class BindingCall(_Msg, tag="bcall"):
    """Call ``call`` (negative, the same id space as :class:`SubRequest`):
    ``method`` of the script's binding named ``binding``, for invocation
    ``parent``.

    The supervisor resolves the binding (its type, backend and data scope)
    from the script it stored, never from anything in this frame. ``args``
    is plain data (msgpack); a value too big for a frame travels as the body
    (inline, streamed on stream ``call``, or a body the child holds unread). When
    ``args_in_body`` is set, the body *is* the msgpack-encoded ``args`` (a
    call whose arguments would not fit in one frame). ``binding`` is
    :data:`CACHE_BINDING` for the Cache API, which every script has.
    """

    call: int
    parent: int
    binding: str
    method: str
    args: list[Any] = []
    body: Body | None = None
    args_in_body: bool = False


#: ``BindingCall.binding`` of Cache API calls (not an identifier, so no
#: binding can be named so).
CACHE_BINDING = "#caches"
#: ``BindingCall.binding`` of a Durable Object's ``ctx.storage`` calls: the
#: object is the one the parent invocation's :class:`DurableObjectEvent` names.
DO_STORAGE = "#storage"


# --------------------------------------------------------------------------
# Both directions
# --------------------------------------------------------------------------


class BodyChunk(_Msg, tag="chunk"):
    """Bytes of stream ``stream``; ``end`` closes it."""

    stream: int
    data: bytes
    end: bool = False


class Trim(_Msg, tag="trim"):
    """The child is idle: give back the listed pages still equal to the zygote's
    (see :mod:`sandbox.reshare`). ``pages`` are ascending page addresses, native
    u64s, that the supervisor saw in the child's page map as its alone."""

    pages: bytes


class Credit(_Msg, tag="credit"):
    """The receiver of stream ``stream`` will take ``nbytes`` more."""

    stream: int
    nbytes: int


class Abort(_Msg, tag="abort"):
    """Stream ``stream`` ends abnormally: its producer failed or its consumer left."""

    stream: int
    reason: str = ""


ToChild = Union[Load, Invoke, Cancel, SubResponse, SubFailed, BindingResult, BodyChunk, Credit,
                Abort, Trim, Release]
ToSupervisor = Union[
    Hello,
    Loaded,
    ResponseStart,
    InvokeFailed,
    InvokeDone,
    QueueSettled,
    Log,
    Report,
    SubRequest,
    BindingCall,
    BodyChunk,
    Credit,
    Abort,
    WsSend,
    WsClose,
    WsConnect,
]


# --------------------------------------------------------------------------
# Supervisor <-> zygote (a SOCK_SEQPACKET socket: one message per packet, so
# the fds of a Spawned ride with exactly that packet)
# --------------------------------------------------------------------------


class Spawn(_Msg, tag="spawn"):
    """Fork ``count`` more jailed spare children.

    ``address_space``: the children's RLIMIT_AS in bytes, when the supervisor
    knows it better than the zygote (a package zygote, which cannot read its
    own mapping once in the file view); 0 keeps the zygote's own figure.

    ``slots``: memory cgroups the supervisor made ahead for the first
    ``len(slots)`` of these children, by number; the file each child writes
    ``0`` to, to join its slot itself, rides as SCM_RIGHTS in the same order
    (see supervisor.limits.cgroup_slots). Children past them are joined by
    the supervisor, as before slots.
    """

    count: int
    address_space: int = 0
    slots: tuple[int, ...] = ()


class StartPackageZygote(_Msg, tag="pkgzygote"):
    """Base zygote: fork a *package zygote* that imports the wheels in
    ``package_dirs`` (one dependency set, named ``key``), freezes the GC and
    then forks spares of its own on a control socket of its own."""

    key: str
    package_dirs: list[str]


class PackageZygoteStarted(_Msg, tag="pkgstarted"):
    """A package zygote exists; its control socket and pidfd arrive as SCM_RIGHTS.
    It says :class:`ZygoteReady` on that socket once its imports are done."""

    key: str
    pid: int


class ZygoteReady(_Msg, tag="zready"):
    """The zygote imported everything and can fork; ``jail`` says what it got."""

    version: int
    pid: int
    jail: dict[str, Any]


class Spawned(_Msg, tag="spawned"):
    """A child exists; its channel socket and pidfd arrive as SCM_RIGHTS.
    ``slot``: the cgroup slot it was given to join itself (-1: none)."""

    pid: int
    slot: int = -1


class Exited(_Msg, tag="exited"):
    """The zygote reaped a child; ``status`` is the raw wait status."""

    pid: int
    status: int


ToZygote = Union[Spawn, StartPackageZygote]
FromZygote = Union[ZygoteReady, Spawned, Exited, PackageZygoteStarted]
