"""Adapter entries in the catalog, their keys, and the llama.cpp scheduler's turns between adapter sets."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from backends.adapters import adapter_key
from backends.catalog import Catalog, LoraAdapter, ModelEntry
from backends.embedded_model import SMOLLM2_FILE
from backends.llamacpp.lora import BASE, AdapterTurns, LlamaLoraSet
from settings import PROJECT_ROOT
from tests.lora_gguf import build_lora_gguf


def test_an_adapter_entry_names_its_base_and_adapters_and_takes_its_engine_from_them(tmp_path):
    gguf_entry = ModelEntry(id="pirate", base="smol", lora=["pirate.gguf", {"path": "x.gguf", "scale": 0.5}])
    assert gguf_entry.engine == "llama.cpp"
    assert gguf_entry.lora == (LoraAdapter(path="pirate.gguf", scale=1.0), LoraAdapter(path="x.gguf", scale=0.5))
    assert ModelEntry(id="peft", base="tiny", lora=["adapter-folder"]).engine == "transformers"


@pytest.mark.parametrize("fields", [
    {"base": "smol"},  # no adapters
    {"lora": ["a.gguf"]},  # no base
    {"base": "smol", "lora": ["a.gguf"], "path": "other.gguf"},  # its own weights: not an adapter entry
    {"base": "smol", "lora": ["a.gguf"], "settings": {"n_ctx": 512}},  # engine settings belong to the base
    {"base": "smol", "lora": [{"path": "a.gguf", "scale": 1e9}]},
])
def test_malformed_adapter_entries_are_refused(fields):
    with pytest.raises(ValidationError):
        ModelEntry(id="x", **fields)


def test_the_models_file_resolves_adapter_paths_and_discovery_skips_adapter_files(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    build_lora_gguf(PROJECT_ROOT / "models" / SMOLLM2_FILE, models / "pirate.gguf", targets=("attn_q",))
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "pirate", "base": "smol", "lora": ["pirate.gguf"]}]}))
    catalog = Catalog.build(models, models / "models.yaml", None)
    assert [entry.id for entry in catalog] == ["pirate"]  # pirate.gguf itself is no model
    entry = catalog.find("pirate")
    assert entry.lora[0].path == models / "pirate.gguf" and entry.files == (models / "pirate.gguf",)
    assert entry.size_bytes == (models / "pirate.gguf").stat().st_size


def test_the_adapter_key_changes_with_the_scale_and_the_file(tmp_path):
    path = tmp_path / "a.gguf"
    path.write_bytes(b"one")
    key = adapter_key((LoraAdapter(path=path),))
    assert key == adapter_key((LoraAdapter(path=path, scale=1.0),))
    assert key != adapter_key((LoraAdapter(path=path, scale=0.5),))
    path.write_bytes(b"other")
    assert key != adapter_key((LoraAdapter(path=path),))


def _set(key: str) -> LlamaLoraSet:
    return LlamaLoraSet(model_id=key, key=key)


def test_turns_go_round_the_sets_with_work_and_switch_the_context_only_on_change():
    applied, now = [], [0.0]
    turns = AdapterTurns(applied.append, turn_seconds=0.08, clock=lambda: now[0])
    a, b = _set("a"), _set("b")
    assert turns.choose({BASE: None}) == BASE and applied == []  # the context starts without adapters
    picks = []
    for _ in range(12):  # 30 ms steps: a turn of 80 ms is three steps (the base's began at 0)
        now[0] += 0.03
        picks.append(turns.choose({BASE: None, "a": a, "b": b}))
    assert picks == [BASE, BASE, "a", "a", "a", "b", "b", "b", BASE, BASE, BASE, "a"]
    assert applied == [a, b, None, a]
    applied.clear()
    now[0] += 1.0
    assert [turns.choose({"a": a}) for _ in range(3)] == ["a", "a", "a"] and applied == []  # one set: no switching
    now[0] += 0.5  # a step as long as a whole turn (a prefill) ends the turn
    assert turns.choose({BASE: None, "a": a}) == BASE and turns.choose({BASE: None, "a": a}) == BASE
    now[0] += 0.5
    assert turns.choose({BASE: None, "a": a}) == "a"
    turns.forget(b)
    assert applied == [None, a]  # b is not on the context
    turns.forget(a)
    assert applied == [None, a, None] and turns.applied is None
