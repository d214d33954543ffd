"""Real chat templates served over HTTP (issue 35): a sample of llama.cpp's collection, one template per family of
format and feature (Qwen 3.5, gpt-oss harmony, Mistral v7, DeepSeek V3.1, Gemma 2 without a system role, Functionary
with text arguments, Nemotron Nano 2, Granite 3.3 thinking, Kimi K3's loop controls, LFM 2.5's generation tag, GLM
4.6's tojson options and `<arg_key>` calls, DeepSeek V3.2's DSML, MiniMax M2's `<invoke>`, LFM 2.5's Python calls,
Cohere's action lists, Gemma 4's notation), each served over the embedded SmolLM2 through the cases of
tests/template_cases.py. The whole collection runs in `python -m bench.bench_templates`. Broken and hostile
templates are a 400 or a failed load that names the template line: never a 500, never a dropped connection."""

from __future__ import annotations

import httpx
import pytest
import yaml

from settings import PROJECT_ROOT, SMOLLM2_FILE
from tests.llama_cpp_sdist import chat_templates
from tests.template_cases import CASES, applicable, serve_templates

SAMPLE = ["Qwen3.5-4B", "openai-gpt-oss-120b", "mistralai-Ministral-3-14B-Reasoning-2512", "deepseek-ai-DeepSeek-V3.1",
          "google-gemma-2-2b-it", "meetkai-functionary-medium-v3.2", "NVIDIA-Nemotron-Nano-v2",
          "ibm-granite-granite-3.3-2B-Instruct", "Kimi-K3", "LFM2.5-8B-A1B", "GLM-4.6", "deepseek-ai-DeepSeek-V3.2",
          "MiniMax-M2", "CohereForAI-c4ai-command-r7b-12-2024-tool_use"]
# Served for `required` only: under `auto` SmolLM2 writes turn markup copied from Gemma 4's prompt (README)
REQUIRED_ONLY = ["google-gemma-4-31B-it"]
BROKEN = {
    "type-error": "{% for m in messages %}{{ m.content + 1 }}{% endfor %}",
    "hostile": "{{ 'x' * 1000000000 }}",
    "recursive": "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
}
TEMPLATES = chat_templates()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("template-corpus")
    with serve_templates({name: TEMPLATES[name] for name in SAMPLE + REQUIRED_ONLY} | BROKEN, folder) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return server.openai_client(max_retries=0, timeout=120)


@pytest.mark.parametrize(("name", "case"), [(name, case) for name in SAMPLE for case in CASES
                                             if applicable(case, TEMPLATES[name])])  # (thinking off: where it exists)
def test_a_real_template_serves_the_case(client, name, case):
    CASES[case](client, name)


@pytest.mark.parametrize("name", REQUIRED_ONLY)
def test_a_required_call_in_a_non_json_notation_is_valid_whole_and_streamed(client, name):
    CASES["required"](client, name)


@pytest.mark.parametrize("max_tokens", [120, 200])
def test_a_required_xml_call_is_closed_by_its_tags_within_the_budget(client, max_tokens):
    """Qwen 3.5's calls are XML-like: a string value is any text but `</parameter>`, so quotes and brackets close
    nothing. SmolLM2 reasons, then writes one value until the budget runs out (before: `length`, no call, the
    streamed call's arguments empty); budget closing now leads it along `</parameter></function></tool_call>`."""
    import json

    described = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                                   "parameters": {"type": "object", "required": ["city"], "properties": {
                                                       "city": {"type": "string", "description": "The city's name."}}}}}
    kwargs = dict(model="Qwen3.5-4B", messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                  tools=[described], tool_choice="required", max_tokens=max_tokens, temperature=0,
                  parallel_tool_calls=False)
    choice = client.chat.completions.create(**kwargs).choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments


@pytest.mark.parametrize("name", sorted(BROKEN))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_broken_template_is_a_400_naming_its_line(server, name, stream):
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": stream}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and "template" in error["message"]
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # and the server goes on


def test_a_template_that_does_not_compile_fails_its_load_naming_the_line(tmp_path):
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    (tmp_path / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "fine", "path": str(PROJECT_ROOT / "models" / SMOLLM2_FILE)},
        {"id": "broken", "path": str(PROJECT_ROOT / "models" / SMOLLM2_FILE), "chat_template": str(broken)}]}))
    from tests.server_process import running_server

    with running_server("--models-dir", str(tmp_path), "--model-name", "fine", "--no-install-embedded-models",
                        log_dir=tmp_path) as server:
        response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
            "model": "broken", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert response.status_code < 500 or response.json()["error"]["code"] != "internal_error", response.text
        assert "line 2" in response.json()["error"]["message"], response.text
        assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_a_model_with_a_tool_use_template_renders_requests_with_tools_with_it(tmp_path):
    """Hermes 2 Pro, Hermes 3 and Command R+ ship two named templates; converters write the second as the GGUF's
    `tokenizer.chat_template.tool_use` (here gguf's own `gguf_new_metadata`, from a tokenizer_config.json list). A
    request with tools renders with it (as transformers and llama-server choose), one without with the default."""
    import json
    import subprocess
    import sys

    from tests.server_process import running_server
    from tests.template_cases import WEATHER, required

    tool_use = TEMPLATES["NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use"]
    default = (PROJECT_ROOT / "templates" / "chatml.jinja").read_text(encoding="utf-8")
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": [{"name": "default", "template": default},
                                                    {"name": "tool_use", "template": tool_use}]}))
    model = tmp_path / "hermes-shaped.gguf"
    subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(PROJECT_ROOT / "models" / SMOLLM2_FILE),
                    str(model), "--chat-template-config", str(config), "--force"], check=True, capture_output=True)
    with running_server("--models-dir", str(tmp_path), "--model-name", model.name, "--no-install-embedded-models",
                        log_dir=tmp_path) as server:
        ask = {"model": model.name, "messages": [{"role": "user", "content": "What is the weather in Paris?"}]}
        with_tools = httpx.post(f"{server.base_url}/apply-template", json={**ask, "tools": [WEATHER]}, timeout=60)
        without = httpx.post(f"{server.base_url}/apply-template", json=ask, timeout=60)
        assert with_tools.status_code == 200 and without.status_code == 200, (with_tools.text, without.text)
        assert "You are a function calling AI model" in with_tools.json()["prompt"]
        assert '"name": "get_weather"' in with_tools.json()["prompt"]
        assert without.json()["prompt"] == default_render(default, ask["messages"])
        required(server.openai_client(max_retries=0, timeout=120), model.name)  # and it serves calls in its format


def default_render(source: str, messages: list[dict]) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=source, add_generation_prompt=True,
                                        bos_token="<|im_start|>", eos_token="<|im_end|>")
    return rendered[0]
