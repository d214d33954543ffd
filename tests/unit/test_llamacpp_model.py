"""The llama.cpp model wrapper against the real embedded GGUF."""

from __future__ import annotations

import pytest

from backends.embedded_model import ensure_embedded_model
from backends.llamacpp.model import LlamaModel
from settings import PROJECT_ROOT

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="module")
def gemma() -> LlamaModel:
    models_dir = PROJECT_ROOT / "models"
    ensure_embedded_model(models_dir, MODEL_FILE)
    model = LlamaModel(models_dir / MODEL_FILE)
    yield model
    model.free()


def test_special_tokens_among_finds_only_control_tokens(gemma):
    # <start_of_turn> is one control token in gemma's vocabulary (invisible in normal output); <tool_call> is
    # plain text split into several tokens, and plain words are never special.
    (turn,) = gemma.special_tokens_among(("<start_of_turn>", "<tool_call>", "hello"))
    assert gemma.piece(turn) == b"" and gemma.token_text(turn) == b"<start_of_turn>"


def test_flash_attention_auto_is_off_for_wide_heads_on_the_cpu_but_for_many_sequences_and_on_for_embeddings(gemma):
    from backends.llamacpp.model import flash_attention

    assert gemma.offloads_to_gpu is False  # (the CPU build: n_gpu_layers 0)
    assert gemma.attention_head_size == 256  # (gemma 3's key_length)
    assert flash_attention("auto", gemma) is False
    assert (flash_attention("auto", gemma, sequences=4), flash_attention("auto", gemma, sequences=8)) == (False, True)
    assert flash_attention("auto", gemma, embedding=True) is True
    assert (flash_attention("on", gemma), flash_attention("off", gemma, embedding=True)) == (True, False)


def test_a_greedy_chain_picks_what_llama_cpps_bias_and_greedy_samplers_pick(gemma):
    """Greedy sampling, with or without a logit bias, is a numpy argmax over the logits row (no candidate array); it
    must pick exactly what llama.cpp's logit-bias + greedy samplers pick, on every row of a batch (ties: the first
    maximum in both), and leave the row as it was (logprobs are read from it afterwards)."""
    import llama_cpp
    import numpy as np

    from backends.base import SamplingParams
    from backends.llamacpp.model import ContextConfig, LlamaContext, add_to_batch
    from backends.llamacpp.sampling import SamplerChain, _logit_bias_sampler, logits_view

    context = LlamaContext(gemma, ContextConfig(n_ctx=512, n_seq_max=1, n_batch=64, n_ubatch=64, n_threads=2,
                                                n_threads_batch=2, flash_attn=False))
    batch = llama_cpp.llama_batch_init(64, 0, 1)
    greedy = llama_cpp.llama_sampler_init_greedy()
    chain = SamplerChain(gemma, SamplingParams(temperature=0.0), [])
    c_chain = biased = None
    try:
        tokens = gemma.tokenize("The capital of France is Paris. The capital of Italy is Rome. The capital of")
        for position, token in enumerate(tokens):
            add_to_batch(batch, token, position, 0, logits=True)
        assert context.decode(batch) == 0
        picks = [chain.sample(context.ptr, row)[0] for row in range(len(tokens))]
        assert picks == [llama_cpp.llama_sampler_sample(greedy, context.ptr, row) for row in range(len(tokens))]
        assert len(set(picks)) > 5  # (rows with different answers, not one token everywhere)

        # A bias that bans some rows' picks and lifts another token: the picks change, exactly as llama.cpp's do.
        bias = {picks[0]: -100.0, picks[3]: -100.0, 818: 5.0}
        biased = SamplerChain(gemma, SamplingParams(temperature=0.0, logit_bias=bias), [])
        c_chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(c_chain, _logit_bias_sampler(gemma.n_vocab, bias))
        llama_cpp.llama_sampler_chain_add(c_chain, llama_cpp.llama_sampler_init_greedy())
        before = [logits_view(llama_cpp.llama_get_logits_ith(context.ptr, row), gemma.n_vocab).copy()
                  for row in range(len(tokens))]
        biased_picks = [biased.sample(context.ptr, row)[0] for row in range(len(tokens))]
        assert biased.argmax_only
        assert biased_picks == [llama_cpp.llama_sampler_sample(c_chain, context.ptr, row) for row in range(len(tokens))]
        assert biased_picks != picks and picks[0] not in biased_picks
        assert all(np.array_equal(logits_view(llama_cpp.llama_get_logits_ith(context.ptr, row), gemma.n_vocab), kept)
                   for row, kept in enumerate(before))
    finally:
        chain.free()
        if biased is not None:
            biased.free()
        if c_chain is not None:
            llama_cpp.llama_sampler_free(c_chain)
        llama_cpp.llama_sampler_free(greedy)
        llama_cpp.llama_batch_free(batch)
        context.free()


def test_gathering_idle_sequences_moves_their_cells_without_changing_what_they_hold(gemma):
    """Four sequences decoded together (their cells interleaved), one cleared (holes): gathering the other three
    (kv_layout.py) moves each into one run of cells by llama.cpp's state copy. Their next step must then compute
    what it computed before the move: the same positions, the same cached keys and values."""
    import llama_cpp
    import numpy as np

    from backends.llamacpp.kv_layout import KvLayout
    from backends.llamacpp.model import ContextConfig, LlamaContext, add_to_batch
    from backends.llamacpp.sampling import logits_view
    from tests.greedy_agreement import NEAR_TIE

    context = LlamaContext(gemma, ContextConfig(n_ctx=2048, n_seq_max=4, n_batch=64, n_ubatch=64, n_threads=2,
                                                n_threads_batch=2, flash_attn=True, kv_unified=True))
    batch = llama_cpp.llama_batch_init(64, 0, 1)
    prompts = [gemma.tokenize(f"Tell me about {topic}.") for topic in ("owls", "trains", "comets", "violins")]
    try:
        for seq, tokens in enumerate(prompts):
            batch.n_tokens = 0
            for position, token in enumerate(tokens):
                add_to_batch(batch, token, position, seq, logits=False)
            assert context.decode(batch) == 0
        lengths = [len(tokens) for tokens in prompts]
        for step in range(24):  # one token each per step, as a server's decoding sequences: cells interleave
            batch.n_tokens = 0
            for seq in range(4):
                add_to_batch(batch, 236743 + step, lengths[seq] + step, seq, logits=False)
            assert context.decode(batch) == 0
        ends = [length + 24 for length in lengths]

        def next_step() -> list:
            """Each remaining sequence's logits for one more token, then that token taken back out."""
            batch.n_tokens = 0
            rows = [add_to_batch(batch, 818, ends[seq], seq, logits=True) for seq in (1, 2, 3)]
            assert context.decode(batch) == 0
            out = [np.array(logits_view(context.logits(row), gemma.n_vocab)) for row in rows]
            for seq in (1, 2, 3):
                assert context.remove_tokens(seq, ends[seq])
            return out

        context.clear_sequence(0)
        before = next_step()
        gathered = KvLayout(context).gather([1, 2, 3])
        assert (gathered.moved, gathered.lost) == (3, [])
        assert gathered.bytes > 0
        for seq in (1, 2, 3):
            assert llama_cpp.llama_memory_seq_pos_min(context.memory, seq) == 0
            assert llama_cpp.llama_memory_seq_pos_max(context.memory, seq) == ends[seq] - 1
        after = next_step()
        # Only the order the cells are summed in differs (flash attention's f16 sums): the rounding moves logits
        # by up to ~0.5 here, as splitting a prompt over two decodes does (tests/greedy_agreement.py), while
        # another sequence's logits (what a wrong or misplaced state would give) correlate far less.
        for old, new in zip(before, after, strict=True):
            assert np.corrcoef(old, new)[0, 1] > 0.999
            best, runner_up = np.sort(old)[-2:][::-1]
            if best - runner_up > NEAR_TIE:
                assert int(new.argmax()) == int(old.argmax())
        assert np.corrcoef(before[0], before[1])[0, 1] < 0.99
    finally:
        llama_cpp.llama_batch_free(batch)
        context.free()
