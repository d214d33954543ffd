from pathlib import Path

from settings import Settings
from settings_cli import settings_from_cli


def test_every_setting_has_both_flag_spellings():
    assert settings_from_cli(["--model_name", "a.gguf"]).model_name == "a.gguf"
    assert settings_from_cli(["--model-name", "b.gguf"]).model_name == "b.gguf"
    settings = settings_from_cli(["--n-ctx", "2048", "--n_threads", "3", "--models-dir", "/tmp/m", "--no-flash-attn"])
    assert (settings.n_ctx, settings.n_threads, settings.models_dir, settings.flash_attn) == (2048, 3, Path("/tmp/m"), False)


def test_defaults_bind_loopback():
    settings = settings_from_cli([])
    assert settings.host == "127.0.0.1" and settings.port == 8000


def test_environment_applies_when_no_flag_is_given(monkeypatch):
    monkeypatch.setenv("LLM_SERVER_PORT", "9123")
    monkeypatch.setenv("LLM_SERVER_N_CTX", "1024")
    assert settings_from_cli([]).port == 9123
    assert settings_from_cli(["--port", "9000"]).port == 9000
    assert settings_from_cli([]).n_ctx == Settings().n_ctx == 1024
