"""Keep-alive durations as Ollama spells them, and when an idle model is due."""

import pytest

from backends.keep_alive import LoadedModel, parse_duration
from errors import InvalidRequest


@pytest.mark.parametrize(("value", "seconds"), [
    ("10m", 600.0), ("1h30m", 5400.0), ("45s", 45.0), ("500ms", 0.5), ("90", 90.0), (0, 0.0), (2.5, 2.5),
    ("-1", None), (-1, None), (None, None),
])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["10 minutes", "m", "1x", True, "1h-2m"])
def test_bad_durations_are_a_400_naming_the_field(value):
    with pytest.raises(InvalidRequest) as refused:
        parse_duration(value)
    assert refused.value.param == "keep_alive"


def test_an_idle_model_is_due_when_its_time_is_up_never_while_in_use():
    model = LoadedModel(entry=None, engine=None, renderer=None, memory_bytes=0, last_used=100.0, keep_alive=5.0)
    assert model.expires_in(now=102.0) == 3.0 and model.expires_in(now=106.0) == 0.0
    model.leases = 1
    assert model.expires_in(now=106.0) is None
    model.leases, model.keep_alive = 0, None
    assert model.expires_in(now=1e9) is None
