"""Command-line flags derived from `Settings`: every field is a flag, in snake and kebab spelling.

Flags override environment variables and `.env`; only flags actually given are passed on, so the
environment keeps working for everything else.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence

from settings import Settings


def _flag_type(annotation):
    """argparse converter for a field type; Optional[X] -> X, Path -> str (pydantic converts afterwards)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation if annotation in (int, float) else str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="OpenAI-compatible LLM inference server.",
        epilog="Every flag can also be set as an environment variable LLM_SERVER_<NAME> or in .env.",
    )
    for name, field in Settings.model_fields.items():
        spellings = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"])
        default = field.default
        if typing.get_origin(field.annotation) is list:
            parser.add_argument(
                *spellings, dest=name, action="append", default=argparse.SUPPRESS, metavar=name.upper(),
                help=f"{field.description} (default: none)".replace("%", "%%"),
            )
            continue
        if field.annotation is bool:
            parser.add_argument(
                *spellings, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                help=f"{field.description} (default: {default})".replace("%", "%%"),
            )
            continue
        parser.add_argument(
            *spellings, dest=name, type=_flag_type(field.annotation), default=argparse.SUPPRESS,
            metavar=name.upper(), help=f"{field.description} (default: {default})".replace("%", "%%"),
        )
    return parser


def settings_from_cli(argv: Sequence[str] | None = None) -> Settings:
    given = vars(build_parser().parse_args(argv))
    return Settings(**given)
