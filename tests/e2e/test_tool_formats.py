"""Every call format a template can teach (hermes, mistral, llama3, generic JSON) works end to end.

The embedded gemma model is served under extra catalog entries (models.yaml) whose tool prompts teach the
other formats, so the real detector, grammar, parser and history writer run for each of them.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from chat.tool_formats import LLAMA3, MISTRAL
from settings import PROJECT_ROOT
from tests.server_process import running_server

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now.", "parameters": WEATHER}}]
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]

TOOL_PROMPTS = {
    "mistral": 'Tools: {{ tools | tojson }}\nTo call tools answer [TOOL_CALLS][{"name": "NAME", "arguments": {...}}]',
    "llama3": 'Tools: {{ tools | tojson }}\nTo call a tool answer {"name": function name, "parameters": {...}}',
}
FORMATS = {"mistral": MISTRAL, "llama3": LLAMA3}


@pytest.fixture(scope="module")
def format_client(tmp_path_factory, server):
    models = tmp_path_factory.mktemp("format-models")
    gemma = PROJECT_ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"  # assembled by the session server
    entries = []
    for name, prompt in TOOL_PROMPTS.items():
        (models / f"{name}.tools.jinja").write_text(prompt)
        entries.append({"id": f"gemma-{name}", "path": str(gemma), "tool_prompt": f"{name}.tools.jinja"})
    (models / "models.yaml").write_text(yaml.safe_dump({"models": entries}))
    flags = ("--models-dir", str(models), "--model-name", "gemma-mistral", "--no-install-embedded-models",
             "--parallel", "2")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("format-server")) as process:
        yield process.openai_client()


@pytest.mark.parametrize("name", sorted(TOOL_PROMPTS))
def test_model_card_names_the_detected_format(format_client, name):
    format_client.chat.completions.create(model=f"gemma-{name}", messages=ASK, max_tokens=1)  # load it
    capabilities = format_client.models.retrieve(f"gemma-{name}").model_dump()["capabilities"]
    assert capabilities["tool_call_format"] == name


@pytest.mark.parametrize("name", sorted(TOOL_PROMPTS))
def test_required_call_in_each_format_is_valid_and_streams_the_same(format_client, name):
    kwargs = dict(model=f"gemma-{name}", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=80,
                  temperature=0, parallel_tool_calls=False)
    format_client.chat.completions.create(**kwargs)  # warm the prefix cache so both runs share a regime
    whole = format_client.chat.completions.create(**kwargs).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    (call,) = whole.message.tool_calls
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    chunks = list(format_client.chat.completions.create(stream=True, **kwargs))
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)  # no `[TOOL_CALLS]` etc. as content
    deltas = [d for c in chunks if c.choices and c.choices[0].delta.tool_calls for d in c.choices[0].delta.tool_calls]
    assert deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments


@pytest.mark.parametrize("name", sorted(TOOL_PROMPTS))
def test_auto_mode_detects_calls_in_each_format(format_client, name):
    # Few-shot history written in the format (by our history writer) leads the base model to call again.
    call_format = FORMATS[name]
    example = {"id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": json.dumps({"city": "Oslo", "unit": "celsius"})}}
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [example]},
        {"role": "user", "content": "Weather in Rome?"},
    ]
    # Room for a second call: after `"}}` the model's choice between ending and calling again is a near tie (0.7
    # logit measured), which rounding flips between regimes (prefix reuse, speculation's multi-token steps).
    response = format_client.chat.completions.create(
        model=f"gemma-{name}", messages=history, tools=TOOLS, max_tokens=160, temperature=0
    )
    message = response.choices[0].message
    assert message.tool_calls, message.content
    assert response.choices[0].finish_reason == "tool_calls"
    for call in message.tool_calls:
        jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    assert not any(marker in (message.content or "") for marker in call_format.preserved_tokens)
