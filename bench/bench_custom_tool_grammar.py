"""Cost of a custom tool's grammar in llama.cpp's sampler: one grammar pass over SmolLM2's whole vocabulary (49k
tokens) at a point inside the call's input, against the baseline measured in the same run: a function tool whose one
parameter is a free JSON string (what the grammar constrains instead). Also the first way of writing JSON escapes (one
alternative per escaped character), to show why chat/text_grammar.py groups them after the backslash.

Usage: python -m bench.bench_custom_tool_grammar [--rounds 30]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time
from pathlib import Path

import llama_cpp

from backends.embedded_model import SMOLLM2_FILE, ensure_embedded_model
from chat import text_grammar
from chat.grammars import tool_call_grammar
from chat.tool_formats import HERMES
from chat.tools import build_tool_plan
from tests.custom_tool_grammars import CHAT_CUSTOM_TOOLS

PREFIX = '<tool_call>{"name": "apply_patch", "arguments": {"input": "*** Begin Patch\\n*** Add File: notes.txt\\n+hel'
FREE_STRING_TOOL = {"type": "function", "function": {"name": "apply_patch", "parameters": {
    "type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}}


class Vocabulary:
    def __init__(self, path: Path) -> None:
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.size = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.data = (llama_cpp.llama_token_data * self.size)()

    def tokens(self, text: str) -> list[int]:
        encoded = text.encode()
        buffer = (llama_cpp.llama_token * 4096)()
        count = llama_cpp.llama_tokenize(self.vocab, encoded, len(encoded), buffer, 4096, False, True)
        return list(buffer[:count])

    def _reset(self) -> None:
        for index in range(self.size):
            self.data[index].id, self.data[index].logit, self.data[index].p = index, 0.0, 0.0

    def pass_ms(self, gbnf: str, prefix: str, rounds: int) -> float:
        """Milliseconds per grammar pass over the vocabulary after `prefix` (resetting the logits not counted)."""
        sampler = llama_cpp.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        for token in self.tokens(prefix):
            llama_cpp.llama_sampler_accept(sampler, token)
        spent = 0.0
        for _ in range(rounds):
            self._reset()
            candidates = llama_cpp.llama_token_data_array(data=self.data, size=self.size, selected=-1, sorted=False)
            start = time.perf_counter()
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates))
            spent += time.perf_counter() - start
        llama_cpp.llama_sampler_free(sampler)
        return spent / rounds * 1000


def _one_alternative_per_escape(special) -> str:
    return " | ".join(text_grammar.gbnf_literal(json.dumps(chr(code))[1:-1])
                      for low, high in special for code in range(low, high + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    ensure_embedded_model(Path("models"), SMOLLM2_FILE)  # (placed from its package when missing)
    vocabulary = Vocabulary(Path("models") / SMOLLM2_FILE)
    patch = build_tool_plan(CHAT_CUSTOM_TOOLS, {"type": "custom", "custom": {"name": "apply_patch"}}, None)
    grammars = {"function tool, free string (baseline)":
                tool_call_grammar(build_tool_plan([FREE_STRING_TOOL], "required", None), HERMES, lazy=False).gbnf,
                "custom tool, Lark patch grammar": tool_call_grammar(patch, HERMES, lazy=False).gbnf}
    grouped, text_grammar._json_escapes = text_grammar._json_escapes, _one_alternative_per_escape
    try:
        grammars["custom tool, one alternative per escape"] = tool_call_grammar(patch, HERMES, lazy=False).gbnf
    finally:
        text_grammar._json_escapes = grouped
    baseline = None
    for label, gbnf in grammars.items():
        spent = vocabulary.pass_ms(gbnf, PREFIX, args.rounds)
        baseline = baseline or spent
        print(f"{label:45s} {spent:7.2f} ms per pass   x{spent / baseline:.2f}")


if __name__ == "__main__":
    main()
