"""``corral d1 execute`` and ``corral d1 migrations apply``, as wrangler has them.

``DB`` is a binding name or ``database_name`` from the project's config
(``--config`` or the current folder's corral.toml / wrangler config), or
else the database id itself, which a deployed script of the namespace must
bind (anything else is refused, saying what was looked for and which ids
exist, rather than opening an empty database of that id). Both commands go through the admin API's D1
query endpoint (supervisor.admin.storage), so the supervisor, which owns
the files, does the work. Migrations are the config's ``migrations_dir``
(default ``migrations``): its ``.sql`` files in name order, each applied in
one transaction together with its row in the ``migrations_table`` (``d1_migrations``), so a
migration is applied entirely or not at all, and exactly once.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from pathlib import Path
from typing import Any


def _migrations_table(name: str) -> str:
    """The SQL creating the migrations table (the config's ``migrations_table``,
    wrangler's ``d1_migrations`` by default), its name quoted."""
    return (f"CREATE TABLE IF NOT EXISTS {_quoted(name)} (id INTEGER PRIMARY KEY "
            "AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT "
            "CURRENT_TIMESTAMP NOT NULL)")


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    d1 = sub.add_parser("d1", parents=[common], help="query D1 databases and apply migrations")
    d1_sub = d1.add_subparsers(dest="d1_command", required=True, metavar="execute|migrations")
    ex = d1_sub.add_parser("execute", parents=[common], help="run SQL on a database")
    ex.add_argument("database", metavar="DB", help="binding name, database_name or id")
    what = ex.add_mutually_exclusive_group(required=True)
    what.add_argument("--command", dest="sql", help="SQL to run")
    what.add_argument("--file", help="a .sql file to run")
    mig = d1_sub.add_parser("migrations", parents=[common], help="database migrations")
    mig_sub = mig.add_subparsers(dest="migrations_command", required=True, metavar="apply")
    apply = mig_sub.add_parser("apply", parents=[common], help="apply unapplied migrations")
    apply.add_argument("database", metavar="DB", help="binding name, database_name or id")
    for parser in (ex, apply):
        parser.add_argument("--namespace", "-n", help="dispatch namespace of the database "
                                                      "(default: the platform's)")
        parser.add_argument("--config", help="project folder or config file (default: .)")


def _database(args: argparse.Namespace, client: Any) -> tuple[str, Path | None, str]:
    """The database id and its migrations folder.

    As wrangler's ``d1 execute <database>``: a binding name or
    ``database_name`` of the project's config, else the database itself. With
    no registry of names, Corral's databases are the ids deployed scripts
    bind, so an argument the config does not resolve must be one of those.
    """
    from supervisor.admin.project import CONFIG_FILES, ProjectError, _read_config

    target = Path(args.config or ".")
    config_path = target if target.is_file() else next(
        (target / name for name in CONFIG_FILES if (target / name).is_file()), None)
    configured: list[str] = []
    if config_path is not None:
        try:
            config = _read_config(config_path)
        except ProjectError as exc:  # a config that cannot be read: bad usage, as for deploy
            print(f"corral d1: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        for db in config.d1_databases:
            if args.database in (db.binding, db.database_name, db.database_id):
                return (db.database_id, config_path.parent / (db.migrations_dir or "migrations"),
                        db.migrations_table or "d1_migrations")
            configured.append(f"{db.binding} ({db.database_name or 'no database_name'}, id {db.database_id})")
    scope = {"namespace": args.namespace} if args.namespace else {}
    path = "/accounts/local/d1/database?"
    named = client.call("GET", path + urllib.parse.urlencode({**scope, "name": args.database}))[0]
    if named:  # a database's name (made with a name, or an id only bound: its own name)
        return named[0]["uuid"], None, "d1_migrations"
    listed, info = client.call("GET", path + urllib.parse.urlencode({**scope, "per_page": 1000}))
    if any(db["uuid"] == args.database for db in listed):
        return args.database, None, "d1_migrations"
    bound = [db["uuid"] for db in listed[:20]]
    if info.get("total_count", 0) > len(bound):
        bound.append(f"... {info['total_count']} in all")
    where = f"dispatch namespace {args.namespace!r}" if args.namespace else "the platform"
    if config_path is None:
        found = (f"no wrangler config ({', '.join(CONFIG_FILES)}) in {target.resolve()} to resolve it as a "
                 "binding name or database_name (give --config PATH)")
    else:
        found = (f"{config_path} has no d1_databases entry of that binding, database_name or id "
                 f"({'; '.join(configured) or 'it has none'})")
    known = ", ".join(bound) or "none"
    raise SystemExit(f"corral d1: no database {args.database!r}: {found}, and no deployed script of {where} "
                     f"binds a D1 database of that id (the databases: {known})")


def _read_sql(path: Path, command: str) -> str | None:
    """A SQL file's text, or None after saying on stderr why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"{command}: cannot read {path}: {exc.strerror}", file=sys.stderr)
    except UnicodeDecodeError as exc:
        print(f"{command}: {path} is not UTF-8 text (byte {exc.start}): SQL files must be UTF-8",
              file=sys.stderr)
    return None


def _query(client: Any, args: argparse.Namespace, database: str, sql: str) -> list[dict]:
    query = f"?namespace={urllib.parse.quote(args.namespace)}" if args.namespace else ""
    path = f"/accounts/local/d1/database/{urllib.parse.quote(database, safe='')}/query{query}"
    return client.json("POST", path, {"sql": sql})


def run(args: argparse.Namespace, client: Any) -> int:
    database, migrations, table = _database(args, client)
    if args.d1_command == "execute":
        if args.file:
            sql = _read_sql(Path(args.file), "corral d1 execute")
            if sql is None:
                return 2
        else:
            sql = args.sql
        results = _query(client, args, database, sql)
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            for result in results:
                rows = result.get("results") or []
                meta = result.get("meta") or {}
                if rows:
                    for row in rows:
                        print(json.dumps(row))
                else:
                    print(f"ok: {meta.get('changes', 0)} change(s)")
        return 0
    if migrations is None:
        print(f"corral d1 migrations apply: no d1_databases entry named {args.database!r} in "
              "the project config (give --config PATH)", file=sys.stderr)
        return 2
    if not migrations.is_dir():
        print(f"corral d1 migrations apply: no migrations folder at {migrations}", file=sys.stderr)
        return 2
    _query(client, args, database, _migrations_table(table))
    done = {row["name"] for row in _query(client, args, database,
                                          f"SELECT name FROM {_quoted(table)}")[0]["results"]}
    applied = []
    for path in sorted(migrations.glob("*.sql")):
        if path.name in done:
            continue
        name = path.name.replace("'", "''")
        sql = _read_sql(path, "corral d1 migrations apply")
        if sql is None:
            return 2
        # The migration's row first: after the migration's own text, an
        # unterminated /* comment (SQLite takes one at the end) swallowed it,
        # and the migration, applied but not recorded, ran again next time.
        _query(client, args, database, f"INSERT INTO {_quoted(table)} (name) VALUES ('{name}');\n{sql}")
        applied.append(path.name)
    if args.json:
        print(json.dumps({"applied": applied}))
    else:
        print("\n".join(f"applied {name}" for name in applied) or "no migrations to apply")
    return 0
