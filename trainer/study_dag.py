"""A small task graph runner: independent study runs in parallel worker processes.

Tasks name their inputs by :class:`Ref` (another task's result); a task starts once every task it
refers to is done, highest ``priority`` first, at most ``workers`` at a time. ``local`` tasks (cheap
decisions such as picking hyper-parameters) run in the calling process. Worker processes are
spawned (no fork of a process holding torch threads) and use one torch thread each.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Ref(NamedTuple):
    """The result of task ``key`` as an argument of another task."""

    key: str


@dataclass
class Task:
    """One unit of work: ``fn(*args, **kwargs)`` with every :class:`Ref` replaced by its result."""

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    local: bool = False
    group: str | None = None
    """Tasks of a group share the group's limit of concurrent runs (``run_dag(limits=...)``)."""


@dataclass
class Done:
    """A finished task's result and its cost."""

    result: Any
    wall_s: float
    cpu_s: float


class TaskError(RuntimeError):
    """A task raised; the message names it."""


def _refs(x: Any) -> Iterable[str]:
    if isinstance(x, Ref):
        yield x.key
    elif isinstance(x, list | tuple):
        for y in x:
            yield from _refs(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _refs(y)


def _resolve(x: Any, done: dict[str, Done]) -> Any:
    if isinstance(x, Ref):
        return done[x.key].result
    if isinstance(x, list):
        return [_resolve(y, done) for y in x]
    if isinstance(x, tuple):
        return tuple(_resolve(y, done) for y in x)
    if isinstance(x, dict):
        return {k: _resolve(v, done) for k, v in x.items()}
    return x


def deps(task: Task) -> set[str]:
    """Keys of the tasks ``task`` refers to."""
    return set(_refs(task.args)) | set(_refs(task.kwargs))


def _timed(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Done:
    w, c = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return Done(result, time.perf_counter() - w, time.process_time() - c)


def _init_worker() -> None:
    """Worker processes: one thread per process (the tasks are small; 2 threads were 16x slower)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def run_dag(
    tasks: Iterable[Task],
    workers: int = 1,
    log: Callable[[str], None] | None = None,
    prior: Mapping[str, Done] | None = None,
    limits: Mapping[str, int] | None = None,
) -> dict[str, Done]:
    """Run every task once its inputs are done; returns ``{key: Done}`` (including ``prior``, the
    results of an earlier phase that tasks may refer to). ``limits``: at most that many tasks of a
    group at a time (e.g. long FM trainings on ``workers - 1`` processes, so the chain of short tasks
    that gates most of the work keeps a process).

    Raises :class:`TaskError` naming the first task that failed (pending ones are cancelled), or
    ``ValueError`` for a duplicate key, an unknown reference or a cycle.
    """
    todo: dict[str, Task] = {}
    for t in tasks:
        if t.key in todo:
            raise ValueError(f"duplicate task key {t.key!r}")
        todo[t.key] = t
    needs = {k: deps(t) for k, t in todo.items()}
    for k, d in needs.items():
        missing = d - set(todo) - set(prior or {})
        if missing:
            raise ValueError(f"task {k!r} refers to unknown tasks {sorted(missing)}")
    done: dict[str, Done] = dict(prior or {})
    group_of = {k: t.group for k, t in todo.items()}
    running: dict[Future, str] = {}
    pool = None
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    try:
        while todo or running:
            ready = sorted((k for k in todo if needs[k] <= done.keys()), key=lambda k: (-todo[k].priority, k))
            here = [k for k in ready if todo[k].local or pool is None]
            if here:  # cheap decisions (or everything, without a pool), then re-plan
                t = todo.pop(here[0])
                done[t.key] = _run_here(t, done)
                if log:
                    log(f"done {t.key} ({done[t.key].wall_s:.1f} s)")
                continue
            for k in ready:
                if len(running) >= workers:
                    break
                g = todo[k].group
                cap = (limits or {}).get(g, workers) if g is not None else workers
                if sum(group_of[x] == g for x in running.values()) >= max(1, cap):
                    continue
                t = todo.pop(k)
                assert pool is not None
                running[pool.submit(_timed, t.fn, _resolve(t.args, done), _resolve(t.kwargs, done))] = k
            if not running:
                raise ValueError(f"tasks {sorted(todo)} wait on each other (a cycle)")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                k = running.pop(fut)
                try:
                    done[k] = fut.result()
                except Exception as err:
                    raise TaskError(f"study task {k!r} failed: {err}") from err
                if log:
                    log(f"done {k} ({done[k].wall_s:.1f} s)")
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return done


def _run_here(t: Task, done: dict[str, Done]) -> Done:
    try:
        return _timed(t.fn, _resolve(t.args, done), _resolve(t.kwargs, done))
    except Exception as err:
        raise TaskError(f"study task {t.key!r} failed: {err}") from err
