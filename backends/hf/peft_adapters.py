"""PEFT LoRA adapters on the transformers engine.

Unlike llama.cpp, PEFT can apply a different adapter to each row of one forward pass (`adapter_names=[...]`,
"__base__" for none), so base and adapter requests share every batch and step. The first adapter wraps the
loaded model in a `PeftModel` (LoRA layers injected in place); the last one detached unwraps it again, so a
model without adapters runs exactly as before. Changes to the model happen between forward passes, under the
scheduler's `model_lock`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from backends.adapters import adapter_key
from backends.base import AdapterSet
from errors import InvalidRequest

BASE_ROW = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(frozen=True, eq=False)
class PeftAdapterSet(AdapterSet):
    """An adapter loaded into the PEFT model under `name` (its key: the same files and scale share it)."""

    name: str = ""


class PeftAdapters:
    """The adapters loaded into one checkpoint, each once, counted by the entries using it."""

    def __init__(self, checkpoint, model_lock: threading.Lock) -> None:
        self.checkpoint = checkpoint
        self.model_lock = model_lock
        self._users: dict[str, int] = {}

    def attach(self, model_id: str, adapters: tuple) -> PeftAdapterSet:
        if len(adapters) != 1:
            raise ValueError("the transformers engine applies one PEFT adapter per adapter entry; "
                             f"'{model_id}' lists {len(adapters)}")
        adapter = adapters[0]
        if not (adapter.path / "adapter_config.json").is_file():
            raise ValueError(f"{adapter.path} is not a PEFT adapter folder (no adapter_config.json)")
        name = "lora_" + adapter_key(adapters)
        with self.model_lock:
            if name not in self._users:
                self._load(adapter.path, name, adapter.scale)
            self._users[name] = self._users.get(name, 0) + 1
        return PeftAdapterSet(model_id=model_id, key=name, name=name)

    def _load(self, path, name: str, scale: float) -> None:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer

        model = self.checkpoint.model
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=False)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name, is_trainable=False)
        for module in model.modules():  # the entry's scale on top of the adapter's own alpha / rank
            if isinstance(module, LoraLayer) and name in module.scaling:
                module.scaling[name] *= scale
        self.checkpoint.model = model.eval()

    def detach(self, adapters: AdapterSet) -> None:
        name = self.name_of(adapters)
        with self.model_lock:
            self._users[name] -= 1
            if self._users[name]:
                return
            del self._users[name]
            if self._users:
                self.checkpoint.model.delete_adapter(name)
            else:  # the last one: back to the plain model (LoRA layers removed, nothing merged)
                self.checkpoint.model = self.checkpoint.model.unload().eval()

    def name_of(self, adapters: AdapterSet | None) -> str | None:
        if adapters is None:
            return None
        if not isinstance(adapters, PeftAdapterSet) or adapters.name not in self._users:
            raise InvalidRequest(f"The adapters of '{adapters.model_id}' were not loaded into this model.")
        return adapters.name
