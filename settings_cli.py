"""Command-line flags derived from `Settings`: every field is a flag, shown in groups as llama-server and vLLM
show theirs.

Help shows one spelling (`--model-name`); the snake spelling of the field (`--model_name`) is accepted too, unlisted,
so older command lines keep working. Flags override environment variables and `.env`; only flags actually given
are passed on, so the environment keeps working for everything else.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence

from settings import Settings

# --help's sections, in order; every field of Settings is in exactly one (tests/unit/test_settings_cli.py).
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "model": ("model_name", "models_dir", "models_file", "chat_template", "chat_template_tool_use", "templates_dir",
              "install_embedded_models", "scan_hf_cache", "hf_cache_dir", "trust_remote_code", "max_loaded_models", "memory_budget",
              "model_ttl", "mmproj", "engine_workers", "worker_stall_seconds"),
    "serving": ("host", "port", "parallel", "max_queue", "request_timeout", "shutdown_grace", "cors_origins",
                "max_body_bytes", "body_timeout", "max_messages", "media_fetch", "media_fetch_timeout",
                "max_media_per_request", "max_media_bytes", "max_image_pixels", "upstream", "kv_events",
                "kv_event_block_size", "kv_events_replay", "otlp_traces_endpoint"),
    "cache and stored state": ("cache_dir", "prompt_cache", "cache_capacity_bytes", "cache_min_tokens",
                               "ctx_checkpoints", "checkpoint_every", "state_db", "compaction_key",
                               "compaction_summary_tokens"),
    "keys and limits": ("api_key", "admin_key", "api_key_file", "key_requests_per_minute", "key_tokens_per_minute",
                        "key_max_streams", "key_max_request_tokens", "rate_window_seconds", "max_tokens_limit",
                        "private_metrics"),
    "sampling defaults": ("default_max_tokens", "reasoning_format", "reasoning_budget", "budget_closing",
                          "loop_breaking"),
    "engines (llama.cpp unless noted)": ("n_ctx", "n_threads", "n_threads_batch", "n_batch", "n_ubatch",
                                         "n_gpu_layers", "repack", "flash_attn", "kv_unified", "swa_full",
                                         "embedding", "pooling"),
    "speculative decoding": ("spec", "draft_model", "spec_draft_max", "spec_draft_min", "spec_max_sequences",
                             "spec_pool_tokens"),
    "logging": ("log_level", "log_format"),
}
USAGE = "python server.py [--model-name MODEL] [--host HOST] [--port PORT] [options]"


def _flag_type(annotation):
    """argparse converter for a field type; Optional[X] -> X, Path -> str (pydantic converts afterwards)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation if annotation in (int, float) else str


def _choices(annotation) -> tuple[str, ...] | None:
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def _add_flag(group: argparse._ActionsContainer, name: str, spelling: str, *, shown: bool) -> None:
    field = Settings.model_fields[name]
    default = "" if field.default is None else f" (default: {field.default})"
    options: dict = {"dest": name, "default": argparse.SUPPRESS}
    if typing.get_origin(field.annotation) is list:
        options.update(action="append", metavar=name.upper(), help=f"{field.description} (repeatable)")
    elif field.annotation is bool:
        options.update(action=argparse.BooleanOptionalAction, help=f"{field.description}{default}")
    else:
        choices = _choices(field.annotation)
        metavar = "{" + ",".join(choices) + "}" if choices else name.upper()
        options.update(type=_flag_type(field.annotation), metavar=metavar, choices=choices,
                       help=f"{field.description}{default}")
    options["help"] = options["help"].replace("%", "%%") if shown else argparse.SUPPRESS
    group.add_argument(spelling, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        usage=USAGE, formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=30), description="OpenAI-compatible LLM inference server.",
        epilog="Every flag can also be set as an environment variable LLM_SERVER_<NAME> (e.g. LLM_SERVER_N_CTX) "
               "or in .env; flags with underscores (--n_ctx) are accepted too.",
    )
    for title, names in FLAG_GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            _add_flag(group, name, f"--{name.replace('_', '-')}", shown=True)
            if "_" in name:
                _add_flag(group, name, f"--{name}", shown=False)
    return parser


def settings_from_cli(argv: Sequence[str] | None = None) -> Settings:
    given = vars(build_parser().parse_args(argv))
    return Settings(**given)
