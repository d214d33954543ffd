"""Thinking models: which markers open and close their reasoning, splitting it from the answer, and letting a
grammar constrain only what follows it.

Detected families (from the chat template, else from single tokens in the vocabulary):
- `<think>` ... `</think>`: Qwen3, QwQ, DeepSeek-R1 and its distills, SmolLM3, Phi-4-reasoning, GLM, most others;
- `[THINK]` ... `[/THINK]`: Mistral's Magistral;
- `<|channel>thought` ... `<channel|>`: Gemma 4 (thinking off, its prompt writes the empty block itself);
- `<|open|>think<|sep|>` ... `<|close|>think<|sep|>`: Kimi K3 (its answer's response channel markers are dropped);
- `<|channel|>analysis<|message|>` ... `<|end|>`: gpt-oss's analysis channel (harmony; its final channel's header
  and its calls are read by the tool-call parser: chat/tool_formats.py HARMONY).
Templates whose generation prompt already opens the block (DeepSeek-R1 style `<think>\\n`) start the answer in
reasoning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from chat.gbnf_text import literal, step_without
from chat.grammars import GrammarSpec


@dataclass(frozen=True)
class ReasoningMarkers:
    open: str
    close: str
    answer_markup: tuple[str, ...] = ()  # markers around the answer, never content (Kimi K3's response channel)


@dataclass(frozen=True)
class ReasoningText:
    """A piece of the answer's reasoning (a parse event beside the tool-call parser's)."""

    text: str


THINK = ReasoningMarkers("<think>", "</think>")
MAGISTRAL = ReasoningMarkers("[THINK]", "[/THINK]")
HARMONY = ReasoningMarkers("<|channel|>analysis<|message|>", "<|end|>")  # gpt-oss: the analysis channel
GEMMA4 = ReasoningMarkers("<|channel>thought", "<channel|>")  # Gemma 4's thought channel
KIMI_K3 = ReasoningMarkers("<|open|>think<|sep|>", "<|close|>think<|sep|>",
                           answer_markup=("<|open|>response<|sep|>", "<|close|>response<|sep|>"))
KNOWN_MARKERS = (THINK, MAGISTRAL, GEMMA4, KIMI_K3)
# Templates that build their markers in a macro rather than write them out, recognised by how they build them
_BUILT_MARKERS = ((("open_tag('think')", "'<|close|>' + tag"), KIMI_K3),)


def detect_markers(template_source: str, vocabulary_markers: tuple[str, ...] = ()) -> ReasoningMarkers | None:
    """The markers a model's template writes (or reads back from history), else ones its vocabulary holds as
    single tokens (`vocabulary_markers`: those of the known markers the engine found there)."""
    if HARMONY.open in template_source:  # (its close, `<|end|>`, also ends every Phi-3 turn: the open decides)
        return HARMONY
    for markers in KNOWN_MARKERS:
        if markers.close in template_source:
            return markers
    for evidence, markers in _BUILT_MARKERS:
        if all(piece in template_source for piece in evidence):
            return markers
    for markers in KNOWN_MARKERS:
        if markers.open in vocabulary_markers and markers.close in vocabulary_markers:
            return markers
    return None


def opens_reasoning(prompt: str, markers: ReasoningMarkers) -> bool:
    """Whether the rendered prompt ends inside an open reasoning block (the template opened it)."""
    tail = prompt.rstrip()
    return tail.endswith(markers.open)


class ReasoningSplitter:
    """Splits generated text into (is_reasoning, text) parts, chunk by chunk, whatever the chunking: markers split
    across chunks are held back until they are whole, and marker text never appears in either part.

    The block counts only at the start of the answer (leading whitespace aside), as the models write it; the
    same marker later in the answer is plain content. Whitespace right after either marker is dropped."""

    def __init__(self, markers: ReasoningMarkers, starts_inside: bool = False) -> None:
        self.markers = markers
        self.inside = starts_inside
        self.decided = starts_inside  # whether the start of the answer was read (opened a block or not)
        self.finished_block = False
        self.held = ""
        self.strip_next = starts_inside  # drop whitespace that follows a marker

    def feed(self, text: str) -> list[tuple[bool, str]]:
        self.held += text
        parts: list[tuple[bool, str]] = []
        while True:
            progressed = self._advance(parts)
            if not progressed:
                return [(kind, piece) for kind, piece in parts if piece]

    def finish(self) -> list[tuple[bool, str]]:
        """Whatever is still held: an unclosed block at the end (length) stays reasoning."""
        held, self.held = self.held, ""
        if not self.decided and self.markers.open.startswith(held.lstrip()) and held.strip():
            return []  # the answer was only part of an open marker
        if self.strip_next:
            held = held.lstrip()
        return [(self.inside, held)] if held else []

    def _advance(self, parts: list[tuple[bool, str]]) -> bool:
        if self.strip_next:
            stripped = self.held.lstrip()
            if not stripped:
                self.held = ""
                return False
            self.held, self.strip_next = stripped, False
        if not self.decided:
            return self._read_start()
        if not self.inside:
            self._read_answer(parts)
            return False
        return self._read_reasoning(parts)

    def _read_answer(self, parts: list[tuple[bool, str]]) -> None:
        """The answer, without the markers around it that are never content (a marker's start is held back)."""
        text = self.held
        for marker in self.markers.answer_markup:
            text = text.replace(marker, "")
        keep = max((_partial_suffix(text, marker) for marker in self.markers.answer_markup), default=0)
        parts.append((False, text[: len(text) - keep]))
        self.held = text[len(text) - keep:]

    def _read_start(self) -> bool:
        start = self.held.lstrip()
        if start.startswith(self.markers.open):
            self.held = start[len(self.markers.open):]
            self.decided = self.inside = self.strip_next = True
            return True
        if start and not self.markers.open.startswith(start):
            self.decided = True  # no block: everything is the answer
            return True
        return False  # only whitespace or part of the open marker so far: wait

    def _read_reasoning(self, parts: list[tuple[bool, str]]) -> bool:
        close = self.markers.close
        at = self.held.find(close)
        if at >= 0:
            parts.append((True, self.held[:at]))
            self.held = self.held[at + len(close):]
            self.inside, self.finished_block, self.strip_next = False, True, True
            return True
        keep = _partial_suffix(self.held, close)
        parts.append((True, self.held[: len(self.held) - keep]))
        self.held = self.held[len(self.held) - keep:]
        return False


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker` (held back: it may complete)."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0


# ---------------------------------------------------------------- grammars after thinking

_BARE_ROOT = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|(?<![\w-])root(?![\w-])')


def _rename_root(gbnf: str, name: str) -> str:
    """Rename rule `root` and every reference to it, leaving string literals and character classes alone."""
    return _BARE_ROOT.sub(lambda match: name if match.group(0) == "root" else match.group(0), gbnf)


def grammar_after_reasoning(grammar: GrammarSpec, markers: ReasoningMarkers, starts_inside: bool) -> GrammarSpec:
    """The same constraint, applied only after a reasoning block: the block (already open, or optional at the
    start) admits any text up to its close marker, then the original grammar follows. A lazy grammar's triggers
    only fire after the block, so call markup inside reasoning never starts a call."""
    if grammar.lazy_triggers:
        close = re.escape(markers.close)
        if starts_inside:
            before = rf"[\s\S]*?{close}"
        else:
            before = rf"(?:\s*{re.escape(markers.open)}[\s\S]*?{close}|(?!\s*{re.escape(markers.open)}))"
        return GrammarSpec(grammar.gbnf, tuple(before + trigger for trigger in grammar.lazy_triggers), grammar.end_bonus)
    think = "reasoning-rest" if starts_inside else f"({literal(markers.open)} reasoning-rest)?"
    rules = [
        f"root ::= {think} answer-root",
        f"reasoning-rest ::= reasoning-step* {literal(markers.close)} [ \\t\\n]{{0,4}}",
        f"reasoning-step ::= {step_without(markers.close)}",
    ]
    return replace(grammar, gbnf="\n".join(rules) + "\n" + _rename_root(grammar.gbnf, "answer-root"))
