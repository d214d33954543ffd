from pathlib import Path

import pytest

from api.pipeline.prepare import check_request_limits, prepare_chat, sampling_params, stop_strings
from api.protocol import ChatCompletionRequest
from backends.base import GENERATIVE_CAPABILITIES, EngineCapabilities, SamplingParams
from backends.catalog import GenerationDefaults
from chat.templates import ChatPromptRenderer, ChatTemplateInfo
from errors import InvalidRequest

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
RENDERER = ChatPromptRenderer(ChatTemplateInfo(
    source=(TEMPLATES / "chatml.jinja").read_text(), tool_prompt_source=(TEMPLATES / "tool_prompt.jinja").read_text(),
))
HI = [{"role": "user", "content": "Hi"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest(**{"messages": HI, **fields})


def refusal(request, capabilities=GENERATIVE_CAPABILITIES) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        prepare_chat(request, RENDERER, capabilities)
    return caught.value


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_token_caps_above_the_server_limit_are_refused(field):
    with pytest.raises(InvalidRequest) as caught:
        check_request_limits(chat(**{field: 101}), max_tokens_limit=100, max_messages=10)
    assert caught.value.param == field
    check_request_limits(chat(**{field: 100}), max_tokens_limit=100, max_messages=10)
    check_request_limits(chat(**{field: 10**6}), max_tokens_limit=0, max_messages=10)  # 0: no cap


def test_too_many_messages_are_refused():
    with pytest.raises(InvalidRequest) as caught:
        check_request_limits(chat(messages=HI * 3), max_tokens_limit=0, max_messages=2)
    assert caught.value.param == "messages"


@pytest.mark.parametrize("stop,expected", [(None, ()), ("END", ("END",)), (["a", "b"], ("a", "b"))])
def test_stop_strings_are_always_a_tuple(stop, expected):
    assert stop_strings(chat(stop=stop)) == expected


def test_request_sampling_wins_over_model_defaults_which_win_over_the_servers():
    defaults = GenerationDefaults(temperature=0.2, top_k=5)
    params = sampling_params(chat(temperature=1.5), defaults=defaults)
    assert params.temperature == 1.5
    assert params.top_k == 5
    assert (params.top_p, params.min_p) == (SamplingParams().top_p, SamplingParams().min_p)


def test_each_choice_gets_the_next_seed_and_no_seed_stays_none():
    assert sampling_params(chat(seed=7), choice_index=2).seed == 9
    assert sampling_params(chat(), choice_index=2).seed is None


def test_logit_bias_keys_become_token_ids():
    assert sampling_params(chat(logit_bias={"42": -100})).logit_bias == {42: -100.0}
    with pytest.raises(InvalidRequest) as caught:
        sampling_params(chat(logit_bias={"hello": 1}))
    assert caught.value.param == "logit_bias"


def test_n_choices_share_one_prompt_with_consecutive_seeds():
    prepared = prepare_chat(chat(n=3, seed=7, stop="END"), RENDERER, GENERATIVE_CAPABILITIES)
    assert [r.sampling.seed for r in prepared.requests] == [7, 8, 9]
    assert {r.prompt for r in prepared.requests} == {"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"}
    assert all(r.stop == ("END",) and r.grammar is None and r.top_logprobs is None for r in prepared.requests)
    assert not prepared.tool_plan.active


@pytest.mark.parametrize("fields,expected", [
    ({}, 64), ({"max_tokens": 10}, 10), ({"max_tokens": 10, "max_completion_tokens": 20}, 20),
])
def test_max_tokens_prefers_max_completion_tokens_then_max_tokens_then_the_default(fields, expected):
    prepared = prepare_chat(chat(**fields), RENDERER, GENERATIVE_CAPABILITIES, GenerationDefaults(max_tokens=64))
    assert prepared.requests[0].max_tokens == expected


def test_logprobs_without_top_logprobs_asks_for_the_chosen_token_only():
    assert prepare_chat(chat(logprobs=True), RENDERER, GENERATIVE_CAPABILITIES).requests[0].top_logprobs == 0
    assert prepare_chat(chat(logprobs=True, top_logprobs=3), RENDERER, GENERATIVE_CAPABILITIES).requests[0].top_logprobs == 3


@pytest.mark.parametrize("fields,capabilities,param", [
    ({"tools": [WEATHER]}, EngineCapabilities(), "tools"),
    ({"response_format": {"type": "json_object"}}, EngineCapabilities(), "response_format"),
    ({"grammar": "root ::= \"x\""}, EngineCapabilities(), "grammar"),
    ({"top_logprobs": 2}, GENERATIVE_CAPABILITIES, "top_logprobs"),
    ({"logprobs": True}, EngineCapabilities(logprobs=False), "logprobs"),
    ({"logprobs": True, "top_logprobs": 6}, EngineCapabilities(max_top_logprobs=5), "top_logprobs"),
    ({"grammar": "root ::= \"x\"", "response_format": {"type": "json_object"}}, GENERATIVE_CAPABILITIES, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, GENERATIVE_CAPABILITIES,
     "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string", "not": {}}, "strict": True}}},
     GENERATIVE_CAPABILITIES, "response_format.json_schema.schema"),
])
def test_unsupported_or_conflicting_fields_are_refused_naming_the_param(fields, capabilities, param):
    assert refusal(chat(**fields), capabilities).param == param


def test_raw_grammar_passes_through_and_json_schema_becomes_one():
    raw = prepare_chat(chat(grammar='root ::= "yes"'), RENDERER, GENERATIVE_CAPABILITIES)
    assert raw.requests[0].grammar.gbnf == 'root ::= "yes"'
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    gbnf = prepare_chat(chat(response_format=fmt), RENDERER, GENERATIVE_CAPABILITIES).requests[0].grammar.gbnf
    assert 'root ::= "{" space ok-kv "}" space' in gbnf.splitlines()


def test_tools_without_native_template_support_go_into_the_system_prompt():
    request = chat(messages=[{"role": "system", "content": "Be brief."}, *HI], tools=[WEATHER], tool_choice="required")
    prepared = prepare_chat(request, RENDERER, GENERATIVE_CAPABILITIES)
    prompt = prepared.requests[0].prompt
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\nYou can call the following tools.")
    assert "- get_weather:" in prompt and "You must call a tool now." in prompt
    assert prepared.tool_plan.mode == "required" and prepared.tool_call_format.name == "hermes"
    assert prepared.requests[0].preserved_tokens == ("<tool_call>", "</tool_call>")
    assert "get_weather" in prepared.requests[0].grammar.gbnf
    assert prepared.requests[0].grammar.lazy_triggers == ()


def test_auto_tool_choice_gets_a_lazy_grammar_and_a_new_system_message():
    prepared = prepare_chat(chat(tools=[WEATHER]), RENDERER, GENERATIVE_CAPABILITIES)
    assert prepared.requests[0].prompt.startswith("<|im_start|>system\nYou can call the following tools.")
    assert "If no tool is needed, answer normally." in prepared.requests[0].prompt
    assert prepared.requests[0].grammar.lazy_triggers


def test_every_bad_logit_bias_key_is_named():
    message = refusal(chat(logit_bias={"12": 1, "hello": 2, "x1": -1})).message
    assert "'hello'" in message and "'x1'" in message and "'12'" not in message
