"""Entry point: `python server.py [flags]`, or `uvicorn server:app` with settings from the environment."""

from __future__ import annotations

import logging
import sys

import uvicorn

from api.app import create_app
from cli import settings_from_cli
from settings import Settings


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_cli(argv)
    configure_logging(settings.log_level)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())


def __getattr__(name: str):
    """`uvicorn server:app` imports `app` lazily, so `python server.py` never builds one from the env alone."""
    if name == "app":
        settings = Settings()
        configure_logging(settings.log_level)
        return create_app(settings)
    raise AttributeError(name)


if __name__ == "__main__":
    main(sys.argv[1:])
