"""`continue_final_message` (api/pipeline/prepare.py::continued_prompt): the rendered conversation is cut right
after the final assistant text, whatever the template did to the whitespace around it."""

from __future__ import annotations

import pytest

from api.pipeline.prepare import continued_prompt
from errors import InvalidRequest


def test_the_prompt_ends_right_after_the_final_text():
    rendered = "<|user|>Hi<|end|><|assistant|>Hello, I am<|end|>\n"
    assert continued_prompt(rendered, "Hello, I am") == "<|user|>Hi<|end|><|assistant|>Hello, I am"


def test_trailing_whitespace_is_kept_only_where_the_template_kept_it():
    assert continued_prompt("<a>Once upon <|end|>", "Once upon ") == "<a>Once upon "
    assert continued_prompt("<a>Once upon<|end|>", "Once upon ") == "<a>Once upon"  # (the template trimmed it)
    assert continued_prompt("<a>Once upon<|end|>", "  Once upon") == "<a>Once upon"


def test_the_last_occurrence_is_the_final_message():
    assert continued_prompt("<u>yes<e><a>yes<e>", "yes") == "<u>yes<e><a>yes"


def test_a_template_that_rewrites_the_message_is_a_400():
    with pytest.raises(InvalidRequest) as caught:
        continued_prompt("<a>ONCE UPON<e>", "Once upon")
    assert caught.value.param == "continue_final_message"
