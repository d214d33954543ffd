"""A thinking model served end to end. No small thinking GGUF is on PyPI, so the fixture is the embedded
instruct model (SmolLM2) under a Qwen3-shaped template (tests/fixtures/thinking_chatml.jinja) whose generation
prompt opens a `<think>` block, DeepSeek-R1 style, and pre-fills an empty one when `enable_thinking` is false.
SmolLM2 never closes the block itself, so the reasoning budget is what lets an answer follow: the engine path
(splitting, budget, grammars after thinking, accounting) runs for real. Strict `openai` SDK throughout."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

from backends.embedded_model import SMOLLM2_FILE
from settings import PROJECT_ROOT
from tests.server_process import running_server

TEMPLATE = PROJECT_ROOT / "tests" / "fixtures" / "thinking_chatml.jinja"
ASK = [{"role": "user", "content": "What is the weather like in Paris in spring?"}]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
MARKERS = ("<think>", "</think>")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reasoning")
    models = folder / "models.yaml"
    path = PROJECT_ROOT / "models" / SMOLLM2_FILE
    models.write_text(f"""models:
  - id: thinker
    path: {path}
    chat_template: {TEMPLATE}
  - id: thinker-off
    path: {path}
    chat_template: {TEMPLATE}
    defaults: {{chat_template_kwargs: {{enable_thinking: false}}}}
""")
    # Requests that name no budget (the web page, the terminal chat) get 8 thinking tokens, then a short answer.
    with running_server("--models-file", str(models), "--model-name", "thinker", "--parallel", "4",
                        "--reasoning-budget", "8", "--default-max-tokens", "40", "--log-level", "info",
                        log_dir=folder) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return server.openai_client()


def reasoning_of(message) -> str | None:
    return (message.model_extra or {}).get("reasoning_content")


def streamed(client, **kwargs) -> tuple[str, str, list]:
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thinking = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    return thinking, "".join(d.content or "" for d in deltas), chunks


def test_the_model_card_says_it_reasons_and_how(client, server):
    client.chat.completions.create(model="thinker", messages=ASK, max_tokens=1)  # loaded: the card has capabilities
    import httpx

    card = httpx.get(f"{server.base_url}/v1/models/thinker").json()
    assert card["capabilities"]["reasoning"]["markers"] == list(MARKERS)
    assert "enable_thinking" in card["capabilities"]["reasoning"]["controls"]


def test_thinking_is_separated_and_the_budget_lets_the_answer_follow_streamed_and_whole(client):
    kwargs = dict(model="thinker", messages=ASK, max_tokens=60, temperature=0, extra_body={"reasoning_budget": 16},
                  stream_options={"include_usage": True})
    client.chat.completions.create(**{k: v for k, v in kwargs.items() if k != "stream_options"})  # warm the prefix
    whole = client.chat.completions.create(**{k: v for k, v in kwargs.items() if k != "stream_options"})
    message = whole.choices[0].message
    assert reasoning_of(message) and message.content
    assert not any(marker in reasoning_of(message) + message.content for marker in MARKERS)
    close_tokens = 5  # `</think>` and the blank line after it, written by the engine
    assert 16 <= whole.usage.completion_tokens_details.reasoning_tokens <= 16 + close_tokens
    thinking, content, chunks = streamed(client, **kwargs)
    assert (thinking, content) == (reasoning_of(message), message.content)
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == whole.usage.completion_tokens_details.reasoning_tokens


@pytest.mark.parametrize("reasoning_format", ["reasoning", "both", "none"])
def test_each_reasoning_format(client, reasoning_format):
    answer = client.chat.completions.create(model="thinker", messages=ASK, max_tokens=40, temperature=0,
                                            extra_body={"reasoning_budget": 8, "reasoning_format": reasoning_format})
    message = answer.choices[0].message
    extra = message.model_extra or {}
    if reasoning_format == "none":  # left in the content, as the model wrote it (the prompt opened the block)
        assert "reasoning" not in extra and "reasoning_content" not in extra and "</think>" in message.content
        return
    assert extra["reasoning"] and "</think>" not in message.content
    assert ("reasoning_content" in extra) == (reasoning_format == "both")


@pytest.mark.parametrize("how", ["chat_template_kwargs", "reasoning_effort", "model default"])
def test_thinking_can_be_turned_off(client, how):
    fields = {"chat_template_kwargs": {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
              "reasoning_effort": {"reasoning_effort": "none"}, "model default": {"model": "thinker-off"}}[how]
    answer = client.chat.completions.create(**{"model": "thinker", "messages": ASK, "max_tokens": 20, **fields})
    assert reasoning_of(answer.choices[0].message) is None and answer.choices[0].message.content
    assert answer.usage.completion_tokens_details.reasoning_tokens == 0


def test_a_required_tool_call_after_thinking_is_schema_valid(client):
    kwargs = dict(model="thinker", messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=120,
                  temperature=0, extra_body={"reasoning_budget": 24})
    client.chat.completions.create(**kwargs)  # warm the prefix: both runs below in the same rounding regime
    whole = client.chat.completions.create(**kwargs)
    [call] = whole.choices[0].message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_SCHEMA)
    assert whole.choices[0].finish_reason == "tool_calls" and reasoning_of(whole.choices[0].message)
    thinking, _, chunks = streamed(client, **kwargs)
    arguments = "".join(tc.function.arguments or "" for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or [])
    assert (thinking, arguments) == (reasoning_of(whole.choices[0].message), call.function.arguments)


def test_a_json_schema_answer_after_thinking_validates(client):
    answer = client.chat.completions.create(
        model="thinker", messages=ASK, max_tokens=120, temperature=0, extra_body={"reasoning_budget": 24},
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER_SCHEMA, "strict": True}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), WEATHER_SCHEMA)
    assert reasoning_of(answer.choices[0].message)


def test_past_thinking_reaches_the_template(client):
    history = [*ASK, {"role": "assistant", "content": "Mild.", "reasoning_content": "Spring in Paris is mild and wet."},
               {"role": "user", "content": "And in summer?"}]
    with_thinking = client.chat.completions.create(model="thinker", messages=history, max_tokens=1)
    history[1] = {"role": "assistant", "content": "Mild."}
    without = client.chat.completions.create(model="thinker", messages=history, max_tokens=1)
    assert with_thinking.usage.prompt_tokens > without.usage.prompt_tokens + 5


def test_responses_return_a_reasoning_item_streamed_and_whole(client):
    kwargs = dict(model="thinker", input="What is the weather like in Paris in spring?", max_output_tokens=50,
                  temperature=0, extra_body={"reasoning_budget": 12})
    whole = client.responses.create(**kwargs)
    reasoning, message = whole.output[0], whole.output[1]
    assert reasoning.type == "reasoning" and reasoning.content[0].text and message.type == "message"
    assert whole.usage.output_tokens_details.reasoning_tokens >= 12
    events = list(client.responses.create(stream=True, **kwargs))
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert deltas == reasoning.content[0].text
    assert [e for e in events if e.type == "response.completed" or e.type == "response.incomplete"][-1].response.output[0].content[0].text == deltas
    off = client.responses.create(**{**kwargs, "reasoning": {"effort": "none"}})
    assert [item.type for item in off.output] == ["message"]


def test_prometheus_counts_reasoning_tokens(client, server):
    import httpx

    client.chat.completions.create(model="thinker", messages=ASK, max_tokens=12, extra_body={"reasoning_budget": 4})
    metrics = httpx.get(f"{server.base_url}/metrics").text
    [line] = [line for line in metrics.splitlines() if line.startswith('llm_reasoning_tokens_total{model="thinker"}')]
    assert float(line.split()[-1]) >= 4


def test_the_web_page_shows_thinking_in_a_collapsible_block(server):
    from playwright import sync_api

    from tests.e2e.test_web_chat import CHROMIUM, CHROMIUM_ARGS, greedy

    assert CHROMIUM, "Chromium is not installed (Debian package `chromium`)"
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{server.base_url}/chat")
        page.wait_for_function("document.querySelectorAll('#model option').length > 1")
        page.select_option("#model", "thinker")
        greedy(page)  # (at the page's 0.7 SmolLM2 sometimes writes a second, literal `</think>` into its answer)
        page.fill("#input", "What is the weather like in Paris in spring?")
        page.press("#input", "Enter")
        page.wait_for_function("document.querySelector('#status').textContent.includes('tok/s')", timeout=60000)
        thinking = page.text_content(".message.assistant .thinking-text")
        answer = page.inner_text(".message.assistant .answer")
        assert thinking.strip() and answer.strip() and "</think>" not in thinking + answer
        assert page.evaluate("document.querySelector('.message.assistant details.thinking').open") is False
        page.click(".message.assistant .thinking summary")  # unfold it
        assert page.evaluate("document.querySelector('.message.assistant details.thinking').open") is True
        stored = page.evaluate("ChatTree.path(ChatApp.current())[1]")
        assert stored["reasoning"] == thinking and stored["content"].strip()  # kept, and sent back next turn
        browser.close()


def test_the_terminal_chat_shows_thinking_and_can_hide_it(server, tmp_path):
    from tests.e2e.test_terminal_chat import TerminalSession

    session = TerminalSession("--base-url", f"{server.base_url}/v1", "--model", "thinker",
                              "--data-dir", str(tmp_path))
    try:
        session.expect("/help for commands", 30)
        session.send("/set temperature 0")  # (at the chat's default 0.7 SmolLM2 sometimes writes a second, literal
        session.expect("temperature = 0.0")  # `</think>` into its answer, as in the web page's test above)
        session.send("What is the weather like in Paris in spring?")
        session.expect(r"tok/s")
        session.send("/save spring")
        session.expect("saved to")
        [question, answer] = json.loads((tmp_path / "spring.json").read_text())["messages"]
        assert answer["reasoning_content"] and answer["content"] and "</think>" not in answer["content"]
        assert answer["reasoning_content"].strip()[:30] in session.screen.replace("\n", " ")  # shown as it came
        session.send("/thinking")
        session.expect("reasoning hidden")
    finally:
        session.close()


def test_anthropic_thinking_blocks_streamed_and_whole(server):
    """Messages `thinking: enabled` with budget_tokens maps to the reasoning budget: a thinking block (with a
    signature), then the answer; the stream's thinking_delta / signature_delta build the same message."""
    import anthropic

    client = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    kwargs = dict(model="thinker", max_tokens=60, messages=ASK, thinking={"type": "enabled", "budget_tokens": 12},
                  extra_body={"temperature": 0})
    client.messages.create(**kwargs)  # warm the prefix
    whole = client.messages.create(**kwargs)
    thinking, text = whole.content[0], whole.content[1]
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature and text.type == "text"
    with client.messages.stream(**kwargs) as stream:
        deltas = [event.delta for event in stream if event.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "".join(d.thinking for d in deltas if d.type == "thinking_delta") == thinking.thinking
    assert [d.type for d in deltas].count("signature_delta") == 1
    assert final.content[0].thinking == thinking.thinking and final.content[1].text == text.text
    off = client.messages.create(**{**kwargs, "thinking": {"type": "disabled"}})
    assert [block.type for block in off.content] == ["text"]


FRUIT_SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}, "fruit": {"type": "string"}},
                "required": ["answer", "fruit"]}


def test_json_after_thinking_is_valid_at_every_budget_the_server_accepts(client):
    """At max_tokens 48 the thinking left the answer too little room (`{"answer" : 3, "fruit" : "apples`). The
    room kept now holds the close marker and what a valid answer needs; a budget below that is a 400."""
    kwargs = dict(model="thinker", temperature=0, response_format={
        "type": "json_schema", "json_schema": {"name": "fruit", "schema": FRUIT_SCHEMA}},
        messages=[{"role": "user", "content": "I have 3 apples. How many, and which fruit? Answer in JSON."}])
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(**kwargs, max_tokens=16)
    floor = int(re.search(r"needs at least (\d+) tokens", refused.value.body["message"])[1])
    for max_tokens in sorted({floor, 40, 48, 56}):
        if max_tokens < floor:
            continue
        answer = client.chat.completions.create(**kwargs, max_tokens=max_tokens)
        assert answer.usage.completion_tokens <= max_tokens
        jsonschema.validate(json.loads(answer.choices[0].message.content), FRUIT_SCHEMA)
