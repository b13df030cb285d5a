"""Run the kopf operator (``exfm_operator.kopf_app.operate``) in a background thread, and poll helpers."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from exfm_operator.kopf_app import OperatorContext, operate


class OperatorThread:
    """``with OperatorThread(ctx, ["default"]):`` runs the operator until the block exits (a stop)."""

    def __init__(self, context: OperatorContext, namespaces: list[str] | None = None, **kwargs: Any) -> None:
        self.context = context
        self.namespaces = namespaces or ["default"]
        self.kwargs = kwargs
        self.stop_flag = threading.Event()
        self.ready_flag = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="exfm-operator", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(
                operate(
                    self.namespaces,
                    context=self.context,
                    stop_flag=self.stop_flag,
                    ready_flag=self.ready_flag,
                    **self.kwargs,
                )
            )
        except BaseException as err:  # surfaced by stop()
            self.error = err

    def __enter__(self) -> OperatorThread:
        self._thread.start()
        if not self.ready_flag.wait(30):
            raise RuntimeError(f"operator did not get ready: {self.error!r}")
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        self._thread.join(60)
        assert not self._thread.is_alive(), "operator did not stop"

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def wait_for(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last={last!r}")
