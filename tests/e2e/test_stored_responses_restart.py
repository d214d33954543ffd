"""Stored responses survive a restart: a conversation continued with `previous_response_id` on a new server
process over the same state database and cache directory, its prefix read back from the disk prompt cache."""

from __future__ import annotations

from backends.embedded_model import SMOLLM2_FILE
from tests.server_process import running_server


def test_a_conversation_continues_after_a_restart(tmp_path):
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    flags = ("--model-name", SMOLLM2_FILE, "--cache-dir", str(tmp_path / "cache"), "--parallel", "1")
    with running_server(*flags, log_dir=tmp_path / "first") as server:
        first = server.openai_client().responses.create(
            model=SMOLLM2_FILE, input="Tell me about lighthouses and the sea at night. " * 20, max_output_tokens=8,
            temperature=0)
    with running_server(*flags, log_dir=tmp_path / "second") as server:
        client = server.openai_client()
        assert client.responses.retrieve(first.id).output_text == first.output_text
        second = client.responses.create(model=SMOLLM2_FILE, input="Go on.", previous_response_id=first.id,
                                         max_output_tokens=4, temperature=0)
    assert second.usage.input_tokens > first.usage.input_tokens
    # the stored turn's prompt came back from the disk cache: only the new turn was evaluated
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens - 1
