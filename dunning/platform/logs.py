"""Structured logs for the engine's processes (worker, webhook server, `dunning up`).

One line per event, as a JSON object (`DUNNING_LOG_FORMAT=json`; the default, except on a
terminal) or as `key=value` pairs (`DUNNING_LOG_FORMAT=text`; the default on a terminal), at
`DUNNING_LOG_LEVEL` (default INFO), on stdout. Every line
has `ts`, `level`, `logger` and `msg`; lines about a dunning case carry `case` (the workflow id,
which holds no personal data), and anything passed as `extra={...}` becomes a field of its own:

    log.info("reminder sent", extra={"case": wid, "step": 2, "channel": "sms",
                                     "to": mask_phone(phone)})
    {"ts": "2026-01-31T09:00:00.123Z", "level": "INFO", "logger": "dunning.activities",
     "msg": "reminder sent", "case": "dunning-acme-inv1", "step": 2, "channel": "sms",
     "to": "+1******0001"}

Temporal's own loggers (`workflow.logger`, `activity.logger`) attach the workflow's details;
their workflow id becomes `case` too.

Phone numbers and email addresses: callers log them masked (`dunning.domain.pii.mask_phone` /
`mask_email`). As a safety net the formatter masks anything in EVERY field (the message, `case`
and the other fields from Temporal's loggers, extras, the traceback) that still looks like one
(E.164 numbers, bare 11-15 digit runs as providers send them, national formats such as
`(415) 555-0123`, addresses; see `dunning.domain.pii`).
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
from datetime import UTC, datetime
from typing import IO, Any

from dunning.domain.pii import redact

ENV_LEVEL = "DUNNING_LOG_LEVEL"
ENV_FORMAT = "DUNNING_LOG_FORMAT"
FORMATS = ("json", "text")

# The attributes every LogRecord has; anything else on a record came in through `extra`.
_STANDARD = set(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName",
}
# Temporal's loggers put the workflow's or activity's details under these keys.
_TEMPORAL = ("temporal_workflow", "temporal_activity")
_SKIPPED = {*_TEMPORAL, "workflow_info", "activity_info"}  # whole Info objects: too much

def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_clean(v) for v in value]
    return redact(str(value))


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a record: ts, level, logger, msg, case, extras, exception."""
    out: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": record.levelname,
        "logger": _clean(record.name),
        "msg": redact(record.getMessage()),
    }
    for key in _TEMPORAL:
        details = getattr(record, key, None)
        if isinstance(details, dict) and details.get("workflow_id"):
            out["case"] = _clean(details["workflow_id"])
            if details.get("activity_type"):
                out["activity"] = _clean(details["activity_type"])
    for key, value in record.__dict__.items():
        if key not in _STANDARD and key not in _SKIPPED and not key.startswith("_"):
            out[key] = _clean(value)
    if record.exc_info:
        out["exc"] = redact(logging.Formatter().formatException(record.exc_info))
    return out


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(fields_of(record), ensure_ascii=False, default=str)


class KeyValueFormatter(logging.Formatter):
    """`ts=... level=INFO logger=... msg="..." case=... key=value` per line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        for key, value in fields_of(record).items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            if not text or any(c in text for c in ' "=\n'):
                text = json.dumps(text)
            parts.append(f"{key}={text}")
        return " ".join(parts)


def formatter(fmt: str = "json") -> logging.Formatter:
    if fmt not in FORMATS:
        raise ValueError(f"{ENV_FORMAT} must be json or text, got {fmt!r}")
    return JsonFormatter() if fmt == "json" else KeyValueFormatter()


class _LocklessQueueHandler(logging.handlers.QueueHandler):
    """Hands each record to the writer thread, holding no lock.

    A logging handler's lock is the one lock every thread of the worker shares. Temporal
    interrupts a workflow thread it believes deadlocked (an activation that has not yielded
    for 2 s, which a thread waiting its turn for that lock on a loaded machine can look like)
    by raising an exception into it; raised between `acquire()` and the `try` that releases,
    it leaves the lock held by no one alive, and every later log call in the process waits
    forever: the worker stops. Seen in a benchmark on 2 loaded cores. So the hot side has no
    lock (a SimpleQueue's put is atomic) and only the writer thread touches the stream."""

    def createLock(self) -> None:
        self.lock = None

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record  # formatted by the writer, with every field (one process, no pickling)


_listener: logging.handlers.QueueListener | None = None


def _stop_listener() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()  # writes what is queued
        _listener = None


def configure(
    level: str | int = "INFO", fmt: str = "auto", stream: IO[str] | None = None,
    *, queued: bool = False,
) -> logging.Handler:
    """Send the process's logs through one structured handler (replacing any root handlers).
    The entry points pass Settings.log_level and Settings.log_format (DUNNING_LOG_LEVEL,
    DUNNING_LOG_FORMAT); `auto` is text on a terminal, JSON otherwise. `queued` (the worker):
    records go through a lock-free queue to a writer thread (see `_LocklessQueueHandler`)."""
    global _listener
    stream = stream or sys.stdout
    fmt = fmt.lower()
    if fmt == "auto":
        fmt = "text" if _tty(stream) else "json"
    handler: logging.Handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(fmt))
    _stop_listener()
    if queued:
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        _listener = logging.handlers.QueueListener(records, handler)
        _listener.start()
        atexit.register(_stop_listener)
        handler = _LocklessQueueHandler(records)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Temporal's loggers: the workflow's details become fields (`case`), not message text.
    import temporalio.activity
    import temporalio.workflow

    temporalio.workflow.logger.workflow_info_on_message = False
    temporalio.activity.logger.activity_info_on_message = False
    return handler


def _tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = [
    "JsonFormatter",
    "KeyValueFormatter",
    "configure",
    "fields_of",
    "formatter",
    "redact",
]
