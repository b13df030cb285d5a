"""Progress reporting for ``exfm run``: rich bars on a terminal, plain lines in logs, JSON lines, quiet.

The runner calls one :class:`Reporter` interface; the CLI picks the implementation from
``--quiet`` / ``--json`` and whether stderr is a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table


@dataclass(frozen=True)
class ProgressRow:
    """How far one resource is: windows processed out of windows ready, and what it is doing."""

    kind: str
    name: str
    done: int
    total: int
    phase: str
    job: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"


class Reporter:
    """Base reporter: ignores everything except errors (the ``--quiet`` mode)."""

    def __init__(self, err: TextIO | None = None) -> None:
        self._err = err or sys.stderr

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop any live display."""

    def event(self, name: str, /, **fields: Any) -> None:
        """A discrete event (job submitted/finished, dataset ready, ...)."""

    def update(self, rows: list[ProgressRow]) -> None:
        """The current progress of every resource."""

    def summary(self, title: str, columns: list[str], rows: list[list[str]], data: dict[str, Any]) -> None:
        """The final summary of a run."""

    def error(self, text: str) -> None:
        print(text, file=self._err, flush=True)


class JsonReporter(Reporter):
    """One JSON object per line on stdout: ``{"event": ..., "time": ..., ...}``."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        super().__init__(err)
        self._out = out or sys.stdout
        self._last: dict[str, ProgressRow] = {}

    def _emit(self, payload: dict[str, Any]) -> None:
        self._out.write(json.dumps({"time": round(time.time(), 3), **payload}, default=str) + "\n")
        self._out.flush()

    def event(self, name: str, /, **fields: Any) -> None:
        self._emit({"event": name, **fields})

    def update(self, rows: list[ProgressRow]) -> None:
        for row in rows:
            if self._last.get(row.key) != row:
                self._last[row.key] = row
                self._emit({"event": "progress", **asdict(row)})

    def summary(self, title: str, columns: list[str], rows: list[list[str]], data: dict[str, Any]) -> None:
        self._emit({"event": "summary", "title": title, **data})

    def error(self, text: str) -> None:
        self._emit({"event": "error", "message": text})
        super().error(text)


_EVENT_TEXT = {
    "dataset_ready": "dataset {name}: {windows} windows ready at {uri}",
    "dataset_generating": "dataset {name}: generating {windows} windows...",
    "dataset_importing": "dataset {name}: importing {source}...",
    "job_submitted": "submitted {job} ({resource}: {detail})",
    "job_finished": "job {job} {state} after {duration_s:.1f}s",
    "job_cancelled": "cancelled {job}",
    "interrupted": "interrupted: cancelling {jobs} running job(s); re-run to resume",
    "resumed": "resuming: {detail}",
}


def _format_event(name: str, fields: dict[str, Any]) -> str | None:
    template = _EVENT_TEXT.get(name)
    if template is None:
        return fields.get("message")
    try:
        return template.format(**fields)
    except (KeyError, ValueError):
        return f"{name}: {fields}"


class ConsoleReporter(Reporter):
    """Human output: live rich progress bars on a terminal, plain event lines otherwise."""

    def __init__(self, console: Console | None = None, live: bool | None = None) -> None:
        self.console = console or Console(stderr=True)
        super().__init__(self.console.file)
        self.out = Console()
        self.live = self.console.is_terminal if live is None else live
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[label]:<28}"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TextColumn("windows"),
                TextColumn("{task.fields[phase]:<12}"),
                TextColumn("[dim]{task.fields[job]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def event(self, name: str, /, **fields: Any) -> None:
        text = _format_event(name, fields)
        if text is None:
            return
        if self._progress is not None:
            self._progress.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}", highlight=False)
        else:
            self.console.print(f"{time.strftime('%H:%M:%S')} {text}", highlight=False, soft_wrap=True)

    def update(self, rows: list[ProgressRow]) -> None:
        if self._progress is None:
            return
        for row in rows:
            fields = {
                "label": row.key,
                "phase": row.phase,
                "job": row.job or "",
            }
            task = self._tasks.get(row.key)
            if task is None:
                self._tasks[row.key] = self._progress.add_task(
                    row.key, total=max(row.total, 1), completed=row.done, **fields
                )
            else:
                self._progress.update(task, total=max(row.total, 1), completed=row.done, **fields)

    def summary(self, title: str, columns: list[str], rows: list[list[str]], data: dict[str, Any]) -> None:
        self.close()
        table = Table(title=title, title_justify="left")
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*row)
        self.out.print(table)


def make_reporter(quiet: bool, json_lines: bool) -> Reporter:
    """The reporter for the CLI flags (``--json`` wins over ``--quiet``)."""
    if json_lines:
        return JsonReporter()
    if quiet:
        return Reporter()
    return ConsoleReporter()
