"""The admin REST API (SPEC section 2) as a sans-I/O handler.

The lead's HTTP server owns sockets and framing; it hands each complete
request to :meth:`AdminAPI.handle` and writes back the ``(status, headers,
body)`` it returns. Keeping the API free of I/O makes it testable with plain
bytes and keeps one place that decides what every answer looks like.

Every answer except ``GET /metrics`` is Cloudflare's envelope
``{"success", "errors": [{"code", "message"}], "messages", "result"}``, with
``result_info`` added on paginated lists. Nothing raised by bad input escapes:
expected failures carry their status (:class:`supervisor.store.store.StoreError`,
:class:`supervisor.admin.multipart.MultipartError`), anything else becomes a logged
500. Store calls run in worker threads so a slow disk never stalls the
supervisor's event loop.
"""

from __future__ import annotations

import datetime
import functools
import logging
import posixpath
import traceback
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import msgspec
import trio

from supervisor.admin import multipart
from supervisor.model import PLATFORM, ScriptRecord, content_version
from supervisor.store.store import (
    ErrorCode,
    NamespaceInfo,
    RouteInfo,
    Store,
    StoreError,
    parse_tag_filters,
    script_not_found,
    validate_name,
    validate_tag,
)

__all__ = ["AdminAPI", "AdminHooks", "BINDING_TYPES", "Response"]

log = logging.getLogger("corral.admin")


def _log(level: int, event: str, **fields: Any) -> None:
    """One JSON line per event: ``supervisor.log.JsonFormatter`` renders ``fields``."""
    if log.isEnabledFor(level):
        log.log(level, event, extra={"fields": fields})

Response = tuple[int, list[tuple[bytes, bytes]], bytes]
_T = TypeVar("_T")

_JSON_HEADERS = [(b"content-type", b"application/json")]
_METRICS_HEADERS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]
# Room for the metadata part and multipart framing on top of the code itself.
_UPLOAD_OVERHEAD = 1 * 2**20
_MAX_JSON_BODY = 1 * 2**20
#: Bounds on everything a client sends, so hostile input is a 400 naming the
#: limit, never a RecursionError, a SQLite expression-depth error or a huge
#: echo in an error message and a log line.
MAX_JSON_DEPTH = 32
_MAX_METADATA_BYTES = 1 * 2**20
_MAX_BINDINGS = 1000
_MAX_TAIL_CONSUMERS = 100
_MAX_TARGET = 8 * 1024
_MAX_SEGMENT = 1024
_MAX_SEGMENTS = 16
_MAX_QUERY_FIELDS = 32
_MAX_TAG_FILTERS = 32
_MAX_HEADERS = 128
_MAX_MESSAGE = 2000


class AdminHooks(Protocol):
    """What the API needs from the rest of the supervisor."""

    async def validate(self, record: ScriptRecord) -> str | None:
        """Load the script in a sandbox: None if it loads, else the error text."""
        ...

    def script_changed(self, namespace: str, name: str) -> None:
        """Called after a script was stored, deleted, or had its tags changed."""
        ...

    def metrics_text(self) -> str:
        """Prometheus text exposition for ``GET /metrics``."""
        ...


class ApiError(StoreError):
    """A failure found by the API layer itself (same shape as the store's)."""


def _bad(message: str) -> ApiError:
    return ApiError(400, ErrorCode.BAD_REQUEST, message)


def _clip(text: str, limit: int = 80) -> str:
    """``text`` shortened for an error message: hostile input is not echoed whole."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_depth(value: Any, what: str) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > MAX_JSON_DEPTH:
            raise _bad(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def decode_json(data: bytes, what: str, limit: int) -> Any:
    """Decode a client's JSON, bounded in size (413) and depth (400).

    msgspec raises RecursionError on very deep input; it and every other
    decoding error become a 400 that says what was wrong with ``what``.
    """
    if len(data) > limit:
        raise ApiError(413, ErrorCode.TOO_LARGE, f"{what} is larger than {limit} bytes")
    if not data.strip():
        raise _bad(f"{what} is empty: send a JSON document")
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise _bad(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise _bad(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    if isinstance(value, (dict, list)):
        _check_depth(value, what)
    return value


# ---------------------------------------------------------------------------
# Upload metadata: bindings, tail consumers, compatibility date
# ---------------------------------------------------------------------------


def _field(binding: dict[str, Any], key: str, where: str, *, optional: bool = False) -> str | None:
    value = binding.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not value and not optional):
        raise _bad(f"{where} needs a non-empty string {key!r}")
    return value


def _check_text(b: dict[str, Any], where: str) -> dict[str, Any]:
    text = b.get("text")
    if not isinstance(text, str):
        raise _bad(f"{where} needs a string 'text'")
    return {"text": text}


def _check_json(b: dict[str, Any], where: str) -> dict[str, Any]:
    if "json" not in b:
        raise _bad(f"{where} needs a 'json' value")
    return {"json": b["json"]}


def _check_kv(b: dict[str, Any], where: str) -> dict[str, Any]:
    return {"namespace_id": _field(b, "namespace_id", where)}


def _check_d1(b: dict[str, Any], where: str) -> dict[str, Any]:
    if "id" not in b and "database_id" in b:  # Wrangler's spelling
        b = {**b, "id": b["database_id"]}
    return {"id": _field(b, "id", where)}


def _check_r2(b: dict[str, Any], where: str) -> dict[str, Any]:
    return {"bucket_name": _field(b, "bucket_name", where)}


def _check_service(b: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"service": _script_ref(b.get("service"), f"{where} 'service'")}
    for key in ("environment", "entrypoint"):
        value = _field(b, key, where, optional=True)
        if value is not None:
            out[key] = value
    return out


def _script_ref(value: object, where: str) -> str:
    try:
        return validate_name("script", value)
    except StoreError as exc:
        raise _bad(f"{where}: {exc.message}") from None


def _check_dispatch(b: dict[str, Any], where: str) -> dict[str, Any]:
    namespace = b.get("namespace")
    try:
        validate_name("namespace", namespace)
    except StoreError as exc:
        raise _bad(f"{where}: {exc.message}") from None
    out: dict[str, Any] = {"namespace": namespace}
    outbound = b.get("outbound")
    if outbound is not None:
        if not isinstance(outbound, dict):
            raise _bad(f"{where} 'outbound' must be an object like {{\"worker\": {{\"service\": NAME}}}}")
        checked: dict[str, Any] = {}
        worker = outbound.get("worker")
        if worker is not None:
            if not isinstance(worker, dict):
                raise _bad(f"{where} 'outbound.worker' must be an object with 'service'")
            checked["worker"] = {"service": _script_ref(worker.get("service"), f"{where} outbound worker")}
            env = worker.get("environment")
            if isinstance(env, str):
                checked["worker"]["environment"] = env
        params = outbound.get("params", [])
        if not isinstance(params, list):
            raise _bad(f"{where} 'outbound.params' must be a list of {{\"name\": ...}}")
        names = []
        for param in params:
            name = param.get("name") if isinstance(param, dict) else None
            if not isinstance(name, str) or not name.isidentifier():
                raise _bad(f"{where} outbound param {_clip(repr(param))} needs a 'name' that is an identifier")
            names.append({"name": name})
        if names:
            checked["params"] = names
        out["outbound"] = checked
    return out


#: Binding types accepted in upload metadata, with their checkers.
BINDING_TYPES: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "plain_text": _check_text,
    "secret_text": _check_text,
    "json": _check_json,
    "kv_namespace": _check_kv,
    "d1": _check_d1,
    "r2_bucket": _check_r2,
    "dispatch_namespace": _check_dispatch,
    "service": _check_service,
}


def _check_bindings(raw: object, previous: ScriptRecord | None, keep: object) -> list[dict[str, Any]]:
    """Validate and normalise bindings (known keys only, so versions are stable).

    ``{"type": "inherit", "name": X}`` and ``keep_bindings: [types]`` carry
    bindings over from the deployed version, as on Cloudflare: that is how a
    redeploy keeps secrets it never sees again.
    """
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise _bad("metadata 'bindings' must be a list")
    if len(raw) > _MAX_BINDINGS:
        raise _bad(f"a script can have at most {_MAX_BINDINGS} bindings, got {len(raw)}")
    old = {b.get("name"): b for b in previous.bindings} if previous else {}
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, binding in enumerate(raw):
        where = f"binding #{i + 1}"
        if not isinstance(binding, dict):
            raise _bad(f"{where} must be an object with 'type' and 'name'")
        name = binding.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            raise _bad(f"{where} needs a 'name' that is a valid identifier (it becomes env.NAME), got {_clip(repr(name))}")
        where = f"binding {name!r}"
        if name in seen:
            raise _bad(f"two bindings are named {name!r}")
        seen.add(name)
        kind = binding.get("type")
        if kind == "inherit":
            if name not in old:
                raise _bad(f"{where} has type 'inherit' but the deployed script has no binding of that name")
            out.append(old[name])
            continue
        check = BINDING_TYPES.get(kind) if isinstance(kind, str) else None
        if check is None:
            raise _bad(f"{where} has unknown type {_clip(repr(kind))}; known types: {', '.join(BINDING_TYPES)}")
        out.append({"type": kind, "name": name, **check(binding, where)})
    if keep is not None:
        if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
            raise _bad("metadata 'keep_bindings' must be a list of binding types")
        for name, binding in old.items():
            if binding.get("type") in keep and name not in seen:
                out.append(binding)
                seen.add(name)
    return out


def _check_tail_consumers(raw: object) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("metadata 'tail_consumers' must be a list like [{\"service\": \"logger\"}]")
    if len(raw) > _MAX_TAIL_CONSUMERS:
        raise _bad(f"a script can have at most {_MAX_TAIL_CONSUMERS} tail consumers, got {len(raw)}")
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise _bad(f"tail consumer {_clip(repr(item))} must be an object with 'service'")
        consumer: dict[str, Any] = {"service": _script_ref(item.get("service"), "tail consumer")}
        for key in ("environment", "namespace"):
            if isinstance(item.get(key), str):
                consumer[key] = item[key]
        out.append(consumer)
    return out


def _check_date(raw: object) -> str:
    if raw is None or raw == "":
        return ""
    if isinstance(raw, str) and len(raw) == 10:
        try:
            datetime.date.fromisoformat(raw)
            return raw
        except ValueError:
            pass
    raise _bad(f"metadata 'compatibility_date' must be a date like 2025-06-01, got {_clip(repr(raw))}")


def _check_module_path(path: str) -> None:
    """Part names become import paths: relative, no '..', no surprises."""
    parts = path.split("/")
    if (
        len(path) > 512
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise _bad(
            f"invalid module name {_clip(path)!r}: use a relative path like 'worker.py' or 'src/lib/util.py'"
        )


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def _public_binding(binding: dict[str, Any]) -> dict[str, Any]:
    if binding.get("type") == "secret_text":
        return {"type": "secret_text", "name": binding.get("name")}
    return binding


def _script_json(record: ScriptRecord, *, with_modules: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": record.name,
        "name": record.name,
        "dispatch_namespace": record.namespace if record.namespace != PLATFORM else None,
        "etag": record.version,
        "version": record.version,
        "main_module": record.main_module,
        "bindings": [_public_binding(b) for b in record.bindings],
        "tags": list(record.tags),
        "tail_consumers": record.tail_consumers,
        "compatibility_date": record.compatibility_date,
        "created_on": record.created_on,
        "modified_on": record.modified_on,
    }
    if with_modules:
        out["modules"] = [{"name": k, "size": len(v)} for k, v in sorted(record.modules.items())]
    return out


def _namespace_json(info: NamespaceInfo) -> dict[str, Any]:
    return {
        "namespace_id": info.id,
        "namespace_name": info.name,
        "name": info.name,
        "created_on": info.created_on,
        "script_count": info.script_count,
    }


def _route_json(info: RouteInfo) -> dict[str, Any]:
    return {"id": info.id, "pattern": info.pattern, "script": info.script}


def _envelope(status: int, result: Any = None, *, errors: list[dict[str, Any]] | None = None,
              result_info: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {
        "success": not errors,
        "errors": errors or [],
        "messages": [],
        "result": result,
    }
    if result_info is not None:
        body["result_info"] = result_info
    return status, list(_JSON_HEADERS), msgspec.json.encode(body)


# ---------------------------------------------------------------------------
# Requests and routing
# ---------------------------------------------------------------------------


class _Request(msgspec.Struct, kw_only=True):
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return decode_json(self.body, "request body", _MAX_JSON_BODY)


Handler = Callable[[_Request], Awaitable[Response]]

# Segment templates: '*' matches anything (the account label), '{x}' captures.
_NS = ("accounts", "*", "workers", "dispatch", "namespaces")
_PS = ("accounts", "*", "workers", "scripts")


def _parse_target(target: str) -> tuple[str, list[str], dict[str, str]]:
    """``(path, decoded segments, query)`` of a request target, each bounded.

    Names, tags and ids are short, so a long target, a long segment or many
    query fields can only be hostile: refused before anything looks them up.
    """
    if len(target) > _MAX_TARGET:
        raise _bad(f"the request target is {len(target)} characters long, over the {_MAX_TARGET} accepted")
    try:
        split = urllib.parse.urlsplit(target)
        segments = [urllib.parse.unquote(s, errors="strict") for s in split.path.split("/")]
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(
            split.query, keep_blank_values=True, errors="strict",
            max_num_fields=_MAX_QUERY_FIELDS).items()}
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(f"malformed request target {_clip(target, 200)!r}: {exc} "
                   f"(percent-escapes must be UTF-8; at most {_MAX_QUERY_FIELDS} query fields)") from None
    if segments and segments[0] == "":
        segments = segments[1:]
    if segments and segments[-1] == "":
        segments.pop()  # tolerate a trailing slash
    if len(segments) > _MAX_SEGMENTS:
        raise _bad(f"the path has {len(segments)} segments; no admin API endpoint has more than {_MAX_SEGMENTS}")
    for segment in segments:
        if len(segment) > _MAX_SEGMENT:
            raise _bad(f"path segment {_clip(segment)!r} is longer than {_MAX_SEGMENT} characters")
    return split.path, segments, query


def _tag_filters(request: _Request) -> list[tuple[str, bool]]:
    """``?tags=`` parsed, at most _MAX_TAG_FILTERS of them (each one is an SQL clause)."""
    filters = parse_tag_filters(request.query.get("tags", ""))
    if len(filters) > _MAX_TAG_FILTERS:
        raise _bad(f"?tags= has {len(filters)} filters, more than the {_MAX_TAG_FILTERS} accepted")
    return filters


def _match(template: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(template) != len(segments):
        return None
    params: dict[str, str] = {}
    for want, got in zip(template, segments):
        if want == "*":
            continue
        if want.startswith("{"):
            params[want[1:-1]] = got
        elif want != got:
            return None
    return params


class AdminAPI:
    """Answers admin requests; one instance per supervisor."""

    def __init__(self, store: Store, hooks: AdminHooks, *, max_script_bytes: int = 10 * 2**20) -> None:
        self.store = store
        self.hooks = hooks
        self.max_script_bytes = max_script_bytes
        self._routes: list[tuple[tuple[str, ...], dict[str, Handler]]] = []
        r = self._routes
        r.append((("metrics",), {"GET": self._metrics}))
        r.append((("tail",), {"GET": self._tail}))
        r.append((_NS, {"GET": self._list_namespaces, "POST": self._create_namespace}))
        r.append(((*_NS, "{ns}"), {"GET": self._get_namespace, "DELETE": self._delete_namespace}))
        r.append(((*_NS, "{ns}", "scripts"), {"GET": self._list_scripts, "DELETE": self._bulk_delete}))
        for prefix in ((*_NS, "{ns}", "scripts"), _PS):
            r.append(((*prefix, "{name}"),
                      {"PUT": self._put_script, "GET": self._get_script, "DELETE": self._delete_script}))
            r.append(((*prefix, "{name}", "tags"), {"GET": self._get_tags, "PUT": self._put_tags}))
            r.append(((*prefix, "{name}", "tags", "{tag}"),
                      {"PUT": self._add_tag, "DELETE": self._remove_tag}))
        r.append((_PS, {"GET": self._list_scripts}))
        r.append((("accounts", "*", "workers", "routes"), {"GET": self._list_routes, "POST": self._add_route}))
        r.append((("accounts", "*", "workers", "routes", "{id}"),
                  {"GET": self._get_route, "DELETE": self._delete_route}))

    # -- entry point ----------------------------------------------------------

    async def handle(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> Response:
        """Answer one request. Never raises (except cancellation)."""
        if isinstance(method, bytes):
            method = method.decode("latin-1")
        if isinstance(target, bytes):
            target = target.decode("latin-1")
        method = _clip(method.upper(), 20)
        path = _clip(target, 200)
        try:
            path, segments, query = _parse_target(target)
            if len(headers) > _MAX_HEADERS:
                raise _bad(f"the request has {len(headers)} headers, more than the {_MAX_HEADERS} accepted")
            header_map = {
                k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers
            }
            handler, params, allowed = self._route(method, segments)
            if handler is None:
                if allowed:
                    status, hdrs, payload = self._error(
                        method, path, ApiError(405, ErrorCode.METHOD_NOT_ALLOWED,
                                               f"{method} is not allowed on {path}; use {', '.join(allowed)}"))
                    return status, [*hdrs, (b"allow", ", ".join(allowed).encode())], payload
                raise ApiError(404, ErrorCode.NOT_FOUND, f"no admin API endpoint at {path}")
            request = _Request(method=method, path=path, params=params, query=query,
                               headers=header_map, body=body)
            return await handler(request)
        except (StoreError, multipart.MultipartError) as exc:
            return self._error(method, path, exc)
        except trio.Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - the API must answer, whatever happened
            return self._error(method, path, exc)

    def _route(self, method: str, segments: list[str]) -> tuple[Handler | None, dict[str, str], list[str]]:
        allowed: list[str] = []
        for template, methods in self._routes:
            params = _match(template, segments)
            if params is None:
                continue
            handler = methods.get(method)
            if handler is not None:
                return handler, params, []
            allowed = list(methods)
        return None, {}, allowed

    def _error(self, method: str, path: str, exc: BaseException) -> Response:
        record: dict[str, Any] = {"method": method, "path": path}
        if isinstance(exc, StoreError):
            status, code, message = exc.status, exc.code, exc.message
        elif isinstance(exc, multipart.MultipartError):
            status = exc.status
            code = ErrorCode.TOO_LARGE if status == 413 else ErrorCode.BAD_REQUEST
            message = str(exc)
        else:
            status, code = 500, ErrorCode.INTERNAL
            message = f"internal error: {type(exc).__name__}: {exc}"
            record["traceback"] = "".join(traceback.format_exception(exc))
        message = _clip(message, _MAX_MESSAGE)  # a hostile value echoed in it stays small
        record.update(status=status, code=code, message=message)
        _log(logging.ERROR if status >= 500 else logging.WARNING, "admin.error", **record)
        return _envelope(status, None, errors=[{"code": code, "message": message}])

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a store call in a worker thread (SQLite may touch the disk)."""
        return await trio.to_thread.run_sync(functools.partial(fn, *args))

    @staticmethod
    def _namespace_of(request: _Request) -> str:
        """PLATFORM for /workers/scripts/..., else the validated {ns}."""
        ns = request.params.get("ns")
        if ns is None:
            return PLATFORM
        return validate_name("namespace", ns)

    def _changed(self, namespace: str, name: str) -> None:
        try:
            self.hooks.script_changed(namespace, name)
        except Exception:  # noqa: BLE001 - the write is done; report, don't fail it
            _log(logging.ERROR, "admin.script_changed_hook_failed", namespace=namespace, script=name,
                 traceback=traceback.format_exc())

    # -- metrics and tail -----------------------------------------------------

    async def _metrics(self, request: _Request) -> Response:
        text = self.hooks.metrics_text()
        return 200, list(_METRICS_HEADERS), text.encode()

    async def _tail(self, request: _Request) -> Response:
        raise ApiError(501, ErrorCode.NOT_IMPLEMENTED, "GET /tail is not implemented yet")

    # -- namespaces -----------------------------------------------------------

    async def _list_namespaces(self, request: _Request) -> Response:
        infos = await self._run(self.store.list_namespaces)
        return _envelope(200, [_namespace_json(i) for i in infos])

    async def _create_namespace(self, request: _Request) -> Response:
        body = request.json()
        name = body.get("name") if isinstance(body, dict) else None
        if name is None and isinstance(body, dict):
            name = body.get("namespace_name")
        if name is None:
            raise _bad('send {"name": "NAMESPACE"} to create a dispatch namespace')
        info = await self._run(self.store.create_namespace, name)
        _log(logging.INFO, "admin.namespace_created", namespace=info.name)
        return _envelope(200, _namespace_json(info))

    async def _get_namespace(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        info = await self._run(self.store.get_namespace, ns)
        if info is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"dispatch namespace {ns!r} does not exist")
        return _envelope(200, _namespace_json(info))

    async def _delete_namespace(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        names = await self._run(self.store.delete_namespace, ns)
        for name in names:
            self._changed(ns, name)
        _log(logging.INFO, "admin.namespace_deleted", namespace=ns, scripts=len(names))
        return _envelope(200, {"name": ns, "scripts_deleted": len(names)})

    # -- scripts --------------------------------------------------------------

    async def _list_scripts(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        filters = _tag_filters(request)
        raw_per_page = request.query.get("per_page", "100")
        try:
            per_page = int(raw_per_page)
        except ValueError:
            raise _bad(f"per_page must be an integer, got {_clip(raw_per_page)!r}") from None
        cursor = request.query.get("cursor") or None
        records, next_cursor = await self._run(self.store.list_scripts, ns, filters, cursor, per_page)
        return _envelope(
            200,
            [_script_json(r, with_modules=False) for r in records],
            result_info={"count": len(records), "per_page": per_page, "cursor": next_cursor or ""},
        )

    async def _bulk_delete(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        filters = _tag_filters(request)
        if not filters:
            raise _bad("bulk delete needs ?tags=TAG:yes|no[,...]; to delete the namespace, DELETE it")
        names = await self._run(self.store.delete_scripts_by_tags, ns, filters)
        for name in names:
            self._changed(ns, name)
        _log(logging.INFO, "admin.scripts_bulk_deleted", namespace=ns, count=len(names))
        return _envelope(200, {"count": len(names)})

    async def _get_script(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        name = validate_name("script", request.params["name"])
        record = await self._run(self.store.get_script, ns, name)
        if record is None:
            raise script_not_found(ns, name)
        return _envelope(200, _script_json(record, with_modules=True))

    async def _delete_script(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        name = validate_name("script", request.params["name"])
        if not await self._run(self.store.delete_script, ns, name):
            raise script_not_found(ns, name)
        self._changed(ns, name)
        _log(logging.INFO, "admin.script_deleted", namespace=ns, script=name)
        return _envelope(200, {"id": name})

    async def _put_script(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        name = validate_name("script", request.params["name"])
        if len(request.body) > self.max_script_bytes + _UPLOAD_OVERHEAD:
            raise ApiError(413, ErrorCode.TOO_LARGE,
                           f"upload of {len(request.body)} bytes exceeds the {self.max_script_bytes}-byte "
                           "script size limit")
        if ns != PLATFORM and await self._run(self.store.get_namespace, ns) is None:
            raise ApiError(404, ErrorCode.NOT_FOUND, f"dispatch namespace {ns!r} does not exist")
        parts = multipart.parse(request.headers.get("content-type", ""), request.body,
                                max_part_bytes=self.max_script_bytes)
        previous = await self._run(self.store.get_script, ns, name)
        record = self._build_record(ns, name, parts, previous)
        error = await self.hooks.validate(record)
        if error is not None:
            raise ApiError(400, ErrorCode.VALIDATION_FAILED, f"script {name!r} failed to load: {error}")
        stored = await self._run(self.store.put_script, record)
        self._changed(ns, name)
        _log(logging.INFO, "admin.script_deployed", namespace=ns, script=name,
                             version=stored.version)
        return _envelope(200, _script_json(stored, with_modules=True))

    def _build_record(self, ns: str, name: str, parts: list[multipart.Part],
                      previous: ScriptRecord | None) -> ScriptRecord:
        metadata_parts = [p for p in parts if p.name == "metadata"]
        if not metadata_parts:
            raise _bad("the upload has no 'metadata' part (JSON with main_module, bindings, ...)")
        metadata = decode_json(metadata_parts[0].data, "the 'metadata' part", _MAX_METADATA_BYTES)
        if not isinstance(metadata, dict):
            raise _bad("the 'metadata' part must be a JSON object")
        modules: dict[str, bytes] = {}
        for part in parts:
            if part.name == "metadata":
                continue
            _check_module_path(part.name)
            modules[part.name] = part.data
        if not modules:
            raise _bad("the upload has no modules: add one part per file, named by its path")
        total = sum(len(v) for v in modules.values())
        if total > self.max_script_bytes:
            raise ApiError(413, ErrorCode.TOO_LARGE,
                           f"script is {total} bytes, over the {self.max_script_bytes}-byte limit")
        main_module = metadata.get("main_module")
        if not isinstance(main_module, str) or not main_module:
            raise _bad(f"metadata needs 'main_module', one of: {', '.join(sorted(modules))}")
        if main_module not in modules:
            raise _bad(f"main_module {_clip(main_module)!r} is not among the uploaded parts: "
                       f"{', '.join(sorted(modules))}")
        if posixpath.splitext(main_module)[1] != ".py":
            raise _bad(f"main_module {_clip(main_module)!r} must be a .py file")
        bindings = _check_bindings(metadata.get("bindings"), previous, metadata.get("keep_bindings"))
        # No 'tags' key keeps the deployed tags (a code update should not untag);
        # an explicit list, even empty, replaces them.
        tags = metadata["tags"] if "tags" in metadata else list(previous.tags) if previous else []
        if tags is None:
            tags = []
        if not isinstance(tags, list):
            raise _bad("metadata 'tags' must be a list of strings")
        for tag in tags:
            validate_tag(tag)
        compatibility_date = _check_date(metadata.get("compatibility_date"))
        version = content_version(
            main_module, modules, {"bindings": bindings, "compatibility_date": compatibility_date}
        )
        return ScriptRecord(
            namespace=ns,
            name=name,
            version=version,
            main_module=main_module,
            modules=modules,
            bindings=bindings,
            tags=tags,
            compatibility_date=compatibility_date,
            tail_consumers=_check_tail_consumers(metadata.get("tail_consumers")),
        )

    # -- tags -----------------------------------------------------------------

    async def _get_tags(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        name = validate_name("script", request.params["name"])
        return _envelope(200, await self._run(self.store.get_tags, ns, name))

    async def _put_tags(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        name = validate_name("script", request.params["name"])
        body = request.json()
        tags = body.get("tags") if isinstance(body, dict) else body
        if not isinstance(tags, list):
            raise _bad('send the tags as a JSON list, e.g. ["plan:free", "user:42"]')
        result = await self._run(self.store.put_tags, ns, name, tags)
        self._changed(ns, name)
        return _envelope(200, result)

    async def _add_tag(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        name = validate_name("script", request.params["name"])
        result = await self._run(self.store.add_tag, ns, name, request.params["tag"])
        self._changed(ns, name)
        return _envelope(200, result)

    async def _remove_tag(self, request: _Request) -> Response:
        ns = self._namespace_of(request)
        name = validate_name("script", request.params["name"])
        result = await self._run(self.store.remove_tag, ns, name, request.params["tag"])
        self._changed(ns, name)
        return _envelope(200, result)

    # -- routes ---------------------------------------------------------------

    async def _list_routes(self, request: _Request) -> Response:
        return _envelope(200, [_route_json(r) for r in await self._run(self.store.list_routes)])

    async def _add_route(self, request: _Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("pattern"), str) \
                or not isinstance(body.get("script"), str):
            raise _bad('send {"pattern": "*.example.com/*", "script": "NAME"} to add a route')
        info = await self._run(self.store.add_route, body["pattern"], body["script"])
        _log(logging.INFO, "admin.route_added", pattern=info.pattern, script=info.script)
        return _envelope(200, _route_json(info))

    async def _get_route(self, request: _Request) -> Response:
        route_id = request.params["id"]
        for route in await self._run(self.store.list_routes):
            if route.id == route_id:
                return _envelope(200, _route_json(route))
        raise ApiError(404, ErrorCode.NOT_FOUND, f"route {route_id!r} does not exist")

    async def _delete_route(self, request: _Request) -> Response:
        route_id = request.params["id"]
        if not await self._run(self.store.delete_route, route_id):
            raise ApiError(404, ErrorCode.NOT_FOUND, f"route {route_id!r} does not exist")
        _log(logging.INFO, "admin.route_deleted", id=route_id)
        return _envelope(200, {"id": route_id})
