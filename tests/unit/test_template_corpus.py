"""Every real chat template of llama.cpp's collection (~70 families, read from the llama-cpp-python sdist at test
time: tests/llama_cpp_sdist.py) renders here exactly as transformers renders it, for conversations with a system
prompt, several turns, tools, tool history and thinking on / off. Where transformers refuses a conversation, we
refuse it too, with a 400 (InvalidRequest), and the refusal is one README lists (REFUSED below)."""

from __future__ import annotations

import copy
import json

import pytest

from chat.template_adaptation import adapt
from chat.templates import ChatPromptRenderer, ChatTemplateInfo
from chat.tool_call_parser import parse_tool_calls
from errors import InvalidRequest
from tests.llama_cpp_sdist import chat_templates

transformers_templates = pytest.importorskip("transformers.utils.chat_template_utils")

BOS, EOS = "<s>", "</s>"
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "description": "Città"}}, "required": ["city"]}}}]
USER = {"role": "user", "content": "What is the weather in Paris?"}
CALL = {"role": "assistant", "content": "", "tool_calls": [{"id": "abc123XYZ", "type": "function", "function": {
    "name": "get_weather", "arguments": {"city": "Paris"}}}]}
RESULT = {"role": "tool", "tool_call_id": "abc123XYZ", "name": "get_weather", "content": "18C, sunny"}
CONVERSATIONS = {
    "system": ([{"role": "system", "content": "You are terse."}, USER], None, {}),
    "turns": ([USER, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "And tomorrow?"}], None, {}),
    "tools": ([USER], TOOLS, {}),
    "tool history": ([USER, CALL, RESULT], TOOLS, {}),
    "reasoning history": ([USER, {"role": "assistant", "content": "Sunny.", "reasoning_content": "Look it up."},
                           {"role": "user", "content": "Thanks"}], None, {}),
    "thinking off": ([USER], None, {"enable_thinking": False}),
    "thinking on": ([USER], None, {"enable_thinking": True}),
}
TOOL_USE_VARIANT = "a tool_use variant: it loops over `tools`, None without tools (the model's default template serves those)"
# (template, conversation) -> why transformers refuses it (README lists them).
REFUSED = {
    "CohereForAI-c4ai-command-r-plus-tool_use": dict.fromkeys(
        ["system", "turns", "reasoning history", "thinking off", "thinking on"], TOOL_USE_VARIANT),
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": dict.fromkeys(
        ["system", "turns", "reasoning history", "thinking off", "thinking on"], TOOL_USE_VARIANT),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": dict.fromkeys(
        ["system", "turns", "reasoning history", "thinking off", "thinking on"], TOOL_USE_VARIANT),
    "fireworks-ai-llama-3-firefunction-v2": dict.fromkeys(
        ["system", "turns", "tools", "tool history", "reasoning history", "thinking off", "thinking on"],
        "reads a `functions` variable transformers never sets"),
    "google-gemma-2-2b-it": {"tool history": "no tool role: roles must alternate user / assistant"},
    "Kimi-K2-Instruct": {"tool history": "calls `list.append`, which the sandbox refuses"},
    "Kimi-K2-Thinking": {"tool history": "calls `list.append`, which the sandbox refuses"},
    "llama-cpp-deepseek-r1": {"tools": "applies tojson to a generator", "tool history": "applies tojson to a generator"},
}
TEMPLATES = chat_templates()


def test_the_collection_is_there():
    assert len(TEMPLATES) >= 60 and "openai-gpt-oss-120b" in TEMPLATES and "Qwen3.5-4B" in TEMPLATES


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_renders_as_transformers_does(name):
    source = TEMPLATES[name]
    renderer = ChatPromptRenderer(ChatTemplateInfo(source=source, bos_token=BOS, eos_token=EOS, origin=name))
    refused = set()
    for case, (messages, tools, extra) in CONVERSATIONS.items():
        shaped = copy.deepcopy(adapt(messages, renderer.needs))  # as the template takes it (system, arguments)
        try:
            expected = transformers_templates.render_jinja_template(
                [shaped], tools=tools, chat_template=source, add_generation_prompt=True, bos_token=BOS, eos_token=EOS,
                **extra)[0][0]
        except Exception:
            with pytest.raises(InvalidRequest):
                renderer.render(copy.deepcopy(messages), tools=tools, extra=extra or None)
            refused.add(case)
            continue
        assert renderer.render(copy.deepcopy(messages), tools=tools, extra=extra or None) == expected, case
    assert refused == set(REFUSED.get(name, {}))


# ---------------------------------------------------------------- the calls a template writes are read back

NO_CALLS_IN_HISTORY = "the template drops tool calls from the history: nothing to read"
# template -> why the calls its history shows are not read as calls yet (README lists them)
NOT_READ = {
    **dict.fromkeys(["HuggingFaceTB-SmolLM3-3B", "LFM2-8B-A1B", "LFM2.5-Instruct", "ibm-granite-granite-3.3-2B-Instruct",
                     "llama-cpp-rwkv-world", "microsoft-Phi-3.5-mini-instruct",
                     "deepseek-ai-DeepSeek-R1-Distill-Llama-8B"], NO_CALLS_IN_HISTORY),
}


def test_the_calls_a_template_writes_are_read_back():
    """A model writes calls the way its template writes them in the history: rendered, its turn must parse back
    into the same call, in the format the template was detected to teach."""
    read, not_read = [], {}
    for name, source in sorted(TEMPLATES.items()):
        renderer = ChatPromptRenderer(ChatTemplateInfo(source=source, bos_token=BOS, eos_token=EOS, origin=name,
                                                       tool_prompt_source="{{ tools }}"))
        try:
            prompt = renderer.render([USER], tools=TOOLS)
            history = renderer.render([USER, CALL, RESULT], tools=TOOLS, add_generation_prompt=False)
        except InvalidRequest:
            continue  # transformers refuses these too (REFUSED)
        turn = history[len(prompt):] if history.startswith(prompt) else history.split(USER["content"], 1)[1]
        _, calls = parse_tool_calls(turn.split("18C")[0], renderer.tool_call_format)
        if any(c.complete and c.name == "get_weather" and json.loads(c.arguments) == {"city": "Paris"} for c in calls):
            read.append(name)
        else:
            not_read[name] = renderer.tool_call_format.name
    assert set(not_read) == set(NOT_READ), not_read
    assert len(read) >= 58
