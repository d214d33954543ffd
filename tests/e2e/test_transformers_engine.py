"""The transformers engine through the real server: a tiny Llama checkpoint the tests build (random weights,
a real byte-level BPE tokenizer, a ChatML template), loaded from models/ like any Hugging Face folder."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import jsonschema
import openai
import pytest
import xgrammar
import yaml

from settings import PROJECT_ROOT
from tests.server_process import running_server
from tests.tiny_hf_model import CHATML, build_peft_adapter, build_tiny_llama

MODEL = "tiny-llama"
TOOL_USE = ("TOOL USE: {{ tools | map(attribute='function.name') | join(',') }}\n"
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
            "<|im_start|>assistant\n")
ASK = [{"role": "user", "content": "Tell me about owls."}]
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("hf-models")


@pytest.fixture(scope="module")
def hf_server(tmp_path_factory, models):
    build_tiny_llama(models / MODEL)
    build_tiny_llama(models / "tiny-named-templates", chat_template={"default": CHATML, "tool_use": TOOL_USE})
    build_peft_adapter(models / MODEL, models / "adapter")
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "tiny-lora", "base": MODEL, "lora": ["adapter"]},
        {"id": "tiny-lora-zero", "base": MODEL, "lora": [{"path": "adapter", "scale": 0}]},
        {"id": "tiny-4bit", "path": str(models / MODEL), "engine": "transformers", "hf": {"quantization": "4bit"}},
        {"id": "tiny-thinker", "path": str(models / MODEL), "engine": "transformers",
         "chat_template": str(PROJECT_ROOT / "tests" / "fixtures" / "thinking_chatml.jinja")},
        {"id": "gemma-via-transformers", "path": str(PROJECT_ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"),
         "engine": "transformers", "chat_template": "gemma", "settings": {"n_ctx": 512}},
        {"id": "gemma-llama-cpp", "path": str(PROJECT_ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"),
         "settings": {"n_ctx": 512, "parallel": 1}},
    ]}))
    flags = ("--models-dir", str(models), "--model-name", MODEL, "--no-install-embedded-models", "--parallel", "4",
             "--n-ctx", "1024", "--scan-hf-cache", "--hf-cache-dir", str(models / "no-hub"))
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("hf-server")) as server:
        yield server


@pytest.fixture(scope="module")
def client(hf_server) -> openai.OpenAI:
    return hf_server.openai_client()


def greedy(client, max_tokens=12, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=max_tokens, temperature=0, **kwargs)


def test_model_card_names_the_engine(client):
    card = client.models.retrieve(MODEL).model_dump()
    assert card["engine"] == "transformers" and card["status"] == "loaded" and card["source"] == "folder"
    assert card["capabilities"]["tools"] and card["capabilities"]["json_schema"]


def test_whole_response_and_usage(client):
    response = greedy(client)
    choice = response.choices[0]
    assert choice.finish_reason == "length" and choice.message.content
    assert response.usage.completion_tokens == 12 and response.usage.prompt_tokens > 5


def test_stream_reassembles_to_the_whole_response(client):
    whole = greedy(client, 16).choices[0].message.content
    chunks = list(greedy(client, 16, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason == "length"


def test_stop_string_cuts_the_output(client):
    text = greedy(client, 24).choices[0].message.content
    start = next(i for i in range(2, len(text) - 3) if "\ufffd" not in text[i : i + 3] and text[i : i + 3].strip())
    stop = text[start : start + 3]
    response = greedy(client, 24, stop=[stop])
    assert response.choices[0].message.content == text[: text.index(stop)]
    assert response.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible_and_n_gives_distinct_choices(client):
    kwargs = dict(model=MODEL, messages=ASK, max_tokens=12, temperature=1.0, seed=7, n=2)
    first = client.chat.completions.create(**kwargs)
    second = client.chat.completions.create(**kwargs)
    assert [c.message.content for c in first.choices] == [c.message.content for c in second.choices]
    assert len(first.choices) == 2 and first.choices[0].message.content != first.choices[1].message.content
    other = client.chat.completions.create(**{**kwargs, "seed": 8, "n": 1})
    assert other.choices[0].message.content != first.choices[0].message.content


def test_logprobs_and_top_logprobs(client):
    response = greedy(client, 6, logprobs=True, top_logprobs=3)
    entries = response.choices[0].logprobs.content
    assert len(entries) == 6
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[-1].logprob
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob, abs=1e-4)  # greedy: the top token


def test_concurrent_streams_all_complete(client):
    def run(index):
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Question number {index}"}], max_tokens=20 + index,
            temperature=0.5, seed=index, stream=True, stream_options={"include_usage": True},
        )
        chunks = list(stream)
        return chunks[-1].usage.completion_tokens, [c for c in chunks if c.choices][-1].choices[0].finish_reason

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(run, range(6)))
    assert results == [(20 + i, "length") for i in range(6)]


def test_client_disconnect_stops_generation(hf_server, client):
    stream = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=900, stream=True)
    for _, _ in zip(range(3), stream):
        pass
    stream.close()
    deadline = time.monotonic() + 10
    while httpx.get(f"{hf_server.base_url}/").json()["active_sequences"]:
        assert time.monotonic() < deadline, "generation kept running after the client left"
        time.sleep(0.05)
    assert greedy(client, 2).choices[0].finish_reason == "length"


def test_required_tool_call_has_schema_valid_arguments(client):
    response = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=150, temperature=0.7, seed=3, parallel_tool_calls=False,
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}], tool_choice="required",
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_json_schema_output_validates(client):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                               "age": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["name", "age"]}
    response = client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=120, temperature=0.7, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    assert response.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)


def json_answer(client, schema, max_tokens, **kwargs):
    return client.chat.completions.create(
        model=MODEL, messages=ASK, max_tokens=max_tokens, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}, **kwargs)


def test_a_looping_json_answer_is_closed_where_it_repeats(client):
    """Loop breaking, as on the llama.cpp engine: the random model repeats itself inside a string of a list until
    the budget ends it (invalid JSON); the engine closes the string and list where the loop goes on instead."""
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}}},
              "required": ["items"]}
    answer = json_answer(client, schema, 300)
    assert answer.choices[0].finish_reason == "stop" and answer.usage.completion_tokens < 300
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)


@pytest.mark.parametrize("max_tokens", [16, 20, 32])
def test_a_json_answer_cut_by_its_budget_is_still_valid_whole_and_streamed(client, max_tokens):
    """Budget closing, as on the llama.cpp engine: the last tokens of max_tokens close the answer (inside a
    string that takes a quote: a `]` there is one more character), and finish_reason says the budget ended it."""
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    answer = json_answer(client, schema, max_tokens)
    assert answer.choices[0].finish_reason == "length"
    jsonschema.validate(json.loads(answer.choices[0].message.content), schema)
    streamed = list(json_answer(client, schema, max_tokens, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer.choices[0].message.content


def test_a_constrained_string_is_well_formed_utf8_within_its_max_length(client, models):
    """Byte tokens can spell UTF-8 surrogates (ED A0..BF), which xgrammar lets through and which decode to one
    U+FFFD per byte: the bias below makes the model want exactly those; the string stays within maxLength."""
    from transformers import AutoTokenizer

    table = xgrammar.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(models / MODEL)).decoded_vocab
    byte_token = {raw[0]: token for token, raw in enumerate(map(bytes, table)) if len(raw) == 1}
    surrogate_bias = {str(byte_token[0xED]): 30, **{str(byte_token[byte]): 40 for byte in range(0xA0, 0xC0)}}
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 3}}, "required": ["name"]}
    answer = json_answer(client, schema, 60, logit_bias=surrogate_bias, logprobs=True)
    name = json.loads(answer.choices[0].message.content)["name"]
    assert "\ufffd" not in name and len(name) <= 3
    written = b"".join(bytes(entry.bytes) for entry in answer.choices[0].logprobs.content)
    assert b"\xed" in written, "the bias no longer reaches the byte tokens: this test proves nothing"
    written.decode("utf-8")  # strictly well-formed


def test_bitsandbytes_quantization_on_cpu_is_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as failure:
        client.chat.completions.create(model="tiny-4bit", messages=ASK, max_tokens=2)
    assert "CUDA" in failure.value.body["message"] and "bitsandbytes" in failure.value.body["message"]


@pytest.mark.timeout(600)
def test_gemma_gguf_through_transformers_matches_llama_cpp_greedy(client):
    # transformers dequantises the Q4_K_M weights to fp32; the first tokens agree with llama.cpp's kernels.
    def first_tokens(model):
        response = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Write one sentence about the sea."}], max_tokens=8,
            temperature=0, logprobs=True,
        )
        return [entry.token for entry in response.choices[0].logprobs.content]

    assert first_tokens("gemma-via-transformers") == first_tokens("gemma-llama-cpp")


def test_a_tokenizers_tool_use_template_renders_requests_with_tools(hf_server):
    """A tokenizer with named templates (Hermes 2 Pro's, Command R+'s): its `tool_use` one for requests with tools,
    its `default` one for the others."""
    ask = {"model": "tiny-named-templates", "messages": ASK}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    with_tools = httpx.post(f"{hf_server.base_url}/apply-template", json={**ask, "tools": tools}, timeout=120).json()
    without = httpx.post(f"{hf_server.base_url}/apply-template", json=ask, timeout=120).json()
    assert with_tools["prompt"].startswith("TOOL USE: get_weather") and "Tell me about owls." in with_tools["prompt"]
    assert without["prompt"].startswith("<|im_start|>user\nTell me about owls.")


def test_text_completion_and_tokenize_on_the_transformers_engine(hf_server, client):
    response = client.completions.create(model=MODEL, prompt="The owl", max_tokens=5, temperature=0,
                                         logit_bias={"4": -100})  # <|im_end|>: force full length
    assert response.usage.completion_tokens == 5 and response.choices[0].finish_reason == "length"
    tokens = httpx.post(f"{hf_server.base_url}/tokenize", json={"model": MODEL, "content": "owls at night"}).json()
    text = httpx.post(f"{hf_server.base_url}/detokenize", json={"model": MODEL, **tokens}).json()["content"]
    assert text == "owls at night"


def test_responses_api_on_the_transformers_engine(client):
    whole = client.responses.create(model=MODEL, input="Tell me about owls.", max_output_tokens=12, temperature=0)
    assert whole.output_text == greedy(client).choices[0].message.content
    # Seeded like the chat tool test: unseeded, the random model sometimes writes byte tokens that are not UTF-8
    # inside the city, which decode to several U+FFFD and break maxLength (a known gap, see the issue note).
    with client.responses.stream(model=MODEL, input="Tell me about owls.", max_output_tokens=150, temperature=0.7,
                                 tools=[{"type": "function", "name": "get_weather", "parameters": WEATHER}],
                                 tool_choice="required", parallel_tool_calls=False, extra_body={"seed": 3}) as stream:
        final = stream.get_final_response()
    (call,) = final.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER)


def test_a_thinking_template_on_the_transformers_engine(client):
    """The reasoning path on this engine: the template opens a <think> block, the budget closes it, the schema
    grammar applies after it (the random model would never close the block or write JSON on its own)."""
    answer = client.chat.completions.create(
        model="tiny-thinker", messages=ASK, max_tokens=80, temperature=0, extra_body={"reasoning_budget": 6},
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}})
    message = answer.choices[0].message
    jsonschema.validate(json.loads(message.content), WEATHER)
    assert (message.model_extra or {}).get("reasoning_content") and "</think>" not in message.content
    assert answer.usage.completion_tokens_details.reasoning_tokens >= 6


# ---------------------------------------------------------------- PEFT adapters (test-written, random)

def _greedy(client, model: str, content: str = "Tell me about owls.") -> list[tuple[str, float]]:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                            temperature=0, max_tokens=12, logprobs=True, top_logprobs=2)
    return [(entry.token, entry.logprob) for entry in answer.choices[0].logprobs.content]


def _same(first, second) -> bool:
    """Same tokens, logprobs equal but for float rounding (PEFT computes a row's LoRA apart from the others)."""
    return [t for t, _ in first] == [t for t, _ in second] and all(
        abs(a - b) < 1e-4 for (_, a), (_, b) in zip(first, second, strict=True))


def test_a_peft_adapter_changes_the_logits_and_scale_zero_is_the_base(client):
    base = _greedy(client, MODEL)
    assert _same(_greedy(client, "tiny-lora-zero"), base)
    adapted = _greedy(client, "tiny-lora")
    assert abs(adapted[0][1] - base[0][1]) > 1e-3 or adapted[0][0] != base[0][0]


def test_a_peft_adapters_answer_is_the_same_alone_and_in_a_batch_with_base_requests(hf_server, client):
    alone = _greedy(client, "tiny-lora", "Owls and glaciers.")
    base_alone = _greedy(client, MODEL, "Numbers: 1 2 3")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_greedy, client, "tiny-lora", "Owls and glaciers."),
                   pool.submit(_greedy, client, MODEL, "Numbers: 1 2 3"),
                   pool.submit(_greedy, client, MODEL, "The quick brown fox")]
        adapted, base, _ = (future.result() for future in futures)
    assert _same(adapted, alone) and _same(base, base_alone)
    unloaded = httpx.post(f"{hf_server.base_url}/admin/models/unload", json={"model": "tiny-lora"}, timeout=60)
    assert unloaded.json()["unloaded"]
    assert _same(_greedy(client, MODEL, "Numbers: 1 2 3"), base_alone)  # the base unwrapped, still loaded
    assert client.models.retrieve(MODEL).model_extra["status"] == "loaded"
