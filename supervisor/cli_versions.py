"""``corral versions`` and ``corral rollback``: a script's immutable versions,
and sending its traffic back to an earlier one."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from supervisor.cli_client import AdminClient, _emit, _emit_table, _scripts_path


def _deployed(client: AdminClient, base: str) -> list[dict[str, Any]]:
    result, _ = client.call("GET", f"{base}/deployments")
    return result.get("deployments") or []


def cmd_versions(args: argparse.Namespace, client: AdminClient) -> int:
    base = _scripts_path(args.namespace, args.name)
    result, _ = client.call("GET", f"{base}/versions?per_page={args.limit}")
    versions = result.get("items") or []
    deployments = _deployed(client, base)
    shares = {v["version_id"]: v["percentage"] for v in deployments[0]["versions"]} if deployments else {}
    for version in versions:
        version["percentage"] = shares.get(version["id"], 0)
    rows = [_version_row(v) for v in versions]
    _emit_table(args, versions, rows, ["#", "VERSION ID", "TRAFFIC", "CREATED", "SOURCE", "TAG", "MESSAGE"])
    return 0


def _version_row(version: dict) -> list[str]:
    """One version as the table shows it: what made it (the change Corral
    made it for, ``workers/triggered_by``, else the API's source), its tag
    and message."""
    notes = version.get("annotations") or {}
    made_by = notes.get("workers/triggered_by") or version["metadata"].get("source", "")
    return [str(version["number"]), version["id"], f"{version['percentage']:g}%" if version["percentage"] else "",
            version["metadata"]["created_on"], made_by, notes.get("workers/tag", ""), notes.get("workers/message", "")]


def _named(args: argparse.Namespace) -> str:
    """The script as a command line names it (its namespace too), for hints to run."""
    return f"--namespace {args.namespace} {args.name}" if args.namespace else args.name


def cmd_rollback(args: argparse.Namespace, client: AdminClient) -> int:
    base = _scripts_path(args.namespace, args.name)
    target = args.version
    if target is None:
        deployments = _deployed(client, base)
        current = {v["version_id"] for v in deployments[0]["versions"]} if deployments else set()
        earlier = next((d for d in deployments[1:] if {v["version_id"] for v in d["versions"]} != current), None)
        if earlier is None:
            print(f"corral rollback: {args.name} has no earlier deployment to go back to; pick a version "
                  f"from `corral versions {_named(args)}` and run `corral rollback {_named(args)} VERSION`",
                  file=sys.stderr)
            return 1
        target = max(earlier["versions"], key=lambda v: v["percentage"])["version_id"]
    elif target.isdigit():  # a version number, as `corral versions` shows it
        result, _ = client.call("GET", f"{base}/versions?per_page=1000")
        match = [v["id"] for v in result.get("items") or [] if str(v["number"]) == target]
        if not match:
            print(f"corral rollback: {args.name} has no version #{target}; see `corral versions {_named(args)}`",
                  file=sys.stderr)
            return 1
        target = match[0]
    body: dict[str, Any] = {"strategy": "percentage", "versions": [{"version_id": target, "percentage": 100}]}
    if args.message:
        body["annotations"] = {"workers/message": args.message}
    # A version whose secrets differ is refused (10220) unless forced, as wrangler rollback asks first.
    result = client.json("POST", f"{base}/deployments" + ("?force=true" if args.force else ""), body)
    _emit(args, result, f"rolled {args.name} back to version {target} (deployment {result['id']})")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    versions = sub.add_parser("versions", parents=[common], help="list a script's versions, newest first")
    versions.add_argument("--namespace", "-n", help="dispatch namespace (default: a platform script)")
    versions.add_argument("--limit", type=int, default=100, help="how many (default 100, at most 1000)")
    versions.add_argument("name", metavar="NAME")

    rollback = sub.add_parser("rollback", parents=[common],
                              help="deploy an earlier version (default: the one deployed before)")
    rollback.add_argument("--namespace", "-n", help="dispatch namespace (default: a platform script)")
    rollback.add_argument("--message", "-m", help="why (kept with the deployment)")
    rollback.add_argument("--force", action="store_true",
                          help="roll back even to a version whose secrets differ from the deployed one's")
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("version", metavar="VERSION", nargs="?", help="a version id or # from `corral versions`")


COMMANDS = {"versions": cmd_versions, "rollback": cmd_rollback}
