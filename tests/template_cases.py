"""The cases a served chat template must pass over HTTP, as a user meets them (issue 35): plain chat with a
system prompt, a conversation with tool history, `tool_choice: required` (valid arguments, `tool_calls`, the same
whole and streamed), `auto` without call markup or reasoning markers in the content, and thinking off where the
template has the switch. Run by tests/e2e/test_template_corpus.py on a sample, one template per family, and by
bench/bench_templates.py on the whole collection."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import openai
import yaml

from settings import PROJECT_ROOT, SMOLLM2_FILE
from tests.server_process import running_server

# (its parameter undescribed, as many clients send tools: Command R+'s tool_use template then fails, a 400)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
ASK = {"role": "user", "content": "What is the weather in Paris?"}
HISTORY = [ASK, {"role": "assistant", "content": "", "tool_calls": [{"id": "abc123XYZ", "type": "function", "function": {
    "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "abc123XYZ", "content": "18C, sunny"}]
# Text that is never answer content: call markup of the formats in the collection, reasoning and turn markers.
MARKUP = ("<tool_call", "</tool_call", "[TOOL_CALLS]", "<|python_tag|>", "<TOOLCALL>", "<tool_calls>", "<|tool_call",
          "<think>", "</think>", "[THINK]", "<|channel|>", "<|message|>", "<|im_start|>", "<|im_end|>",
          "<function=", "<|start_header_id|>")


def plain(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, max_tokens=12, temperature=0, messages=[
        {"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Say hello."}])
    assert answer.choices[0].finish_reason in ("stop", "length")


def tool_history(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=HISTORY, tools=[WEATHER], max_tokens=12,
                                            temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")


def required(client: openai.OpenAI, model: str) -> None:
    # 512: the stand-in model spells some families' control markers in many tokens (Kimi K3's shortest call takes
    # SmolLM2 101 tokens, and a constrained answer's floor is twice its shortest form), and may wander first: on a
    # Xeon with AVX-512 its Granite 3.3 call came after 417 tokens of `]` (256 sufficed on an AMD EPYC)
    # Without speculation: the check is that streaming parses the same call, and speculation's step shapes, learnt
    # from step times, can part two greedy runs at a near tie (Kimi K3's did once in CI)
    kwargs = dict(model=model, messages=[ASK], tools=[WEATHER], tool_choice="required", max_tokens=512, temperature=0,
                  parallel_tool_calls=False, extra_body={"speculative": False})
    client.chat.completions.create(**kwargs)  # warm the prefix cache so both runs below share one numeric regime
    whole = client.chat.completions.create(**kwargs)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason}"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    streamed = "".join(tc.function.arguments or "" for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or [])
    assert streamed == call.function.arguments, "streamed arguments differ from the whole answer's"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def auto(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                            tools=[WEATHER], tool_choice="auto", max_tokens=32, temperature=0)
    content = answer.choices[0].message.content or ""
    leaked = [marker for marker in MARKUP if marker in content]
    assert not leaked, f"markup in content: {leaked}"


def thinking_off(client: openai.OpenAI, model: str) -> None:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                            max_tokens=32, temperature=0,
                                            extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    message = answer.choices[0].message
    content = message.content or ""
    assert not any(marker in content for marker in ("<think>", "</think>")), "reasoning markers in content"
    assert not (message.model_extra or {}).get("reasoning_content"), "reasoning with thinking off"


CASES: dict[str, Callable[[openai.OpenAI, str], None]] = {
    "plain": plain, "tool history": tool_history, "required": required, "auto": auto, "thinking off": thinking_off,
}


def applicable(case: str, template: str) -> bool:
    return case != "thinking off" or "enable_thinking" in template


def run_cases(client: openai.OpenAI, model: str, template: str) -> dict[str, str]:
    """case -> "ok", or why it failed."""
    results = {}
    for case, check in CASES.items():
        if not applicable(case, template):
            continue
        try:
            check(client, model)
            results[case] = "ok"
        except Exception as exc:  # noqa: BLE001 - a case's failure, whatever it is, is its result
            results[case] = f"{type(exc).__name__}: {exc}"[:200]
    return results


def serve_templates(templates: dict[str, str], folder: Path, n_ctx: int = 4096):
    """One server, one catalog entry per template (id = its name), each the embedded SmolLM2 with that template."""
    (folder / "templates").mkdir()
    entries = []
    for name, source in templates.items():
        path = folder / "templates" / f"{name}.jinja"
        path.write_text(source, encoding="utf-8")
        # A `tool_use` template is one of a model's named templates, rendered only for requests with tools
        templates = {"chat_template": "chatml", "chat_template_tool_use": str(path)} if name.endswith("-tool_use") \
            else {"chat_template": str(path)}
        entries.append({"id": name, "path": str(PROJECT_ROOT / "models" / SMOLLM2_FILE), **templates,
                        "settings": {"n_ctx": n_ctx, "parallel": 1}})
    (folder / "models.yaml").write_text(yaml.safe_dump({"models": entries}))
    return running_server("--models-dir", str(folder), "--model-name", entries[0]["id"],
                          "--no-install-embedded-models", "--max-loaded-models", "2", log_dir=folder)
