"""The ``corral`` command (SPEC section 1).

``corral serve`` runs the supervisor; every other command is a thin client of
the admin REST API over the admin unix socket (http.client; rich for
tables and progress bars, see :mod:`supervisor.cli_output`). More commands
live beside it: :mod:`supervisor.cli_versions` (versions, rollback),
:mod:`supervisor.cli_access` (secret, token), :mod:`supervisor.cli_deploy`
(--dry-run, assets). Exit status: 0 success, 1 an API error (or an
unreachable supervisor), 2 bad usage (argparse, or a project/config that
cannot be read). ``--json`` prints the API's ``result`` as JSON; otherwise
output is a compact table for people.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any

import msgspec

from supervisor import cli_d1, model
from supervisor.admin import multipart
from supervisor.errors import Invalid, StartupError
from supervisor.lifecycle import Outcome
from supervisor.observability import cli_tail as observability_cli
from supervisor.terminal_text import printable, printable_lines

__all__ = ["AdminClient", "ApiCallError", "UnixHTTPConnection", "main"]

from supervisor.cli_client import (  # noqa: E402 - re-exported for the command modules' callers
    API,
    DEFAULT_SOCKET,
    AdminClient,
    ApiCallError,
    UnixHTTPConnection,
    _emit,
    _emit_table,
    _q,
    _scripts_path,
)

# -- commands ----------------------------------------------------------------


def _cmd_deploy(args: argparse.Namespace, client: AdminClient) -> int:
    from supervisor.admin.project import ProjectError, load_project, module_content_type

    try:
        project = load_project(args.path, env=args.env, allow_outside=args.allow_outside)
    except ProjectError as exc:  # (it may name the project's files: tenant text)
        print(f"corral deploy: {printable(exc, keep=chr(9) + chr(10))}", file=sys.stderr)
        return 2
    metadata = project.metadata
    bindings = list(metadata.bindings)
    for item in args.var or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            print(f"corral deploy: --var wants KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        try:
            var = model.PlainText(name=key, text=value)
        except Invalid as exc:
            print(f"corral deploy: --var {key}: {exc}", file=sys.stderr)
            return 2
        bindings = [b for b in bindings if b.name != key]
        bindings.append(var)
    tags = metadata.tags
    if args.tag:
        if (problem := _bad_tag(args.tag)) is not None:
            print(f"corral deploy: --tag: {problem}", file=sys.stderr)
            return 2
        tags = list(dict.fromkeys([*(tags or []), *args.tag]))
    if (problem := _undecodable_module(project.modules)) is not None:
        print(f"corral deploy: {printable(problem)}", file=sys.stderr)
        return 2
    # As wrangler does: secrets set through the API survive a redeploy of the code.
    metadata = msgspec.structs.replace(metadata, bindings=bindings, tags=tags,
                                       keep_bindings=metadata.keep_bindings or ["secret_text"])
    if args.message is not None or args.version_tag is not None:
        try:  # the upload's annotations, as wrangler sends them (workers/tag, workers/message)
            notes = model.VersionAnnotations(tag=args.version_tag, message=args.message)
        except Invalid as exc:
            print(f"corral deploy: {exc}", file=sys.stderr)
            return 2
        metadata = msgspec.structs.replace(metadata, annotations=notes)
    from supervisor import cli_deploy

    if args.dry_run:
        lines = cli_deploy.plan(client, args.namespace, args.name, project.main_module, project.modules, metadata)
        if project.assets:
            lines.append(f"~ assets: {len(project.assets)} file(s) "
                         "(only those the store lacks are uploaded)")
        _emit(args, {"changes": lines}, "\n".join(["dry run: nothing was uploaded", *map(printable, lines)]))
        return 0
    if project.assets:
        # As Cloudflare's API takes them: an upload session, only the missing
        # files, and the completion token in the script's metadata.
        jwt, count, sent = cli_deploy.upload_assets(client, args.namespace, args.name, project.assets,
                                                    show_progress=not args.json)
        uploads = metadata.assets or model.UploadAssets()
        metadata = msgspec.structs.replace(metadata, assets=msgspec.structs.replace(uploads, jwt=jwt))
        if not args.json:
            print(f"assets: {count} file(s), {sent} uploaded", file=sys.stderr)
    # Its queue consumers always, even none, and its crons when the config has
    # ``triggers`` (even empty): an upload without the keys keeps the deployed
    # ones (as Cloudflare keeps schedules and consumers), and wrangler leaves
    # schedules alone when a config does not define ``triggers``.
    fields = {**msgspec.to_builtins(metadata), "queue_consumers": msgspec.to_builtins(metadata.queue_consumers)}
    if project.declares_crons:
        fields["crons"] = list(metadata.crons)
    parts = [multipart.Part(name="metadata", data=msgspec.json.encode(fields), content_type="application/json")]
    for path, code in project.modules.items():
        parts.append(multipart.Part(name=path, filename=path.rsplit("/", 1)[-1], data=code,
                                    content_type=module_content_type(path)))
    # Cloudflare's shape: one part per requirement, named by it, empty.
    parts += [multipart.Part(name=r, filename=r, data=b"", content_type="text/x-python-requirement")
              for r in project.requirements]
    for warning in project.warnings:  # (project text: file and key names)
        print(f"corral deploy: warning: {printable(warning)}", file=sys.stderr)
    content_type, body = multipart.encode(parts)
    # The server resolves requirements inside this one call: a spinner says so.
    waiting: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if project.requirements:
        from supervisor.cli_output import progress

        waiting = progress(f"resolving {len(project.requirements)} requirement(s) and uploading", None,
                           enabled=not args.json)
    with waiting:
        result, _ = client.call("PUT", _scripts_path(args.namespace, args.name), body, content_type)
    for warning in (result.get("warnings") or []) if isinstance(result, dict) else []:
        if warning not in project.warnings:
            print(f"corral deploy: warning: {printable(warning)}", file=sys.stderr)
    _set_pull_consumers(client, args, project.pull_consumers)
    where = f"namespace {args.namespace}" if args.namespace else "platform scripts"
    version = result.get("version_id") or result.get("version", "?")  # the id `versions` and `rollback` take
    _emit(args, result, f"deployed {args.name} to {where}: version {version}, "
                        f"{len(project.modules)} module(s), main {printable(project.main_module)}"
                        + (f", {len(project.requirements)} requirement(s)" if project.requirements else ""))
    return 0


def _set_pull_consumers(client: AdminClient, args: argparse.Namespace, pulls: list[Any]) -> None:
    """Give each queue the config's HTTP pull consumer through the queues API,
    as ``wrangler deploy`` does (updated when it has one already). These are
    the platform's queues: a dispatch namespace's script gets a warning."""
    for pull in pulls:
        if args.namespace:
            print(f"corral deploy: warning: queues.consumers: the HTTP pull consumer of {pull.queue!r} is not "
                  "set: pull consumers are the platform's queues' (deploy without --namespace)", file=sys.stderr)
            continue
        base = f"/accounts/local/queues/{_q(pull.queue)}/consumers"
        body = {"type": "http_pull", "settings": pull.settings, "dead_letter_queue": pull.dead_letter_queue}
        current = [c for c in client.call("GET", base)[0] or [] if c.get("type") == "http_pull"]
        if current:
            client.json("PUT", f"{base}/{_q(current[0]['consumer_id'])}", body)
        else:
            client.json("POST", base, body)
        if not args.json:
            print(f"queue {pull.queue}: HTTP pull consumer set", file=sys.stderr)


def _bad_tag(tags: Sequence[str]) -> str | None:
    """Why one of ``tags`` is not a tag, or None. Checked before anything is
    sent: ``--tag ''`` was a traceback out of the metadata's own check, and
    ``tags NAME add ''`` asked for "a JSON document"."""
    for tag in tags:
        try:
            model.check_tag(tag)
        except Invalid as exc:
            return str(exc)
    return None


def _undecodable_module(modules: dict[str, bytes]) -> str | None:
    """Checked here before the upload too, so the message names the project's file."""
    return model.undecodable_module(modules)


def _fetch_all(client: AdminClient, path: str, query: dict[str, str]) -> list[Any]:
    items: list[Any] = []
    cursor = ""
    while True:
        params = dict(query, per_page="1000")
        if cursor:
            params["cursor"] = cursor
        result, info = client.call("GET", f"{path}?{urllib.parse.urlencode(params)}")
        items.extend(result or [])
        cursor = info.get("cursor") or ""
        if not cursor:
            return items


def _cmd_ls(args: argparse.Namespace, client: AdminClient) -> int:
    query = {"tags": ",".join(args.tag)} if args.tag else {}
    scripts = _fetch_all(client, _scripts_path(args.namespace), query)
    # The version id `corral rollback` and `corral versions` take (the content hash was shown).
    rows = [[s["name"], s.get("version_id") or s["version"][:12], ",".join(s.get("tags") or []),
             s.get("modified_on", "")] for s in scripts]
    _emit_table(args, scripts, rows, ["NAME", "VERSION", "TAGS", "MODIFIED"])
    return 0


def _cmd_rm(args: argparse.Namespace, client: AdminClient) -> int:
    if args.name:
        if args.tag:
            print("corral rm: give a NAME or --tag filters, not both", file=sys.stderr)
            return 2
        # As wrangler delete --force: delete even a script other scripts use.
        force = "?force=true" if args.force else ""
        result, _ = client.call("DELETE", _scripts_path(args.namespace, args.name) + force)
        _emit(args, result, f"deleted {args.name}")
        return 0
    if not args.tag or not args.namespace:
        print("corral rm: give a script NAME, or --namespace NS with --tag filters", file=sys.stderr)
        return 2
    query = urllib.parse.urlencode({"tags": ",".join(args.tag)})
    from supervisor.cli_output import progress

    with progress(f"deleting scripts tagged {','.join(args.tag)}", None, enabled=not args.json):
        result, _ = client.call("DELETE", f"{_scripts_path(args.namespace)}?{query}")
    _emit(args, result, f"deleted {result.get('count', 0)} script(s)")
    return 0


def _cmd_tags(args: argparse.Namespace, client: AdminClient) -> int:
    base = _scripts_path(args.namespace, args.name) + "/tags"
    values = args.values or []
    if (problem := _bad_tag(values)) is not None:
        print(f"corral tags: {problem}", file=sys.stderr)
        return 2
    if args.action is None:
        if values:
            print("corral tags: use `tags NAME set T ...`, `add T` or `rm T`", file=sys.stderr)
            return 2
        tags, _ = client.call("GET", base)
    elif args.action == "set":
        tags = client.json("PUT", base, values)
    else:
        if len(values) != 1:
            print(f"corral tags: `{args.action}` takes exactly one tag", file=sys.stderr)
            return 2
        method = "PUT" if args.action == "add" else "DELETE"
        tags, _ = client.call(method, f"{base}/{_q(values[0])}")
    _emit(args, tags, "\n".join(printable(t) for t in tags) if tags else "(no tags)")
    return 0


def _cmd_ns(args: argparse.Namespace, client: AdminClient) -> int:
    base = f"{API}/dispatch/namespaces"
    if args.ns_command == "ls":
        result, _ = client.call("GET", base)
        rows = [[n["name"], str(n.get("script_count", "")), n.get("created_on", "")] for n in result]
        _emit_table(args, result, rows, ["NAME", "SCRIPTS", "CREATED"])
    elif args.ns_command == "create":
        result = client.json("POST", base, {"name": args.name})
        _emit(args, result, f"created namespace {result['name']}")
    else:
        result, _ = client.call("DELETE", f"{base}/{_q(args.name)}")
        _emit(args, result, f"deleted namespace {args.name} and {result.get('scripts_deleted', 0)} script(s)")
    return 0


def _cmd_routes(args: argparse.Namespace, client: AdminClient) -> int:
    base = f"{API}/routes"
    if args.routes_command == "ls":
        result, _ = client.call("GET", base)
        rows = [[r["id"], r["pattern"], r["script"]] for r in result]
        _emit_table(args, result, rows, ["ID", "PATTERN", "SCRIPT"])
    elif args.routes_command == "add":
        result = client.json("POST", base, {"pattern": args.pattern, "script": args.script})
        _emit(args, result, f"added route {result['pattern']} -> {result['script']} (id {result['id']})")
    else:
        result, _ = client.call("DELETE", f"{base}/{_q(args.id)}")
        _emit(args, result, f"deleted route {args.id}")
    return 0


def _cmd_trigger(args: argparse.Namespace, client: AdminClient) -> int:
    """Run a script's scheduled() once, as its cron trigger would."""
    trace = client.json("POST", _scripts_path(args.namespace, args.name) + "/schedules/trigger",
                        {"cron": args.cron})
    # Tenant text: control characters escaped, continuation lines marked
    # (see supervisor.terminal_text); --json output stays exact.
    logs = "\n".join(printable_lines(" ".join(str(m) for m in entry.get("message", [])), "| ")
                     for entry in trace.get("logs", []))
    errors = "\n".join(printable_lines(f"{e.get('name')}: {e.get('message')}", "| ")
                       for e in trace.get("exceptions", []))
    report = "\n".join(x for x in (f"scheduled {args.name} ({args.cron}): {printable(trace.get('outcome'))}",
                                   logs, errors) if x)
    if trace.get("outcome") == Outcome.OK or args.json:
        _emit(args, trace, report)
    else:  # a failed run is the command's error: on stderr, as any other
        print(report, file=sys.stderr)
    return 0 if trace.get("outcome") == Outcome.OK else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from supervisor import config as config_mod

    def read() -> config_mod.ServeConfig:
        return config_mod.read(args.config, http=args.http, admin_socket=args.admin_socket,
                               state_dir=args.state_dir)

    try:  # fail here, as usage, not deep in startup
        config = read()
    except config_mod.ERRORS as exc:
        print(f"corral serve: bad configuration: {exc}", file=sys.stderr)
        return 2
    from supervisor.limits.memory import MemoryEnforcementError
    from supervisor.log import error
    from supervisor.server import run

    try:
        code = run(config, reread=read if args.config else None)
    except MemoryEnforcementError as exc:
        print(f"corral serve: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        error("serve.cannot_start", reason=exc.message)
        print(f"corral serve: {exc.message}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


# -- parser ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    # Client options are accepted before or after the subcommand; SUPPRESS on
    # the subcommand copies keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="admin socket (default: $CORRAL_ADMIN_SOCKET or ./.corral/admin.sock)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the API result as JSON")

    parser = argparse.ArgumentParser(prog="corral", description="Self-hosted Workers for Platforms.")
    parser.add_argument("--socket", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", default=False, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the supervisor in the foreground")
    serve.add_argument("--config", help="TOML config file")
    serve.add_argument("--http", help="listen address HOST:PORT (default 127.0.0.1:8080)")
    serve.add_argument("--admin-socket", help="admin unix socket (default STATE_DIR/admin.sock)")
    serve.add_argument("--state-dir", help="state directory (default ./.corral)")

    deploy = sub.add_parser("deploy", parents=[common], help="upload a script")
    deploy.add_argument("--namespace", "-n", help="dispatch namespace (default: a platform script)")
    deploy.add_argument("--tag", action="append", help="tag the script (repeatable)")
    deploy.add_argument("--var", action="append", metavar="KEY=VALUE", help="plain-text binding (repeatable)")
    deploy.add_argument("--message", "-m", help="the new version's message (as wrangler's --message)")
    deploy.add_argument("--version-tag", help="the new version's tag (wrangler versions upload --tag; "
                                              "--tag tags the script)")
    deploy.add_argument("--dry-run", action="store_true", help="show what would change; upload nothing")
    deploy.add_argument("--env", "-e", help="the Wrangler environment of the config to deploy ([env.NAME])")
    deploy.add_argument("--allow-outside", action="store_true",
                        help="take files from outside the project folder (symlinks out of it, an "
                             "assets.directory elsewhere); refused by default, as a tenant's project "
                             "could read the operator's files")
    deploy.add_argument("name", metavar="NAME")
    deploy.add_argument("path", metavar="PATH", help="a .py file or a project folder")

    ls = sub.add_parser("ls", parents=[common], help="list scripts")
    ls.add_argument("--namespace", "-n", help="dispatch namespace (default: platform scripts)")
    ls.add_argument("--tag", action="append", help="only scripts with this tag (TAG or TAG:no; repeatable)")

    rm = sub.add_parser("rm", parents=[common], help="delete a script (or many, by tags)")
    rm.add_argument("--namespace", "-n", help="dispatch namespace (default: platform scripts)")
    rm.add_argument("--tag", action="append", help="bulk delete by tag (TAG:yes / TAG:no; repeatable)")
    rm.add_argument("--force", action="store_true",
                    help="delete a script even when other scripts bind it (they will break)")
    rm.add_argument("name", metavar="NAME", nargs="?")

    tags = sub.add_parser("tags", parents=[common], help="show or change a script's tags")
    tags.add_argument("--namespace", "-n", help="dispatch namespace (default: platform scripts)")
    tags.add_argument("name", metavar="NAME")
    tags.add_argument("action", nargs="?", choices=["set", "add", "rm"])
    tags.add_argument("values", nargs="*", metavar="TAG")

    observability_cli.add_parsers(sub, common)  # tail, usage
    trigger = sub.add_parser("trigger", parents=[common], help="run a script's scheduled() handler once")
    trigger.add_argument("--namespace", "-n", help="dispatch namespace (default: a platform script)")
    trigger.add_argument("--cron", required=True, help="the cron expression the handler sees")
    trigger.add_argument("name", metavar="NAME")

    ns = sub.add_parser("ns", parents=[common], help="manage dispatch namespaces")
    ns_sub = ns.add_subparsers(dest="ns_command", required=True, metavar="ls|create|rm")
    ns_sub.add_parser("ls", parents=[common], help="list namespaces")
    ns_sub.add_parser("create", parents=[common], help="create a namespace").add_argument("name", metavar="NAME")
    ns_sub.add_parser("rm", parents=[common], help="delete a namespace and its scripts").add_argument(
        "name", metavar="NAME")

    routes = sub.add_parser("routes", parents=[common], help="manage routes to platform scripts")
    r_sub = routes.add_subparsers(dest="routes_command", required=True, metavar="ls|add|rm")
    r_sub.add_parser("ls", parents=[common], help="list routes")
    add = r_sub.add_parser("add", parents=[common], help="route PATTERN (e.g. '*.example.com/*') to SCRIPT")
    add.add_argument("pattern", metavar="PATTERN")
    add.add_argument("script", metavar="SCRIPT")
    r_sub.add_parser("rm", parents=[common], help="delete a route").add_argument("id", metavar="ID")

    from supervisor import cli_access, cli_versions

    cli_versions.add_parsers(sub, common)
    cli_access.add_parsers(sub, common)
    cli_d1.add_parser(sub, common)
    return parser


_COMMANDS = {
    "deploy": _cmd_deploy,
    "ls": _cmd_ls,
    "rm": _cmd_rm,
    "tags": _cmd_tags,
    **observability_cli.COMMANDS,
    "trigger": _cmd_trigger,
    "ns": _cmd_ns,
    "routes": _cmd_routes,
    "d1": cli_d1.run,
}


#: Positional arguments that become a URL's path segment: never empty.
_REQUIRED_WORDS = (("name", "NAME"), ("key", "KEY"), ("id", "ID"), ("database", "DB"),
                   ("pattern", "PATTERN"), ("script", "SCRIPT"), ("version", "VERSION"))


#: A relative time as ``--since``/``--until`` take it: argparse would read
#: ``--since -1h`` as two options, since ``-1h`` is no negative number.
_RELATIVE_TIME = re.compile(r"-\d+(?:\.\d+)?[smhd]")


def _attach_relative_times(argv: Sequence[str]) -> list[str]:
    """``--since -1h`` as ``--since=-1h``, which argparse reads as meant."""
    out: list[str] = []
    for word in argv:
        if out and out[-1] in ("--since", "--until") and _RELATIVE_TIME.fullmatch(word):
            out[-1] = f"{out[-1]}={word}"
        else:
            out.append(word)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``corral`` and ``python -m supervisor``; returns the exit status."""
    parser = _parser()
    args, extras = parser.parse_known_args(_attach_relative_times(sys.argv[1:] if argv is None else argv))
    if extras and args.command == "tags" and not any(e.startswith("-") for e in extras):
        # argparse fills the optional ACTION/TAG positionals with nothing when an
        # option sits between them and NAME (`tags NAME -n NS add T`): take them here.
        if args.action is None:
            if extras[0] not in ("set", "add", "rm"):
                parser.error(f"tags: unknown action {extras[0]!r} (use set, add or rm)")
            args.action, extras = extras[0], extras[1:]
        args.values = [*(args.values or []), *extras]
        extras = []
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    for dest, metavar in _REQUIRED_WORDS:
        if getattr(args, dest, None) == "":
            # An empty segment makes another URL: `rm ''` was "DELETE is not
            # allowed on .../scripts/", naming nothing the operator typed.
            parser.error(f"{args.command}: {metavar} must not be empty")
    if args.command == "serve":
        return _cmd_serve(args)
    socket_path = args.socket or os.environ.get("CORRAL_ADMIN_SOCKET") or DEFAULT_SOCKET
    from supervisor import cli_access, cli_versions

    commands = {**_COMMANDS, **cli_versions.COMMANDS, **cli_access.COMMANDS}
    try:
        return commands[args.command](args, AdminClient(socket_path))
    except ApiCallError as exc:
        print(f"corral {args.command}: {printable(exc, keep=chr(9) + chr(10))}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
