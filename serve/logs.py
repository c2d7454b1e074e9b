"""Server logs as JSON lines (one object per line: time, level, logger, message and the call's fields)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Root logging to stderr: `json` (one object a line, for log collectors) or `text` (for people)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    elif fmt == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        raise ValueError(f"The log format has to be json or text but is {fmt!r}.")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
