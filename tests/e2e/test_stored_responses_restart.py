"""Stored responses survive a restart: a conversation continued with `previous_response_id` on a new server
process over the same state database and cache directory, its prefix read back from the disk prompt cache."""

from __future__ import annotations

from backends.embedded_model import SMOLLM2_FILE
from tests.server_process import running_server
from tests.smollm2 import NO_END_TOKENS


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


def test_a_background_response_cut_by_a_crash_is_failed_never_half_written(tmp_path):
    import time

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    flags = ("--model-name", SMOLLM2_FILE, "--cache-dir", str(tmp_path / "cache"), "--parallel", "1")
    with running_server(*flags, log_dir=tmp_path / "a") as server:
        client = server.openai_client()
        queued = client.responses.create(model=SMOLLM2_FILE, input="Write a long story.", max_output_tokens=900,
                                         background=True, extra_body={"logit_bias": NO_END_TOKENS})
        while client.responses.retrieve(queued.id).status != "in_progress":
            time.sleep(0.05)
        server.process.kill()  # no shutdown: the row stays in_progress
        server.process.wait()
    with running_server(*flags, log_dir=tmp_path / "b") as server:
        after = server.openai_client().responses.retrieve(queued.id)
    assert after.status == "failed" and "stopped" in after.error.message
