from pathlib import Path

from settings import Settings
from settings_cli import FLAG_GROUPS, build_parser, settings_from_cli


def test_every_setting_has_both_flag_spellings():
    assert settings_from_cli(["--model_name", "a.gguf"]).model_name == "a.gguf"
    assert settings_from_cli(["--model-name", "b.gguf"]).model_name == "b.gguf"
    settings = settings_from_cli(["--n-ctx", "2048", "--n_threads", "3", "--models-dir", "/tmp/m", "--flash-attn", "off"])
    assert (settings.n_ctx, settings.n_threads, settings.models_dir, settings.flash_attn) == (2048, 3, Path("/tmp/m"), "off")


def test_defaults_bind_loopback():
    settings = settings_from_cli([])
    assert settings.host == "127.0.0.1" and settings.port == 8000


def test_environment_applies_when_no_flag_is_given(monkeypatch):
    monkeypatch.setenv("LLM_SERVER_PORT", "9123")
    monkeypatch.setenv("LLM_SERVER_N_CTX", "1024")
    assert settings_from_cli([]).port == 9123
    assert settings_from_cli(["--port", "9000"]).port == 9000
    assert settings_from_cli([]).n_ctx == Settings().n_ctx == 1024


def test_every_setting_is_in_exactly_one_help_group():
    grouped = [name for names in FLAG_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(Settings.model_fields)


def test_help_is_grouped_and_shows_one_spelling_of_each_flag():
    help_text = build_parser().format_help()
    assert help_text.index("\nmodel:") < help_text.index("\nserving:") < help_text.index("\nlogging:")
    assert "--model-name" in help_text and "--model_name" not in help_text and "--no-kv_unified" not in help_text
    assert len(help_text.split("\n\n")[0].splitlines()) == 1  # the usage: one line, not every flag twice


def test_choices_are_checked_by_the_parser(capsys):
    import pytest

    assert settings_from_cli(["--repack", "off"]).repack == "off"
    assert settings_from_cli(["--flash_attn", "on"]).flash_attn == "on"
    with pytest.raises(SystemExit):
        settings_from_cli(["--flash-attn", "sometimes"])
    with pytest.raises(SystemExit):
        settings_from_cli(["--repack", "sometimes"])
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err


def test_flash_attention_was_a_switch_and_its_old_values_still_mean_on_and_off(monkeypatch):
    from settings import Settings

    assert Settings().flash_attn == "auto"
    assert (Settings(flash_attn=True).flash_attn, Settings(flash_attn=False).flash_attn) == ("on", "off")
    monkeypatch.setenv("LLM_SERVER_FLASH_ATTN", "false")  # an environment written for the old boolean
    assert Settings().flash_attn == "off"
