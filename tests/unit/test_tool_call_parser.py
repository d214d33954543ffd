"""Property-based tests for the tool-call detector: any text, any chunking, same answer as the whole text."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from chat.tool_call_parser import CallArguments, CallStarted, ContentText, ToolCallStreamParser, parse_tool_calls

plain_text = st.text(max_size=60).filter(lambda t: "<tool_call>" not in t and t.strip() == t and t)
names = st.from_regex(r"[a-z_]{1,12}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
arguments = st.dictionaries(st.text(max_size=6), json_values, max_size=4)


def stream(text: str, cuts: list[int]):
    parser = ToolCallStreamParser()
    events, previous = [], 0
    for cut in sorted(set(c % (len(text) + 1) for c in cuts)) + [len(text)]:
        events += parser.feed(text[previous:cut])
        previous = cut
    return events + parser.finish(), parser.calls


@given(st.text(max_size=200), st.lists(st.integers(min_value=0), max_size=12))
def test_any_text_streams_like_the_whole(text, cuts):
    whole_content, whole_calls = parse_tool_calls(text)
    events, calls = stream(text, cuts)
    assert "".join(e.text for e in events if isinstance(e, ContentText)) == whole_content
    assert [(c.name, c.arguments, c.complete) for c in calls] == [(c.name, c.arguments, c.complete) for c in whole_calls]


@given(plain_text)
def test_text_without_calls_is_all_content(text):
    assert parse_tool_calls(text) == (text, [])


@settings(max_examples=60)
@given(plain_text, st.lists(st.tuples(names, arguments), min_size=1, max_size=3), st.lists(st.integers(0), max_size=20))
def test_calls_are_recovered_in_order_with_exact_arguments(prefix, calls, cuts):
    text = prefix + " " + "\n".join(
        f'<tool_call>{{"name": "{name}", "arguments": {json.dumps(args)}}}</tool_call>' for name, args in calls
    )
    events, parsed = stream(text, cuts)
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == [(n, a) for n, a in calls]
    assert all(c.complete for c in parsed)
    content = "".join(e.text for e in events if isinstance(e, ContentText))
    assert "<tool_call>" not in content and content.strip() == prefix
    for index, call in enumerate(parsed):
        started = [e for e in events if isinstance(e, CallStarted) and e.index == index]
        fragments = [e.fragment for e in events if isinstance(e, CallArguments) and e.index == index]
        assert len(started) == 1 and started[0].id == call.id
        assert "".join(fragments) == call.arguments
