"""The final structured error event of a job: one JSON line the control plane shows as the reason.

Every trainer entrypoint that fails prints ``error: <message>`` on stderr and, last on stdout,
``{"event": "error", "reason": "BadInputData", "message": "...", "exit_code": 3}``. The local
launcher (and anyone reading the job's log) takes the reason from that line instead of the log
tail, so a status shows the cause first, not a start event or a library warning. In a Kubernetes
pod the record also goes to the termination log (``/dev/termination-log``) when it is writable.
No torch import here.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

ERROR_EVENT = "error"
TERMINATION_LOG_ENV = "EXFM_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def error_record(reason: str, message: str, exit_code: int) -> dict[str, Any]:
    """The error event (``message`` on one line)."""
    return {
        "event": ERROR_EVENT,
        "reason": reason,
        "message": " ".join(message.split()),
        "exit_code": exit_code,
    }


def report_error(
    reason: str, message: str, exit_code: int, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Print the error (stderr) and its event (stdout, last line); returns ``exit_code``."""
    record = error_record(reason, message, exit_code)
    print(f"error: {record['message']}", file=err or sys.stderr, flush=True)
    print(json.dumps(record), file=out or sys.stdout, flush=True)
    path = os.environ.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG
    if os.path.exists(path) and os.access(path, os.W_OK):
        try:
            with open(path, "w") as fh:
                fh.write(json.dumps(record)[:4000])  # the kubelet keeps at most 4096 bytes
        except OSError:
            pass
    return exit_code


def find_error_event(lines: Iterable[str]) -> dict[str, Any] | None:
    """The last error event among log lines (None when the job wrote none)."""
    found = None
    for line in lines:
        text = line.strip()
        if not (text.startswith("{") and ERROR_EVENT in text):
            continue
        try:
            record = json.loads(text)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == ERROR_EVENT and record.get("message"):
            found = record
    return found


def error_summary(record: dict[str, Any]) -> str:
    """``<reason>: <message>`` of an error event."""
    reason = record.get("reason")
    return f"{reason}: {record['message']}" if reason else str(record["message"])
