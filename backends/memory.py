"""Memory accounting for model residency: estimates before loading, and what the process really uses."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from backends.catalog import ModelEntry
from backends.gguf_header import kv_bytes_per_token, read_gguf_metadata


def physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def process_rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process, this one by default (Linux /proc; 0 where unavailable)."""
    try:
        resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def server_rss_bytes(worker_pids: list[int]) -> int:
    """The server's resident memory: its own process and its engine workers'."""
    return process_rss_bytes() + sum(process_rss_bytes(pid) for pid in worker_pids)


def cuda_allocated_bytes() -> int | None:
    """Bytes torch holds on CUDA devices, or None when torch is not in use or there is no GPU (never imports
    torch: a llama.cpp-only server must not pay for it)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return sum(torch.cuda.memory_allocated(index) for index in range(torch.cuda.device_count()))


def estimate_memory_bytes(entry: ModelEntry, n_ctx: int) -> int:
    """Weights (file size) plus an f16 KV cache for `n_ctx` tokens. Raises GGUFError for a broken GGUF."""
    weights = entry.size_bytes or 0
    if entry.engine == "llama.cpp" and entry.path is not None:
        return weights + n_ctx * kv_bytes_per_token(read_gguf_metadata(entry.path))
    if entry.engine == "transformers" and entry.path is not None and (entry.path / "config.json").is_file():
        config = json.loads((entry.path / "config.json").read_text())
        layers = config.get("num_hidden_layers", 0)
        heads = config.get("num_attention_heads", 1) or 1
        kv_heads = config.get("num_key_value_heads", heads) or heads
        head_dim = config.get("head_dim") or config.get("hidden_size", 0) // heads
        return weights + n_ctx * layers * kv_heads * head_dim * 2 * 2
    return weights
