"""Loop detection inside constrained JSON: the watch fires at an element boundary of the container that loops,
not inside an element, not for short legitimate repetition, and it lets go once that container is closed."""

from backends.json_loops import MIN_LOOP_TOKENS, STUCK_TOKENS, JsonDepth, LoopWatch


def _feed(watch: LoopWatch, pieces: list[str]) -> None:
    """Tokens are their text here: identical pieces get identical ids, as a tokenizer would give them."""
    for piece in pieces:
        watch.observe(hash(piece) & 0xFFFF, piece.encode())


def test_depth_counts_brackets_outside_strings_only():
    depth = JsonDepth()
    assert depth.feed(b'{"a": ["x]}, \\"{", 1], ') == [2, 1]
    assert depth.depth == 1 and not depth.in_string


def test_a_repeated_array_element_is_closed_at_the_next_separator():
    watch = LoopWatch()
    _feed(watch, ['{"', "tags", '":', " [", '"', "Eco"])
    repeats = 0
    while watch.loop_depth is None:
        assert not watch.should_close(b'",')
        _feed(watch, ['",', ' "', "Eco"])
        repeats += 1
    assert repeats == 4
    assert watch.loop_depth == 2  # the array, not the object around it
    assert watch.should_close(b'",')  # the comma would start one more "Eco"
    assert not watch.should_close(b"Fr")  # never inside an element


def test_a_repeated_object_in_an_array_is_closed_between_objects_not_between_its_keys():
    watch = LoopWatch()
    member = [' {"', "name", '":', ' "', "Sy", '",', ' "', "role", '":', ' "', "Sy", '"}', ","]
    _feed(watch, ['{"', "members", '":', " ["] + member * 2)
    assert watch.loop_depth == 2
    _feed(watch, member[:5])
    assert not watch.should_close(b'",')  # the comma between name and role is inside the element
    _feed(watch, member[5:12])
    assert watch.should_close(b",")


def test_short_legitimate_repetition_is_not_a_loop():
    watch = LoopWatch()
    _feed(watch, ["[", "0"] + [",", " 0"] * ((MIN_LOOP_TOKENS - 1) // 2 - 1))
    assert watch.loop_depth is None
    assert not watch.should_close(b",")


def test_a_loop_without_boundaries_closes_after_a_while():
    watch = LoopWatch()
    _feed(watch, ['{"', "name", '":', ' "'] + ["ra"] * MIN_LOOP_TOKENS)
    assert watch.loop_depth == 1 and not watch.should_close(b"ra")
    _feed(watch, ["ra"] * STUCK_TOKENS)
    assert watch.should_close(b"ra")


def test_the_watch_lets_go_once_the_looping_container_closes():
    watch = LoopWatch()
    _feed(watch, ['{"', "a", '":', " ["] + ['"x', '",', " "] * 6)
    assert watch.loop_depth == 2
    _feed(watch, ['"x', '"]', ","])
    assert watch.loop_depth is None
    assert not watch.should_close(b' "')


def test_the_same_tool_call_twice_ends_the_answer_before_a_third():
    watch = LoopWatch()
    call = ["<tool_call>", '{"', "name", '":', ' "', "search", '",', ' "', "arguments", '":', " {", '"q', '":', " 8",
            "}}", "</tool_call>", "\n"]
    _feed(watch, call)
    assert watch.loop_depth is None  # one call is no loop
    _feed(watch, call)
    assert watch.loop_depth == 0
    assert not watch.should_close(b'{"')  # a third call
    assert watch.should_close(b"<tool_call>")  # between calls: closing tokens (the end of the answer) first
