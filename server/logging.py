"""Logging set-up for the Stockade daemons (structlog).

Call :func:`configure_logging` once, in a daemon's entry point. Library code only does
``log = structlog.get_logger()`` and logs stable snake_case events with key/values.

Output goes to stdout, one event per line:

* stdout is not a terminal (systemd/journald, CI, pipes): JSON lines (``JSONRenderer``),
  tracebacks as structured dicts;
* stdout is a terminal: structlog's ``ConsoleRenderer``.

Every event carries ``timestamp`` (ISO 8601, UTC), ``level`` and whatever was bound with
``structlog.contextvars`` (``job_id``, ``agent_id``, ``data_source``...). Records from
stdlib ``logging`` (aiohttp, aiomqtt, aiosqlite) go through the same handler and renderer,
so the stream stays one format.
"""

import logging
import sys

import structlog
from structlog.types import Processor

__all__ = ["LEVELS", "configure_logging"]

LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Name of the root-logger handler we install; a second call replaces it instead of adding
# another one (which would print every line twice).
_HANDLER_NAME = "stockade"


def configure_logging(level: str = "info") -> None:
    """Configure structlog and stdlib logging to write one line per event to stdout.

    ``level`` is one of :data:`LEVELS` (case-insensitive); an unknown name raises
    ``ValueError`` before anything is changed. Calling it again is safe: it replaces the
    previous configuration rather than stacking handlers.
    """
    try:
        level_no = LEVELS[level.lower()]
    except KeyError:
        allowed = ", ".join(LEVELS)
        raise ValueError(f"unknown log level {level!r}; expected one of {allowed}") from None

    as_json = not sys.stdout.isatty()

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer()
        render_chain: list[Processor] = [structlog.processors.dict_tracebacks, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer()
        render_chain = [renderer]

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        # Not cached: structlog.testing.capture_logs() must still see loggers created before
        # the test, and one line per job is far below where caching would matter.
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render_chain],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level_no)
