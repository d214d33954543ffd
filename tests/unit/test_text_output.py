from backends.text_output import IncrementalDetokenizer, StopStringFilter


def test_detokenizer_never_splits_a_utf8_character():
    detok = IncrementalDetokenizer()
    snowman = "☃".encode()  # three bytes, as a byte-fallback tokenizer may emit them
    assert detok.push(snowman[:1]) == ""
    assert detok.push(snowman[1:2]) == ""
    assert detok.push(snowman[2:] + b"!") == "☃!"
    assert detok.flush() == ""


def test_detokenizer_flushes_an_incomplete_tail_as_replacement():
    detok = IncrementalDetokenizer()
    assert detok.push("é".encode()[:1]) == ""
    assert detok.flush() == "\ufffd"


def feed(filter_: StopStringFilter, pieces: list[str]) -> str:
    out = "".join(filter_.push(p) for p in pieces)
    return out + filter_.flush()


def test_stop_string_split_across_pieces_is_never_emitted():
    stop = StopStringFilter(("END",))
    emitted = [stop.push(p) for p in ["hello E", "N", "D and more"]]
    assert emitted == ["hello ", "", ""]
    assert stop.stopped


def test_partial_match_that_fails_is_released():
    stop = StopStringFilter(("END",))
    assert stop.push("the EN") == "the "
    assert stop.push("d") == "ENd"
    assert not stop.stopped


def test_earliest_of_several_stop_strings_wins():
    assert feed(StopStringFilter(("xyz", "b")), ["aaa b xyz"]) == "aaa "


def test_held_text_is_released_at_the_end():
    assert feed(StopStringFilter(("STOP",)), ["go ST"]) == "go ST"


def test_no_stop_strings_passes_everything():
    assert feed(StopStringFilter(()), ["a", "b"]) == "ab"
    assert feed(StopStringFilter(("",)), ["a", "b"]) == "ab"
