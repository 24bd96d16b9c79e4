"""How the CLI talks to people: tables and progress with rich, JSON with --json.

Tables go to stdout without borders, one header line then one line per row,
so they read well and still split on whitespace in a shell pipeline.
Progress bars go to stderr and only when it is a terminal: stdout stays the
result (a table, or JSON with ``--json``), whatever the bars do.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from supervisor.terminal_text import printable


def _console(stream: Any) -> Console:
    tty = stream.isatty()
    # Off a terminal: no colours, and no wrapping at 80 columns.
    return Console(file=stream, width=None if tty else 10_000, no_color=not tty, highlight=False,
                   soft_wrap=not tty)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    """Print a table to stdout, or ``(none)`` when there are no rows."""
    console = _console(sys.stdout)
    if not rows:
        console.print("(none)")
        return
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    for name in header:
        grid.add_column(name, no_wrap=True, overflow="fold")
    for row in rows:
        # Cells hold tenant text (tags, names): control characters escaped,
        # and Text, not a str, so "[link=...]" is not rich markup.
        grid.add_row(*(Text("" if c is None else printable(c)) for c in row))
    console.print(grid)


def emit(as_json: bool, result: Any, human: str | None = None) -> None:
    """The API result as JSON with ``--json``, else ``human`` (already printed if None)."""
    if as_json:
        print(json.dumps(result, indent=2))
    elif human is not None:
        print(human)


@contextmanager
def progress(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Any]:
    """A progress bar on stderr (a spinner when ``total`` is None); yields a
    function that advances it by a count."""
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=Console(file=sys.stderr), transient=True,
                   disable=not (enabled and sys.stderr.isatty()))
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
