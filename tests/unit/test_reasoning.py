"""Reasoning markers, the streaming splitter (any chunking gives the same parts) and grammars after thinking."""

import random

import pytest
from xgrammar.testing import _is_grammar_accept_string as accepts

from chat.grammars import GrammarSpec, json_schema_grammar
from chat.reasoning import (
    MAGISTRAL,
    THINK,
    ReasoningSplitter,
    detect_markers,
    grammar_after_reasoning,
    opens_reasoning,
)

ANSWERS = [
    ("<think>\nLet me see: 2 < 3.\n</think>\n\nIt is 3.", False, "Let me see: 2 < 3.\n", "It is 3."),
    ("  <think>a</think>b", False, "a", "b"),
    ("Plain answer with <think> later</think>.", False, "", "Plain answer with <think> later</think>."),
    ("still thinking</think>\nDone", True, "still thinking", "Done"),
    ("<think>cut off mid-thought <", False, "cut off mid-thought <", ""),  # length inside the block
    ("never closed", True, "never closed", ""),
    ("<thin", False, "", ""),  # only part of an open marker
    ("<thing>", False, "", "<thing>"),
    ("", False, "", ""),
]


def split(text: str, starts_inside: bool, cuts: list[int]) -> tuple[str, str]:
    splitter = ReasoningSplitter(THINK, starts_inside)
    parts = []
    previous = 0
    for cut in [*cuts, len(text)]:
        parts += splitter.feed(text[previous:cut])
        previous = cut
    parts += splitter.finish()
    assert all(piece for _, piece in parts)
    return "".join(p for r, p in parts if r), "".join(p for r, p in parts if not r)


@pytest.mark.parametrize(("text", "starts_inside", "reasoning", "content"), ANSWERS)
def test_any_chunking_gives_the_same_reasoning_and_content(text, starts_inside, reasoning, content):
    generator = random.Random(text)
    assert split(text, starts_inside, []) == (reasoning, content)
    assert split(text, starts_inside, list(range(1, len(text)))) == (reasoning, content)  # one character at a time
    for _ in range(50):
        cuts = sorted(generator.sample(range(1, len(text)), k=min(max(0, len(text) - 1), generator.randint(0, 6))))
        assert split(text, starts_inside, cuts) == (reasoning, content), cuts


def test_markers_come_from_the_template_or_the_vocabulary():
    assert detect_markers("{{ '<think>\\n' }}...{{ content.split('</think>')[-1] }}") == THINK
    assert detect_markers("[THINK]{{ m.thinking }}[/THINK]") == MAGISTRAL
    assert detect_markers("{{ messages }}") is None
    assert detect_markers("{{ messages }}", ("<think>", "</think>")) == THINK


def test_a_generation_prompt_that_opens_the_block_starts_in_reasoning():
    assert opens_reasoning("<|im_start|>assistant\n<think>\n", THINK)
    assert not opens_reasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n", THINK)


SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def test_a_schema_grammar_admits_thinking_first_then_only_the_schema():
    grammar = grammar_after_reasoning(json_schema_grammar(SCHEMA), THINK, starts_inside=False).gbnf
    assert accepts(grammar, '{"a": 1}')
    assert accepts(grammar, '<think>x < y, so {"a": "no"} is wrong</think>\n{"a": 1}')
    assert not accepts(grammar, '<think>x</think>{"a": "no"}')
    assert not accepts(grammar, 'text<think>x</think>{"a": 1}')


def test_an_open_block_must_close_before_the_schema():
    grammar = grammar_after_reasoning(json_schema_grammar(SCHEMA), THINK, starts_inside=True).gbnf
    assert accepts(grammar, 'hmm [x] <b> </thin </think>{"a": 2}')
    assert not accepts(grammar, '{"a": 2}')


def test_a_recursive_root_keeps_referring_to_the_schema_not_the_thinking():
    gbnf = 'root ::= "[" (root)? "]"\nother ::= "root"'
    grammar = grammar_after_reasoning(GrammarSpec(gbnf), MAGISTRAL, starts_inside=False).gbnf
    assert 'answer-root ::= "[" (answer-root)? "]"' in grammar and 'other ::= "root"' in grammar
    assert accepts(grammar, "[THINK]a [b] c[/THINK][[]]")


def test_lazy_triggers_fire_only_after_the_block():
    import re

    lazy = GrammarSpec("root ::= x", (r"[\s\S]*?(<tool_call>)[\s\S]*",))
    [optional] = grammar_after_reasoning(lazy, THINK, starts_inside=False).lazy_triggers
    assert re.fullmatch(optional, 'Sure. <tool_call>{"name"')
    assert re.fullmatch(optional, '<think>plan</think><tool_call>{"name"')
    assert not re.fullmatch(optional, '<think>maybe <tool_call>{"name"')
    [inside] = grammar_after_reasoning(lazy, THINK, starts_inside=True).lazy_triggers
    assert not re.fullmatch(inside, 'maybe <tool_call>{"name"')
    assert re.fullmatch(inside, 'plan</think><tool_call>{"name"').group(1) == "<tool_call>"


def test_gemma_4_and_gpt_oss_thinking_is_found_and_split():
    from chat.reasoning import GEMMA4, HARMONY
    from tests.llama_cpp_sdist import chat_templates

    templates = chat_templates()
    assert detect_markers(templates["google-gemma-4-31B-it"]) == GEMMA4
    assert detect_markers(templates["openai-gpt-oss-120b"]) == HARMONY
    assert detect_markers(templates["microsoft-Phi-3.5-mini-instruct"]) is None  # its <|end|> is not gpt-oss's
    splitter = ReasoningSplitter(GEMMA4)
    parts = splitter.feed("<|channel>thought\nThe user greets.<channel|>Hello!") + splitter.finish()
    assert [(reasoning, text) for reasoning, text in parts if text] == [(True, "The user greets."), (False, "Hello!")]


@pytest.mark.parametrize("starts_inside, text", [
    (True, "Look it up.<|close|>think<|sep|><|open|>response<|sep|>It is sunny.<|close|>response<|sep|>"),
    (False, "It is sunny.<|close|>response<|sep|>"),  # (thinking off: the prompt opened the response channel)
])
def test_kimi_k3s_response_channel_markers_are_never_content(starts_inside, text):
    from chat.reasoning import KIMI_K3
    from tests.llama_cpp_sdist import chat_templates

    assert detect_markers(chat_templates()["Kimi-K3"]) is KIMI_K3
    for cuts in ([], list(range(len(text))), [5, 17, 40, 60]):
        splitter, parts, previous = ReasoningSplitter(KIMI_K3, starts_inside), [], 0
        for cut in [*cuts, len(text)]:
            parts += splitter.feed(text[previous:cut])
            previous = cut
        parts += splitter.finish()
        assert "".join(p for r, p in parts if not r) == "It is sunny."
        assert "".join(p for r, p in parts if r) == ("Look it up." if starts_inside else "")
