"""Names vulture cannot see used: read by name at run time, or called by code it does not scan.

Passed to vulture by scripts/test after supervisor/ sandbox/ protocol/. Started
from ``vulture --make-whitelist`` and pruned by hand: each entry is a use
vulture cannot see, grouped by why. It is never imported (``_`` and the bare
names are vulture's whitelist syntax, hence the ruff per-file ignores in
pyproject.toml). Dead code does not belong here: delete it instead.
"""

# -- The Workers SDK surface tenants call (Cloudflare's names, snake_case aliases
#    and argument names kept for signature compatibility) -------------------------

# sandbox/bindings/d1.py
_.exec
constraint  # withSession(constraint)
with_session
get_bookmark
# sandbox/bindings/durable_objects.py
to_string
id_from_name
new_unique_id
id_from_string
get_by_name
# sandbox/bindings/kv.py (KvNamespace, workerd's class name, is registered with @kind("kv_namespace"))
KvNamespace
get_with_metadata
# sandbox/bindings/queues.py
send_batch
# sandbox/bindings/r2.py
_.http_etag
_.http_metadata
_.custom_metadata
_.storage_class
write_http_metadata
body_used
arrayBuffer
array_buffer
upload_part
create_multipart_upload
resume_multipart_upload
# sandbox/bindings/worker_loader.py
get_entrypoint
# sandbox/workers.py (Request, Response)
_.cf
replace_body
# sandbox/pyodide_shim.py (attributes of the pyodide modules)
_.IN_BROWSER
_.WebLoop
# sandbox/js_shim.py (attributes of the js module)
_.TextDecoder
_.TextEncoder
# sandbox/web_streams.py (ReadableStream, its reader)
get_reader
release_lock
# sandbox/workers_asgi.py (asgi.run_in_background)
run_in_background
# sandbox/pyodide_shim.py (ArrayBuffer, Uint8Array as to_js gives them)
byteLength
to_memoryview
tolist  # memoryview's, as the current SDK hands a binding's ArrayBuffer
# sandbox/durable_objects.py (SqlStorageCursor, DurableObjectStorage, DurableObjectState)
_.column_names
_.rows_read
_.rows_written
to_array
_.one
_.transaction
_.sync
delete_alarm
block_concurrency_while
transaction_sync  # storage.transaction_sync, tenant API (sandbox/durable_objects.py)
# sandbox/events.py
no_retry
# sandbox/queue_batch.py
_.ack
ack_all
retry_all
# sandbox/sdk_types.py (Blob, File, FormData)
endings  # Blob(parts, type, endings)
_.slice
lastModified
getAll
# sandbox/workers.py (Headers, Request, Response, the context)
formData
_.clone
_.js_object
_.integrity  # Request.integrity, tenant API (sandbox/workers.py)
_.keepalive  # Request.keepalive, tenant API (sandbox/workers.py)
_.from_json
pass_through_on_exception
# sandbox/workers.py: what email.message.Message's methods read on Headers (as_string() and co.)
_.preamble
_.epilogue
_.defects
# sandbox/workers_asgi.py (Cloudflare's asgi module has websocket(); Corral refuses it)
websocket
# sandbox/logs.py (console.debug)
_.debug
# sandbox/child.py: sys.__stdout__ / sys.__stderr__, read by tenant code
_.__stdout__
_.__stderr__
# sandbox/workers.py: Headers._undecoded, read by Headers.__getattr__ through object.__getattribute__
_._undecoded
# sandbox/logs.py: sys.stdout as Pyodide's TextIOWrapper has it
_.line_buffering
_.reconfigure
# sandbox/js_shim.py and sandbox/sdk_types.py: js.performance, and a JS object's
# Pyodide methods (JsDict), all read by tenant code
_.timeOrigin
_.performance
_.typeof
_.as_object_map
_.object_keys
_.object_entries
# sandbox/js_shim.py (the ``js`` module: js.Object.fromEntries, js.JSON.stringify,
# URL.pathname / searchParams, and a module __getattr__ for what is missing)
_.fromEntries
_.stringify
replacer  # JSON.stringify(value, replacer, space)
_.pathname
_.searchParams
_.Object
_.JSON
_.Date
# sandbox/js_globals.py (JavaScript's standard globals on the js module, and their
# members tenants call: Date, Math, Map, Set, Array, Promise, Number, String, navigator)
_.Math
_.Map
_.Set
_.Array
_.Promise
_.Number
_.String
_.navigator
_.isNaN
_.isFinite
_.Infinity
_.NaN
valueOf
toGMTString
getDate
getDay
getFullYear
getMonth
getHours
getMinutes
getSeconds
getMilliseconds
getTimezoneOffset
LN10
LN2
PI
LOG10E
LOG2E
SQRT1_2
SQRT2
of
isArray
allSettled
race
setTimeout
setInterval
clearInterval
MIN_SAFE_INTEGER
EPSILON
MAX_VALUE
MIN_VALUE
NaN
NEGATIVE_INFINITY
POSITIVE_INFINITY
isSafeInteger
isFinite
isNaN
fromCharCode
fromCodePoint
userAgent
hardwareConcurrency
language
# sandbox/events.py (a tail worker's TraceItemFetchEventInfoRequest)
getUnredacted
# sandbox/workers.py (Headers, as JavaScript's and the SDK's)
get_set_cookie
# sandbox/js_shim.py: js.crypto, js.globalThis, js.undefined; a js.fetch response's class
_.crypto
_.globalThis
_.undefined
_.__class__  # a js.fetch response becomes a JsResponse in place (its body and state stay)
# sandbox/js_url.py (URL and URLSearchParams: the WHATWG methods tenants call)
forEach
canParse
toJSON
# sandbox/web_crypto.py (crypto.subtle and crypto's own methods, snake_case aliases too)
importKey
_.sign
_.verify
timingSafeEqual
_.subtle
get_random_values
random_uuid
# sandbox/durable_objects.py (DurableObjectState's hibernation event timeout, snake_case)
set_hibernatable_web_socket_event_timeout
get_hibernatable_web_socket_event_timeout
# sandbox/http_shims.py (aiohttp's ClientResponse and StreamReader API)
_.real_url
wait_for_close
iter_chunked
iter_any
at_eof
# sandbox/pyodide_shim.py (pyodide and pyodide.ffi: types for isinstance checks,
# functions and keyword arguments tenants' code passes, module __getattr__/__version__)
JsArray
JsBuffer
create_pyproxies
default_converter
capture_this
roundtrip
destroy_proxies
_.raise_for_status
_.__version__
# sandbox/js_streams.py (js.ReadableStream / TransformStream controllers and writers)
_.enqueue
_.desiredSize
_.terminate
_.get_writer
strategies

# -- Module-level __getattr__ hooks and attributes set on other modules ------------

_.__getattr__  # js, pyodide, pyodide.ffi modules (sandbox/js_shim.py, sandbox/pyodide_shim.py)
_.__loader__  # sandbox/import_patches.py: the patched module's loader
_.asgi  # sandbox/tenant_modules.py: ``workers.asgi``
_.wsgi  # sandbox/tenant_modules.py: ``workers.wsgi``
_.workflows  # sandbox/tenant_modules.py: ``workers.workflows``
# HTMLRewriter's API, and html.parser.HTMLParser's callbacks it overrides (sandbox/html_rewriter.py)
_.namespaceURI
_.selfClosing
_.canHaveContent
_.lastInTextNode
_.publicId
_.systemId
_.on
_.onDocument
_.transform
_.getAttribute
_.hasAttribute
_.setAttribute
_.removeAttribute
_.setInnerContent
_.removeAndKeepContent
_.onEndTag
# WebSockets' API (sandbox/websockets.py, sandbox/workers.py)
_.READY_STATE_CONNECTING
_.READY_STATE_OPEN
_.READY_STATE_CLOSING
_.READY_STATE_CLOSED
_.extensions
_.addEventListener
_.removeEventListener
_.serializeAttachment
_.deserializeAttachment
_.object_values
_.webSocket
_.acceptWebSocket
_.getWebSockets
_.getTags
_.setWebSocketAutoResponse
_.getWebSocketAutoResponse
_.getWebSocketAutoResponseTimestamp
_.handle_starttag
_.handle_startendtag
_.handle_endtag
_.handle_data
_.handle_entityref
_.handle_charref
_.handle_comment
_.handle_decl
_.handle_pi
_.unknown_decl
_._child_created  # sandbox/unavailable.py: what subprocess.Popen.__del__ reads
_.start_new  # sandbox/unavailable.py: _thread.start_new, the alias of start_new_thread

_._max_size  # SpooledTemporaryFile's roll-over size, unbounded where nothing is writable (sandbox/stdlib_shims.py)
_.__annotations__  # asgi.env's, for FastAPI to read as a dependency's signature (sandbox/workers_asgi.py)

# -- Protocols and base classes of other libraries (they call these by name) -------

_.http_open  # urllib.request.HTTPHandler (sandbox/http_shims.py)
_.https_open  # urllib.request.HTTPSHandler (sandbox/http_shims.py)
assert_same_host  # urllib3's urlopen() signature (sandbox/http_shims.py)
kw  # urllib3's urlopen() signature (sandbox/http_shims.py)
_.isclosed  # http.client.HTTPResponse, read by requests' cookie jar (sandbox/http_shims.py)
_.write_eof  # aiohttp's StreamWriter, called by a payload as it writes (sandbox/http_shims.py)
_.handle_request  # httpx.BaseTransport (sandbox/http_shims.py)
_.handle_async_request  # httpx.AsyncBaseTransport (sandbox/http_shims.py)
_._init_transport  # httpx.Client / AsyncClient (sandbox/http_shims.py)
_._init_proxy_transport  # httpx.Client / AsyncClient (sandbox/http_shims.py)
abandon_on_cancel  # anyio.to_thread.run_sync() signature (sandbox/http_shims.py)
cancellable  # anyio.to_thread.run_sync() signature (sandbox/http_shims.py)
_.writable  # io.RawIOBase (sandbox/logs.py)
_.readinto  # io.RawIOBase (sandbox/workers_wsgi.py)
_.gr_context  # greenlet.greenlet: the context it runs in (sandbox/run_sync.py)
_.connect_unix_socket  # httpcore.AsyncNetworkBackend (supervisor/calls/egress_backend.py)
_.extract_cookies  # http.cookiejar.CookieJar (supervisor/calls/http_client.py)
_.set_cookie  # http.cookiejar.CookieJar (supervisor/calls/http_client.py)
cookie  # CookieJar.set_cookie(cookie) (supervisor/calls/http_client.py)
src  # sqlite3 authorizer callback signature (supervisor/objects/storage.py)
_.before_io_wait  # trio.abc.Instrument hook (supervisor/busy_poll.py)

# -- ctypes structures the kernel reads ---------------------------------------------

_.sample_period  # perf_event_attr (supervisor/limits/cpu_meter.py)
_.wakeup_events  # perf_event_attr (supervisor/limits/cpu_meter.py)
_.tv_sec  # struct timespec of the timerfd (supervisor/limits/budget_watch.py)
_.tv_nsec  # struct timespec of the timerfd (supervisor/limits/budget_watch.py)
_.handled_access_net  # landlock_ruleset_attr (sandbox/landlock.py)
_.scoped  # landlock_ruleset_attr (sandbox/landlock.py)
# The kernel's LANDLOCK_ACCESS_FS_* bits (sandbox/landlock.py), kept as the full ABI table.
ACCESS_FS_EXECUTE
ACCESS_FS_WRITE_FILE
ACCESS_FS_REMOVE_DIR
ACCESS_FS_REMOVE_FILE
ACCESS_FS_MAKE_CHAR
ACCESS_FS_MAKE_DIR
ACCESS_FS_MAKE_REG
ACCESS_FS_MAKE_SOCK
ACCESS_FS_MAKE_FIFO
ACCESS_FS_MAKE_BLOCK
ACCESS_FS_MAKE_SYM

# -- msgspec Struct fields: wrangler / API keys accepted when decoding ---------------

preview_id  # supervisor/admin/project.py
preview_database_id  # supervisor/admin/project.py
migrations_table  # supervisor/admin/project.py
preview_bucket_name  # supervisor/admin/project.py
max_concurrency  # supervisor/admin/project.py, supervisor/model.py
namespace_id  # supervisor/model.py (read with getattr in supervisor/bindings/__init__.py)
zone_name  # supervisor/admin/routes_api.py (wrangler's route entries; zones are labels)
primary_location_hint  # supervisor/admin/kv.py (wrangler d1 create; one location here)
locationHint  # supervisor/admin/r2_buckets.py (the SDK's bucket create; one location here)
storageClass  # supervisor/admin/r2_buckets.py
visibility_timeout_ms  # supervisor/admin/queues_api.py (a consumer's settings, as wrangler sends them)
environment_name  # supervisor/admin/queues_api.py

# -- Registered by decorator, or dispatched by method name ---------------------------

CacheHandler  # @register("cache") (supervisor/bindings/cache.py)
DurableObjectNamespaceHandler  # @register (supervisor/bindings/durable_objects.py)
DurableObjectStorageHandler  # @register (supervisor/bindings/durable_objects.py)
KVHandler  # @register (supervisor/bindings/kv.py)
QueueHandler  # @register (supervisor/bindings/queues.py)
R2Handler  # @register (supervisor/bindings/r2.py)
WorkerLoaderHandler  # @register (supervisor/bindings/worker_loader.py)
RateLimitHandler  # @register (supervisor/bindings/rate_limit.py)
# R2Handler.call looks up getattr(self, "_" + method) (supervisor/bindings/r2.py)
_._createMultipartUpload
_._uploadPart
_._abortMultipartUpload
_._completeMultipartUpload

_.run_in_executor  # ChildLoop overrides asyncio's (sandbox/child.py; sandbox/thread_shims.py)
_.gauss_next  # random.Random's own state, reset with the seed (sandbox/fork.py)
_._internal_fds  # asyncio's own count, kept right by ChildLoop.after_fork (sandbox/child.py)
_.__spec__  # a module's import attributes, set as the import system sets them (sandbox/loader.py)
_.__cached__
_.has_location
_.start_clock  # trio.abc.Clock's interface: trio calls them (supervisor/loop_clock.py)
_.deadline_to_sleep_time
_.text_factory  # sqlite3's decoder of TEXT, read by sqlite3 itself (supervisor/bindings/d1.py)
_._uname_cache  # platform's cache of uname(), cleared after sethostname (sandbox/jail.py)
_.USER_BASE  # site's per-user paths, forgotten in the zygote (sandbox/zygote.py)
_.USER_SITE

# -- Called only from tests ----------------------------------------------------------

_.drain  # Channel.drain: tests/test_hardening.py's hostile worker floods the channel with it
