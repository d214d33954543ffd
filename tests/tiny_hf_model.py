"""Builds a tiny Llama-architecture Hugging Face checkpoint for tests: a byte-level BPE tokenizer trained here,
a ChatML chat template, and random weights (seeded), saved with `save_pretrained` like any real checkpoint.

Its output is gibberish, but every byte is a token, so grammars can always be satisfied, and greedy output
is deterministic: tests check behaviour (streaming, stops, batching, grammars), not prose.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Owls hunt at night; glaciers move slowly.",
    'Tool calls look like {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}.',
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100. Punctuation: , . ; : ! ? ( ) [ ] { } < > / \\ \" ' - _",
    "Grüße aus Köln – naïve café, 東京 and emoji 🙂 keep the byte fallback honest.",
]


def build_tokenizer(folder: Path, *, vocab_size: int = 512, chat_template: str | dict[str, str] = CHATML,
                    extra_special_tokens: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer trained on CORPUS, saved into `folder` (its chat template with it); returned.
    `extra_special_tokens`: the control tokens a real template writes (`<think>`, `<tool_call>`...), one token each."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + list(extra_special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(CORPUS * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="<|im_end|>", unk_token="<unk>", pad_token="</s>",
        additional_special_tokens=["<|im_start|>", *extra_special_tokens],
    )
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_llama(folder: Path, *, vocab_size: int = 512, seed: int = 0,
                     chat_template: str | dict[str, str] = CHATML) -> Path:
    """`chat_template`: one, or named ones ({"default": ..., "tool_use": ...}), saved as transformers saves them."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(folder, vocab_size=vocab_size, chat_template=chat_template)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(folder)
    return folder


def build_peft_adapter(model_folder: Path, out: Path, *, seed: int = 0, rank: int = 4) -> Path:
    """A random LoRA adapter for the tiny checkpoint, written with PEFT's `save_pretrained` (adapter_config.json +
    adapter_model.safetensors). Non-zero B matrices (`init_lora_weights=False`), so it changes the logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_folder)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj", "up_proj"],
                        init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out
