"""Logging set-up with loguru: human-readable text by default, JSON lines by setting.

Context such as ``job_id`` and ``agent_id`` is passed with ``logger.bind`` and appears as
``key=value`` pairs in text mode and as fields in JSON mode.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

import orjson
from loguru import logger

if TYPE_CHECKING:
    from loguru import Message, Record

# loguru appends the exception, if any, after this format.
TEXT_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {name}:{line} | {message}{extra[context]}"


def _add_context(record: Record) -> None:
    extra = {key: value for key, value in record["extra"].items() if key != "context"}
    record["extra"]["context"] = "".join(f" {key}={value}" for key, value in extra.items())


def _json_sink(message: Message) -> None:
    record = message.record
    entry: dict[str, Any] = {
        "ts": record["time"].isoformat(timespec="milliseconds"),
        "level": record["level"].name,
        "logger": record["name"],
        "message": record["message"],
    }
    entry.update({key: value for key, value in record["extra"].items() if key != "context"})
    if record["exception"] is not None:
        entry["exception"] = "".join(_format_exception(record))
    sys.stderr.write(orjson.dumps(entry, default=str).decode() + "\n")


def _format_exception(record: Record) -> list[str]:
    import traceback

    exception = record["exception"]
    assert exception is not None
    return traceback.format_exception(exception.type, exception.value, exception.traceback)


class _InterceptHandler(logging.Handler):
    """Forward records of libraries that use the standard logging module (arq) to loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(*, level: str = "INFO", log_format: Literal["text", "json"] = "text") -> None:
    """Send log lines to stderr in the chosen format, replacing loguru's default handler."""
    logger.remove()
    logger.configure(patcher=_add_context)
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.INFO, force=True)
    if log_format == "json":
        logger.add(_json_sink, level=level, backtrace=False, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, format=TEXT_FORMAT, backtrace=False, diagnose=False)


class Throttle:
    """Let a repeated log line through at most once per ``interval_s``, counting the ones held back.

    ``ready()`` returns None while the line should stay quiet, or else the number of occurrences
    since the last line that went out (this one included).
    """

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last_s = float("-inf")
        self._count = 0

    def ready(self) -> int | None:
        self._count += 1
        now_s = time.monotonic()
        if now_s - self._last_s < self._interval_s:
            return None
        self._last_s = now_s
        count, self._count = self._count, 0
        return count
