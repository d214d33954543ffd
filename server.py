"""Entry point: `python server.py [flags]`, or `uvicorn server:app` with settings from the environment."""

from __future__ import annotations

import json
import logging
import sys

import uvicorn
from opentelemetry import trace

from api.app import create_app
from settings import Settings
from settings_cli import settings_from_cli
from state.response_store import ResponseStore, StoreUnavailable


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        span = trace.get_current_span().get_span_context()
        if span.is_valid:  # (with --otlp-traces-endpoint: the request's trace, to find its spans from a log line)
            entry["trace_id"], entry["span_id"] = format(span.trace_id, "032x"), format(span.span_id, "016x")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_cli(argv)
    configure_logging(settings.log_level, settings.log_format)
    try:  # an unusable response store is a one-line error here, not a traceback from the app's startup
        responses = ResponseStore.from_settings(settings)
    except StoreUnavailable as exc:
        sys.exit(f"error: {exc}")
    # SIGTERM/Ctrl-C: uvicorn stops accepting, lets requests in flight (streams included) finish for up to
    # --shutdown-grace seconds, then the app's lifespan unloads models (queued cache writes are finished) and
    # closes upstream clients. Our own request log replaces uvicorn's access log.
    uvicorn.run(create_app(settings, responses), host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                access_log=False, timeout_graceful_shutdown=settings.shutdown_grace)


def __getattr__(name: str):
    """`uvicorn server:app` imports `app` lazily, so `python server.py` never builds one from the env alone."""
    if name == "app":
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)
        return create_app(settings)
    raise AttributeError(name)


if __name__ == "__main__":
    main(sys.argv[1:])
