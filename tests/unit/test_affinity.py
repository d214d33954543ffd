"""Which conversation a request names (api/pipeline/affinity.py): the header first, then the body's fields."""

from __future__ import annotations

from api.pipeline.affinity import MAX_KEY_LENGTH, affinity_key
from api.protocol import ChatCompletionRequest
from api.responses.protocol import ResponsesRequest


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], **fields)


def test_the_header_wins_over_the_body_and_a_previous_response_is_no_name():
    assert affinity_key({"x-session-id": " s1 "}, chat(prompt_cache_key="k1")) == "s1"
    assert affinity_key({}, chat(prompt_cache_key="k1")) == "k1"
    responses = ResponsesRequest(model="m", input="hi", previous_response_id="resp_1")
    assert affinity_key(None, responses) is None  # (a new id every turn: the chain's prefix finds its slot)
    assert affinity_key(None, ResponsesRequest(model="m", input="hi", previous_response_id="resp_1",
                                               prompt_cache_key="k2")) == "k2"
    assert affinity_key(None, {"prompt_cache_key": "relayed"}) == "relayed"  # a relayed body, as it came


def test_no_key_is_none_and_a_long_one_is_cut_not_refused():
    assert affinity_key({"x-session-id": "  "}, chat()) is None
    assert affinity_key(None, None) is None
    assert affinity_key(None, {"prompt_cache_key": 7}) is None  # (not a name)
    assert len(affinity_key({"x-session-id": "x" * 5000}, None)) == MAX_KEY_LENGTH
