"""Compaction's parts: the seal (a forged or altered item is refused), what is kept verbatim, the expansion."""

from __future__ import annotations

import stat

import pytest
from cryptography.fernet import Fernet

from api.responses.compaction import (
    SUMMARY_HEADING,
    CompactionSeal,
    compaction_item,
    context_threshold,
    expanded,
    since_last_compaction,
    split_history,
)
from errors import InvalidRequest
from settings import Settings


def message(role: str, text: str) -> dict:
    return {"type": "message", "role": role, "content": text}


HISTORY = [message("system", "Be brief."), message("developer", "Use tools."), message("user", "First"),
           message("assistant", "One"), {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
           {"type": "function_call_output", "call_id": "c", "output": "42"}, message("user", "Second"),
           {"type": "function_call", "call_id": "d", "name": "f", "arguments": "{}"}]


def test_the_head_and_the_last_request_with_its_open_calls_are_kept_verbatim():
    head, middle, tail = split_history(HISTORY)
    assert head == HISTORY[:2] and middle == HISTORY[2:6] and tail == HISTORY[6:]
    assert split_history([message("system", "s"), message("user", "only")]) == \
        ([message("system", "s")], [message("user", "only")], [])  # nothing before the request: all summarised


def test_an_item_expands_to_its_head_then_the_summary_at_the_head_of_the_kept_request():
    seal = CompactionSeal(Fernet.generate_key())
    head, _, tail = split_history(HISTORY)
    item = compaction_item(seal, head, "Asked f; it said 42.", tail)
    assert item["type"] == "compaction" and "Asked" not in item["encrypted_content"]  # (opaque)
    out = expanded([item, message("user", "Third")], seal)
    assert out[:2] == head and out[2]["role"] == "user"
    assert out[2]["content"] == f"{SUMMARY_HEADING}\nAsked f; it said 42.\n\nSecond"
    assert out[3:] == [HISTORY[7], message("user", "Third")]
    assert since_last_compaction([message("user", "old"), item, message("assistant", "new")]) == \
        [item, message("assistant", "new")]


def test_a_forged_altered_or_foreign_item_is_a_400_naming_it():
    seal, other = CompactionSeal(Fernet.generate_key()), CompactionSeal(Fernet.generate_key())
    item = compaction_item(seal, [], "summary", [message("user", "q")])
    altered = {**item, "encrypted_content": item["encrypted_content"][:-6] + "AAAAAA"}
    for bad, sealed_by in ((altered, seal), ({"type": "compaction", "encrypted_content": "x"}, seal),
                           ({"type": "compaction"}, seal), (item, other)):
        with pytest.raises(InvalidRequest) as refused:
            expanded([message("user", "hi"), bad], sealed_by)
        assert refused.value.param == "input[1].encrypted_content"


def test_the_key_file_is_made_once_readable_by_the_server_only(tmp_path):
    settings = Settings(cache_dir=tmp_path)
    first = CompactionSeal.from_settings(settings)
    token = first.seal({"summary": "s"})
    assert stat.S_IMODE((tmp_path / "compaction.key").stat().st_mode) == 0o600
    assert CompactionSeal.from_settings(settings).open(token, "x")["summary"] == "s"  # after a restart too
    with pytest.raises(ValueError):
        CompactionSeal.from_settings(Settings(cache_dir=tmp_path, compaction_key="not a key"))


@pytest.mark.parametrize("given, param", [
    ({"type": "compaction"}, "context_management"),
    ([{"type": "truncation"}], "context_management[0].type"),
    ([{"type": "compaction", "compact_threshold": -1}], "context_management[0].compact_threshold"),
    ([{"type": "compaction", "compact_threshold": True}], "context_management[0].compact_threshold"),
])
def test_context_management_is_compaction_with_a_positive_threshold(given, param):
    assert context_threshold([{"type": "compaction", "compact_threshold": 500}]) == 500
    assert context_threshold(None) is None
    with pytest.raises(InvalidRequest) as refused:
        context_threshold(given)
    assert refused.value.param == param
