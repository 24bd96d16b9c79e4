"""``corral secret`` and ``corral token``: values that are typed once and
never shown again. A secret's value is read from stdin (a prompt without
echo on a terminal), never from the command line, where it would end up in
the shell history and in ``ps``."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from supervisor.cli_client import ACCOUNT, AdminClient, _emit, _emit_table, _q, _scripts_path


def _read_secret(key: str) -> str | None:
    """The value, trailing whitespace trimmed as wrangler's ``secret put``
    trims it (``trimTrailingWhitespace``): ``echo`` adds a newline, a file
    saved on Windows a CR LF; only a last LF went, so the CR stayed in the
    secret and every comparison with the intended value failed."""
    if sys.stdin.isatty():
        return getpass.getpass(f"Enter a secret value for {key}: ").rstrip()
    return sys.stdin.read().rstrip()


def cmd_secret(args: argparse.Namespace, client: AdminClient) -> int:
    base = _scripts_path(args.namespace, args.name) + "/secrets"
    if args.secret_command == "list":
        result, _ = client.call("GET", base)
        _emit_table(args, result, [[s["name"], s["type"]] for s in result], ["NAME", "TYPE"])
        return 0
    if not args.key:
        print(f"corral secret {args.secret_command}: give the secret's KEY after the script NAME", file=sys.stderr)
        return 2
    if args.secret_command == "put":
        value = _read_secret(args.key)
        if not value:
            print("corral secret put: the value is empty: pipe it on stdin, e.g. "
                  f"`printf %s \"$TOKEN\" | corral secret put {args.name} {args.key}`", file=sys.stderr)
            return 2
        result = client.json("PUT", base, {"name": args.key, "text": value, "type": "secret_text"})
        _emit(args, result, f"secret {args.key} set on {args.name} (a new version is deployed)")
    else:
        client.call("DELETE", f"{base}/{_q(args.key)}")
        _emit(args, {"name": args.key}, f"secret {args.key} deleted from {args.name}")
    return 0


def cmd_token(args: argparse.Namespace, client: AdminClient) -> int:
    base = f"/accounts/{ACCOUNT}/corral/tokens"
    if args.token_command == "ls":
        result, _ = client.call("GET", base)
        rows = [[t["id"], t["name"], t["scope"], ",".join(t["namespaces"]) or "*", t["created_on"]] for t in result]
        _emit_table(args, result, rows, ["ID", "NAME", "SCOPE", "NAMESPACES", "CREATED"])
    elif args.token_command == "create":
        result = client.json("POST", base, {"name": args.name, "scope": args.scope,
                                            "namespaces": args.namespace or []})
        _emit(args, result, f"{result['value']}\n"
                            f"(token {result['id']}: {result['scope']} on "
                            f"{', '.join(result['namespaces']) or 'every namespace'}; shown once, store it now)")
    else:
        client.call("DELETE", f"{base}/{_q(args.id)}")
        _emit(args, {"id": args.id}, f"token {args.id} deleted")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    secret = sub.add_parser("secret", parents=[common], help="set, list or delete a script's secrets")
    s_sub = secret.add_subparsers(dest="secret_command", required=True, metavar="put|list|delete")
    for action, text in (("put", "set KEY from stdin"), ("list", "list secret names"), ("delete", "delete KEY")):
        p = s_sub.add_parser(action, parents=[common], help=text)
        p.add_argument("--namespace", "-n", help="dispatch namespace (default: a platform script)")
        p.add_argument("name", metavar="NAME")
        p.add_argument("key", metavar="KEY", nargs="?" if action == "list" else None)

    token = sub.add_parser("token", parents=[common], help="API tokens of the TCP admin listener")
    t_sub = token.add_subparsers(dest="token_command", required=True, metavar="create|ls|rm")
    create = t_sub.add_parser("create", parents=[common], help="create a token (printed once)")
    create.add_argument("--scope", choices=["read", "deploy", "admin"], required=True)
    create.add_argument("--namespace", "-n", action="append", help="bind to this namespace (repeatable)")
    create.add_argument("name", metavar="NAME", help="what the token is for")
    t_sub.add_parser("ls", parents=[common], help="list tokens")
    t_sub.add_parser("rm", parents=[common], help="delete a token").add_argument("id", metavar="ID")


COMMANDS = {"secret": cmd_secret, "token": cmd_token}
