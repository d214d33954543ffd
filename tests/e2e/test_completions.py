"""Legacy text completions and tokenize/detokenize on the llama.cpp engine (real server, real model)."""

from __future__ import annotations

import httpx
import openai
import pytest

from settings import PROJECT_ROOT
from tests.e2e.conftest import GEMMA_END_TOKENS
from tests.gguf_edit import copy_with_metadata
from tests.server_process import running_server

MODEL = "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="module")
def loose_client(server) -> openai.OpenAI:
    # The SDK's Completion type requires a non-null finish_reason even in stream chunks, which no server (nor
    # OpenAI's own API) sends before the last one: streamed completions are read without strict validation.
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x")


def test_completion_with_logprobs(client):
    response = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0,
                                         logprobs=2, logit_bias=GEMMA_END_TOKENS)
    choice = response.choices[0]
    assert response.object == "text_completion" and choice.finish_reason == "length"
    assert response.usage.completion_tokens == 6
    assert "".join(choice.logprobs.tokens) == choice.text
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    assert choice.logprobs.text_offset[0] == 0


def test_batch_prompts_with_n_and_echo(client):
    response = client.completions.create(model=MODEL, prompt=["One", "Two"], max_tokens=3, n=2, echo=True, seed=3,
                                         logit_bias=GEMMA_END_TOKENS)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert [c.text[:3] for c in response.choices] == ["One", "One", "Two", "Two"]
    assert response.usage.completion_tokens == 12


def test_stream_equals_the_whole_completion(client, loose_client):
    kwargs = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=0, logit_bias=GEMMA_END_TOKENS)
    client.completions.create(**kwargs)  # warm the prefix cache so both runs below share a regime
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(loose_client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens == 8
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_token_array_prompts_and_tokenize_round_trip(client, http):
    tokens = http.post("/tokenize", json={"model": MODEL, "content": "Hello world"}).json()["tokens"]
    assert http.post("/detokenize", json={"model": MODEL, "tokens": tokens}).json()["content"] == "Hello world"
    from_text = client.completions.create(model=MODEL, prompt="Hello world", max_tokens=4, temperature=0)
    from_tokens = client.completions.create(model=MODEL, prompt=tokens, max_tokens=4, temperature=0)
    assert from_tokens.choices[0].text == from_text.choices[0].text


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": "x", "logprobs": 9}, "logprobs"),
    ({"prompt": [], "max_tokens": 2}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
])
def test_unsupported_or_bad_fields_are_400(http, body, param):
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


# gemma has no fill-in-the-middle tokens; a copy whose header names three of its unused tokens as the
# prefix/suffix/middle markers exercises the real infill path (the weights never learnt them: the output is
# not good code, but the prompt layout is what is checked).
FIM_IDS = {"tokenizer.ggml.fim_pre_token_id": 6, "tokenizer.ggml.fim_suf_token_id": 7,
           "tokenizer.ggml.fim_mid_token_id": 8}


@pytest.fixture(scope="module")
def fim_server(tmp_path_factory):
    models = tmp_path_factory.mktemp("fim-models")
    copy_with_metadata(PROJECT_ROOT / "models" / MODEL, models / "gemma-fim.gguf", FIM_IDS)
    flags = ("--models-dir", str(models), "--model-name", "gemma-fim.gguf", "--no-install-embedded-models",
             "--n-ctx", "1024", "--parallel", "1", "--no-prompt-cache")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("fim-server")) as process:
        yield process


def test_suffix_fills_in_the_middle_on_a_model_with_infill_tokens(fim_server):
    client = fim_server.openai_client()
    prefix, suffix = "def add(a, b):\n    ", "\n\nprint(add(1, 2))"

    def tokens(text: str) -> list[int]:
        ids = httpx.post(f"{fim_server.base_url}/tokenize", json={"content": text}).json()["tokens"]
        return ids[1:]  # without the BOS

    layout = [2, 6, *tokens(prefix), 7, *tokens(suffix), 8]  # BOS <pre> prefix <suf> suffix <mid>
    kwargs = dict(model="gemma-fim.gguf", max_tokens=6, temperature=0, logit_bias=GEMMA_END_TOKENS)
    infill = client.completions.create(prompt=prefix, suffix=suffix, echo=True, **kwargs)
    by_tokens = client.completions.create(prompt=layout, **kwargs)
    assert infill.usage.prompt_tokens == len(layout) == by_tokens.usage.prompt_tokens
    assert infill.choices[0].text == prefix + by_tokens.choices[0].text  # echo shows the prompt, not the markers
