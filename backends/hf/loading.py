"""Loading a Hugging Face checkpoint for the transformers engine: where from, on which device, in which dtype.

Offline only: `local_files_only=True` everywhere, so a model missing from disk is a clear error, never a hub
download or a hang. torch and transformers are imported here, on first use, never at server start.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.catalog import HFLoadOptions, ModelEntry
from backends.hf.gguf_reading import one_parse_per_file
from backends.hf.load_tracking import FIRST, LAST
from backends.hf.load_tracking import install as install_load_tracking
from backends.load_progress import report
from errors import InvalidRequest, ModelNotFound

logger = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    model: Any  # a transformers PreTrainedModel in eval mode
    tokenizer: Any
    device: Any  # torch.device of the inputs
    dtype: Any


def pick_device(options: HFLoadOptions):
    import torch

    wanted = options.device
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(wanted)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest(f"device '{wanted}' was asked for, but this machine has no CUDA GPU.", param="model")
    return device


def pick_dtype(options: HFLoadOptions, device):
    import torch

    if options.dtype != "auto":
        return getattr(torch, options.dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # CPUs are slow (or wrong) with half precision matmuls


def quantization_config(options: HFLoadOptions, device, dtype):
    if options.quantization is None:
        return None
    if device.type != "cuda":
        raise InvalidRequest(
            f"{options.quantization} quantization uses bitsandbytes, which needs a CUDA GPU; this model is on "
            f"{device.type}. Remove 'quantization' from its catalog entry or give it a CUDA device.",
            param="model",
        )
    from transformers import BitsAndBytesConfig

    if options.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )


def checkpoint_location(entry: ModelEntry) -> tuple[Path, str | None]:
    """(folder, gguf file name or None). A catalog entry pointing at a .gguf file loads it through transformers."""
    path = entry.path
    if path is None:
        raise ModelNotFound(entry.id)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path.parent, path.name
    if not (path / "config.json").is_file() and entry.hf.gguf_file is None:
        raise ModelNotFound(entry.id)
    return path, entry.hf.gguf_file


def load_checkpoint(entry: ModelEntry, trust_remote_code: bool) -> LoadedCheckpoint:
    options = entry.hf
    device = pick_device(options)
    dtype = pick_dtype(options, device)
    quantization = quantization_config(options, device, dtype)
    folder, gguf_file = checkpoint_location(entry)
    common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    if gguf_file:
        common["gguf_file"] = gguf_file
    model_args: dict[str, Any] = {**common, "dtype": dtype}
    if quantization is not None:
        model_args["quantization_config"] = quantization
    if options.device_map or quantization is not None:
        model_args["device_map"] = options.device_map or {"": device.index or 0}
    logger.info("Loading %s from %s on %s as %s%s", entry.id, folder, device, dtype,
                f" ({options.quantization})" if quantization is not None else "")
    # (a GGUF file is parsed for the tokenizer, the config and the weights: once is enough, see gguf_reading.py)
    with one_parse_per_file() if gguf_file else contextlib.nullcontext():
        tokenizer, model = _tokenizer_and_model(folder, common, model_args)
    report(LAST, "device")
    if "device_map" not in model_args:
        model.to(device)
    model.eval()
    input_device = next(model.parameters()).device
    return LoadedCheckpoint(model=model, tokenizer=tokenizer, device=input_device, dtype=dtype)


def _tokenizer_and_model(folder: Path, common: dict[str, Any], model_args: dict[str, Any]):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report(0.02, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(folder, **common)
    report(FIRST, "weights")
    install_load_tracking()
    return tokenizer, AutoModelForCausalLM.from_pretrained(folder, **model_args)


def free_checkpoint(checkpoint: LoadedCheckpoint) -> None:
    """Drop the weights for real: release references, collect, and hand cached CUDA blocks back."""
    checkpoint.model = None
    checkpoint.tokenizer = None
    release_torch_memory()


def release_torch_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
