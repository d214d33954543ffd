from pathlib import Path

import pytest

from backends.catalog import Catalog

GGUF_BYTES = b"GGUF" + bytes(16)  # never loaded: discovery only lists files


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    directory.mkdir()
    return directory


def _gguf(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_bytes(GGUF_BYTES)
    return path


def _build(models_dir: Path, yaml_text: str | None = None) -> Catalog:
    models_file = None
    if yaml_text is not None:
        models_file = models_dir / "models.yaml"
        models_file.write_text(yaml_text, encoding="utf-8")
    return Catalog.build(models_dir, models_file, hf_cache=None)


def test_gguf_files_are_discovered_by_file_name_as_llama_cpp(models_dir):
    path = _gguf(models_dir, "tiny.gguf")
    (models_dir / "notes.txt").write_text("not a model")
    _gguf(models_dir, ".hidden.gguf")
    catalog = _build(models_dir)
    assert [e.id for e in catalog] == ["tiny.gguf"]
    entry = catalog.find("tiny.gguf")
    assert entry.engine == "llama.cpp"
    assert entry.source == "file"
    assert entry.path == path
    assert entry.size_bytes == len(GGUF_BYTES)


def test_gguf_suffix_is_case_insensitive_and_stem_is_a_name(models_dir):
    _gguf(models_dir, "Big.GGUF")
    catalog = _build(models_dir)
    assert catalog.find("Big.GGUF").names == ("Big.GGUF", "Big")
    assert catalog.find("Big").id == "Big.GGUF"


def test_find_by_stem_and_unknown_name(models_dir):
    _gguf(models_dir, "tiny.gguf")
    catalog = _build(models_dir)
    assert catalog.find("tiny").id == "tiny.gguf"
    assert catalog.find("tiny.GGUF") is None
    assert catalog.find("missing") is None


def test_missing_models_dir_and_file_give_an_empty_catalog(tmp_path):
    catalog = Catalog.build(tmp_path / "absent", tmp_path / "absent.yaml", hf_cache=None)
    assert list(catalog) == []


def test_models_file_entry_wins_over_discovered_file_with_same_id(models_dir):
    _gguf(models_dir, "tiny.gguf")
    catalog = _build(models_dir, "models:\n  - id: tiny.gguf\n    path: tiny.gguf\n    aliases: [t]\n"
                                 "    settings: {n_ctx: 512}\n")
    entry = catalog.find("tiny.gguf")
    assert entry.source == "models-file"
    assert entry.settings.n_ctx == 512
    assert catalog.find("t") is entry
    assert len(list(catalog)) == 1


def test_relative_paths_resolve_against_models_dir(models_dir):
    catalog = _build(models_dir, "models:\n  - id: chat\n    path: sub/m.gguf\n    tool_prompt: prompts/tools.txt\n")
    entry = catalog.find("chat")
    assert entry.path == models_dir / "sub" / "m.gguf"
    assert entry.tool_prompt == models_dir / "prompts" / "tools.txt"
    assert entry.engine == "llama.cpp"


def test_absolute_path_is_kept_and_folder_means_transformers(models_dir, tmp_path):
    folder = tmp_path / "elsewhere"
    catalog = _build(models_dir, f"models:\n  - id: hf\n    path: {folder}\n")
    entry = catalog.find("hf")
    assert entry.path == folder
    assert entry.engine == "transformers"


def test_aliases_find_the_entry_but_never_shadow_another_id(models_dir):
    _gguf(models_dir, "a.gguf")
    catalog = _build(models_dir, "models:\n  - id: main\n    path: a.gguf\n    aliases: [fast, a.gguf]\n")
    assert catalog.find("fast").id == "main"
    assert catalog.find("a.gguf").id == "a.gguf"


def test_invalid_entries_are_ignored_and_valid_ones_kept(models_dir):
    yaml_text = (
        "models:\n"
        "  - id: no-source\n"  # no path, repo, upstream or engine
        "  - id: typo\n    path: x.gguf\n    unknown_field: 1\n"
        "  - id: bad-defaults\n    path: x.gguf\n    defaults: {temperature: 9}\n"
        "  - just a string\n"
        "  - id: good\n    path: g.gguf\n"
    )
    catalog = _build(models_dir, yaml_text)
    assert [e.id for e in catalog] == ["good"]


def test_unparsable_models_file_is_ignored(models_dir):
    _gguf(models_dir, "tiny.gguf")
    catalog = _build(models_dir, "models: [unclosed\n")
    assert [e.id for e in catalog] == ["tiny.gguf"]


def test_symlink_pointing_outside_models_dir_is_skipped(models_dir, tmp_path):
    outside = _gguf(tmp_path, "outside.gguf")
    (models_dir / "escape.gguf").symlink_to(outside)
    inside = _gguf(models_dir, "real.gguf")
    (models_dir / "link.gguf").symlink_to(inside)
    catalog = _build(models_dir)
    assert catalog.find("escape.gguf") is None
    assert sorted(e.id for e in catalog) == ["link.gguf", "real.gguf"]


def test_hf_model_folder_needs_config_and_weights(models_dir):
    complete = models_dir / "complete"
    complete.mkdir()
    (complete / "config.json").write_text("{}")
    (complete / "model.safetensors").write_bytes(b"x" * 10)
    no_weights = models_dir / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    catalog = _build(models_dir)
    assert [e.id for e in catalog] == ["complete"]
    assert catalog.find("complete").engine == "transformers"
    assert catalog.find("complete").size_bytes == 10


def test_a_models_file_with_an_empty_models_key_is_an_empty_list(tmp_path):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "a.gguf").write_bytes(b"GGUF")
    catalog = _build(models_dir, "models:\n")
    assert [entry.id for entry in catalog] == ["a.gguf"]


def test_glob_aliases_map_hard_coded_names_and_exact_names_win(models_dir):
    _gguf(models_dir, "small.gguf")
    _gguf(models_dir, "big.gguf")
    catalog = _build(models_dir, """models:
  - id: chatty
    path: small.gguf
    aliases: ["gpt-*", "*/*-Instruct"]
  - id: gpt-4o-exact
    path: big.gguf
    aliases: [gpt-4o]
""")
    assert catalog.find("gpt-3.5-turbo-instruct").id == "chatty"
    assert catalog.find("Qwen/Qwen2.5-7B-Instruct").id == "chatty"
    assert catalog.find("gpt-4o").id == "gpt-4o-exact"  # an exact alias wins over a pattern
    assert catalog.find("claude-sonnet") is None
    assert catalog.find("../x-Instruct").path == models_dir / "small.gguf"  # matched, never joined into a path
