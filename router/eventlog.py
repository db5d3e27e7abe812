"""The event log on standard error (``logging.format``): a line a person reads, or one JSON
object a line for a log pipeline (Loki, Elasticsearch, CloudWatch) that should not have to
parse text.

Every process sets it up the same way: ``setup`` at start, as text, so that an error while the
configuration is read is still said; ``use`` once the configuration says which format (the
main process when it has read the file, and at each reload; a worker whenever its data plane
gets a configuration, router.process.dataplane).
"""

from __future__ import annotations

import json
import logging
import sys
import time

FORMATS = ("text", "json")
_TEXT = "%(asctime)s %(levelname)s %(name)s{worker}: %(message)s"


class JsonFormatter(logging.Formatter):
    """``{"time": "2026-11-29T14:41:23.407Z", "level": "INFO", "logger": "router", "message":
    "...", "process": "main", "pid": 4242}`` (``"worker"`` from a worker process of
    ``--workers N``; and ``"exception"`` with the traceback, if any)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage(), "process": self.process, "pid": record.process}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


_worker = False


def setup(level: str = "info", worker: bool = False) -> None:
    """Log at ``level`` to standard error, as text until ``use`` says otherwise."""
    global _worker
    _worker = worker
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format=_TEXT.format(worker="[worker]" if worker else ""))


def use(fmt: str) -> None:
    """Format every line from now on as ``fmt`` (one of FORMATS)."""
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter("worker" if _worker else "main")
    else:
        formatter = logging.Formatter(_TEXT.format(worker="[worker]" if _worker else ""))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
