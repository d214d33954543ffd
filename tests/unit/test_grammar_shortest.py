"""The shortest text a GBNF grammar accepts, the floor a constrained answer's budget is checked against, and the
compact (no optional whitespace) grammar a tight budget gets."""

from __future__ import annotations

import json

import pytest

from backends.base import GenerationRequest, ReasoningControl, SamplingParams
from backends.engine_support import answer_floor, fitted_grammar
from chat.grammar_shortest import shortest_text
from chat.grammars import GrammarSpec, json_schema_grammar
from errors import InvalidRequest

FRUIT = {"type": "object", "properties": {"answer": {"type": "integer"}, "fruit": {"type": "string"}},
         "required": ["answer", "fruit"]}


def test_the_shortest_json_of_a_schema_is_valid_and_compact():
    text = shortest_text(json_schema_grammar(FRUIT).gbnf)
    assert json.loads(text) == {"answer": 0, "fruit": ""} and " " not in text


def test_repetitions_alternatives_and_recursion():
    assert shortest_text('root ::= "ab"{2,3} [x-z]+ ("long" | "s")?') == "ababx"
    assert shortest_text('root ::= x\nx ::= "(" x ")" | "z"') == "z"
    assert shortest_text('root ::= [^"\\\\] "\\x41\\n"') == "aA\n"


@pytest.mark.parametrize("gbnf", ['root ::= "a" (', 'root ::= missing', 'nothing ::= "a"', 'root ::= x\nx ::= "a" x'])
def test_what_cannot_be_told_is_none(gbnf):
    assert shortest_text(gbnf) is None


def _request(grammar: GrammarSpec, reasoning: ReasoningControl | None = None) -> GenerationRequest:
    return GenerationRequest(prompt="hi", sampling=SamplingParams(), max_tokens=None, grammar=grammar,
                             reasoning=reasoning)


def test_a_budget_below_the_floor_is_a_400_naming_it():
    per_character = len  # a tokenizer of one token per character
    grammar = json_schema_grammar(FRUIT)
    shortest = len('{"answer":0,"fruit":""}')
    floor = answer_floor(_request(grammar), 100, per_character)
    assert (floor.shortest, floor.needed) == (shortest, 2 * shortest)
    with pytest.raises(InvalidRequest) as refused:
        answer_floor(_request(grammar), 2 * shortest - 1, per_character)
    assert refused.value.param == "max_tokens" and f"at least {2 * shortest} tokens" in str(refused.value)


def test_a_thinking_model_keeps_room_for_its_markers():
    thinking = ReasoningControl(open="<think>", close="</think>")
    floor = answer_floor(_request(json_schema_grammar(FRUIT), thinking), 200, len)
    assert floor.shortest == len('{"answer":0,"fruit":""}') + len("<think></think>\n\n")


def test_a_tight_budget_gets_the_grammar_without_optional_whitespace():
    grammar = json_schema_grammar(FRUIT)
    tight, floor = fitted_grammar(_request(grammar), 60, len)
    roomy, _ = fitted_grammar(_request(grammar), 4 * floor.needed, len)
    assert 'space ::= ""' in tight.gbnf and roomy is grammar


def test_lazy_and_unreadable_grammars_have_no_floor():
    assert answer_floor(_request(GrammarSpec('root ::= "x"', lazy_triggers=("<call>",))), 1, len) is None
    assert answer_floor(_request(GrammarSpec("root ::= <[42]>")), 1, len) is None
