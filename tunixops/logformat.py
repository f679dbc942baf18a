"""Structured log lines: one JSON object per record, for log shippers (`TUNIX_LOG_FORMAT=json`).

Fields: `time` (UTC, ISO 8601), `level`, `logger`, `message`, `pid`, `thread`; `run_id` on every
line about a run; any other field passed with `extra=`; `exc` with an exception's traceback.

A line is about a run when it says so (`extra={"run_id": ...}`) or when it comes from one of the
threads that serve a single run, which the worker names `<role>-<run id>` (`run-…`, `stdout-…`,
`logsink-…`): so a database warning raised while storing a run's log still names the run.
"""

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

FORMATS = ("plain", "json")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_RUN_THREAD = re.compile(r"-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")

# Attributes every LogRecord has; whatever else a record carries came in through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "thread": record.threadName,
        }
        run_thread = _RUN_THREAD.search(record.threadName or "")
        if run_thread:
            line["run_id"] = run_thread[1]
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def use_format(name: str) -> None:
    """Switch the handlers of the root logger to `plain` or `json` lines (the worker's option)."""
    formatter = JsonFormatter() if name == "json" else logging.Formatter(PLAIN_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
