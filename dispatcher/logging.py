"""structlog set-up: JSON lines by default, a readable console format on request.

One line per event (server started, shop configured, shutdown, periodic
counters), each carrying the shop/agent/conversation ids it concerns. Nothing
is logged per routing decision: the server counts those instead.
"""

from __future__ import annotations

import logging
import sys
from typing import Final, Literal, TextIO

import structlog
import structlog.tracebacks

__all__ = ["LOG_FORMATS", "LogFormat", "configure_logging"]

LogFormat = Literal["json", "console"]
LOG_FORMATS: Final[tuple[str, ...]] = ("json", "console")


def configure_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog (and the stdlib root logger, for grpc's own messages)."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r} is not a logging level")
    out = stream if stream is not None else sys.stderr
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            (
                structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
                if fmt == "json"
                else structlog.dev.set_exc_info
            ),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=out, format="%(levelname)s %(name)s: %(message)s")
