from api.openai.chat_output import ChoiceAccumulator, ChunkBuilder, CompletionIdentity, whole_completion
from api.pipeline.choice_output import ChoiceOutput
from backends.base import GenerationFinished, TokenDelta, TokenLogprob, TopLogprob, Usage
from chat.tool_call_parser import ContentText
from chat.tools import NO_TOOLS, build_tool_plan

WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
TOOLS = build_tool_plan([{"type": "function", "function": WEATHER}], "auto", None)
LEGACY = build_tool_plan(None, None, None, functions=[WEATHER])
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
HI = TokenLogprob("Hi", b"Hi", -0.25, (TopLogprob("Hi", b"Hi", -0.25), TopLogprob("Yo", b"Yo", -2.0)))
USAGE = Usage(10, 4)
IDENTITY = CompletionIdentity("test-model", id="chatcmpl-1", created=123)


def accumulate(plan, *texts, reason="stop", usage=USAGE, logprobs=()) -> ChoiceAccumulator:
    choice = ChoiceAccumulator(ChoiceOutput(plan))
    for text in texts:
        choice.add(TokenDelta(text, logprobs))
    choice.add(GenerationFinished(reason, usage))
    return choice


def test_text_deltas_accumulate_into_the_message():
    completion = whole_completion(IDENTITY, [accumulate(NO_TOOLS, "Hel", "", "lo!")], want_logprobs=False)
    assert (completion.id, completion.object, completion.created, completion.model) == (
        "chatcmpl-1", "chat.completion", 123, "test-model")
    choice = completion.choices[0]
    assert choice.message.content == "Hello!" and choice.message.tool_calls is None
    assert choice.finish_reason == "stop" and choice.logprobs is None


def test_length_finish_reason_passes_through():
    completion = whole_completion(IDENTITY, [accumulate(NO_TOOLS, "cut", reason="length")], want_logprobs=False)
    assert completion.choices[0].finish_reason == "length"


def test_tool_call_text_becomes_tool_calls_and_content_before_it_is_kept():
    choice = whole_completion(IDENTITY, [accumulate(TOOLS, "Checking. <tool_", CALL[6:])], False).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking. "
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')


def test_only_whitespace_beside_a_call_gives_null_content():
    assert whole_completion(IDENTITY, [accumulate(TOOLS, "\n", CALL)], False).choices[0].message.content is None


def test_tool_markup_without_tools_is_plain_content():
    choice = whole_completion(IDENTITY, [accumulate(NO_TOOLS, CALL)], False).choices[0]
    assert choice.message.content == CALL and choice.finish_reason == "stop"


def test_legacy_functions_answer_with_function_call():
    choice = whole_completion(IDENTITY, [accumulate(LEGACY, CALL)], False).choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call.name == "get_weather"


def test_a_call_cut_off_by_max_tokens_is_not_returned():
    cut = accumulate(TOOLS, CALL[:60], reason="length")  # '...{"city": "Pa'
    assert [c.complete for c in cut.output.calls] == [False]
    choice = whole_completion(IDENTITY, [cut], False).choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "length"


def test_usage_counts_the_prompt_once_and_sums_completions_over_choices():
    choices = [accumulate(NO_TOOLS, "a", usage=Usage(10, 3, 4)), accumulate(NO_TOOLS, "b", usage=Usage(10, 5, 4))]
    completion = whole_completion(IDENTITY, choices, False)
    assert [c.index for c in completion.choices] == [0, 1]
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (10, 8, 18)
    assert usage.prompt_tokens_details.cached_tokens == 4


def test_logprobs_only_when_asked():
    choice = accumulate(NO_TOOLS, "Hi", "Hi", logprobs=(HI,))
    assert whole_completion(IDENTITY, [choice], want_logprobs=False).choices[0].logprobs is None
    entries = whole_completion(IDENTITY, [choice], want_logprobs=True).choices[0].logprobs.content
    assert len(entries) == 2
    assert (entries[0].token, entries[0].bytes, entries[0].logprob) == ("Hi", [72, 105], -0.25)
    assert [t.token for t in entries[0].top_logprobs] == ["Hi", "Yo"]


def test_chunks_have_the_chat_completion_chunk_shape():
    builder = ChunkBuilder(IDENTITY, include_usage=False, want_logprobs=False)
    role = builder.role(0)
    assert {k: role[k] for k in ("id", "object", "created", "model")} == {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 123, "model": "test-model"}
    assert "usage" not in role
    assert role["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}]
    [text] = builder.events(1, [ContentText("Hi")], (HI,), legacy=False)
    assert text["choices"][0]["delta"] == {"content": "Hi"} and text["choices"][0]["logprobs"] is None
    finish = builder.finish(1, "length")["choices"][0]
    assert (finish["index"], finish["delta"], finish["finish_reason"]) == (1, {}, "length")


def test_include_usage_adds_null_usage_then_a_final_usage_chunk():
    builder = ChunkBuilder(IDENTITY, include_usage=True, want_logprobs=False)
    assert builder.finish(0, "stop")["usage"] is None
    final = builder.usage([Usage(7, 2), Usage(7, 3)])
    assert final["choices"] == []
    assert final["usage"]["prompt_tokens"] == 7 and final["usage"]["total_tokens"] == 12


def test_logprobs_ride_on_the_first_chunk_and_are_not_held_back():
    builder = ChunkBuilder(IDENTITY, include_usage=False, want_logprobs=True)
    first, second = builder.events(0, [ContentText("H"), ContentText("i")], (HI,), legacy=False)
    assert first["choices"][0]["logprobs"]["content"][0]["token"] == "Hi"
    assert second["choices"][0]["logprobs"] is None
    [pending] = builder.events(0, [], (HI,), legacy=False)
    assert pending["choices"][0]["delta"] == {"content": ""} and pending["choices"][0]["logprobs"]
    assert ChunkBuilder(IDENTITY, False, want_logprobs=False).events(0, [], (HI,), legacy=False) == []


def test_streamed_tool_call_chunks():
    builder = ChunkBuilder(IDENTITY, include_usage=False, want_logprobs=False)
    started, arguments = builder.events(0, ChoiceOutput(TOOLS).read(CALL), (), legacy=False)
    [call] = started["choices"][0]["delta"]["tool_calls"]
    assert (call["index"], call["type"], call["function"]) == (0, "function", {"name": "get_weather", "arguments": ""})
    assert call["id"].startswith("call_")
    # Later fragments carry only what OpenAI sends: the index and the new argument text (no null id/type/name).
    assert arguments["choices"][0]["delta"] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}
    legacy = builder.events(0, ChoiceOutput(LEGACY).read(CALL), (), legacy=True)
    assert legacy[0]["choices"][0]["delta"] == {"function_call": {"name": "get_weather", "arguments": ""}}


def test_a_call_cut_off_by_a_stop_string_is_not_a_tool_call():
    cut = accumulate(TOOLS, CALL[:60], reason="stop")  # the engine stopped (a stop string) inside the call
    choice = whole_completion(IDENTITY, [cut], False).choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"


def test_call_markup_inside_reasoning_is_never_a_call():
    from chat.reasoning import THINK, ReasoningSplitter

    choice = ChoiceAccumulator(ChoiceOutput(TOOLS, splitter=ReasoningSplitter(THINK)))
    for text in ["<think>I could write ", CALL[:20], CALL[20:], " here.</think>\n\n", "No call needed."]:
        choice.add(TokenDelta(text))
    choice.add(GenerationFinished("stop", USAGE))
    message = choice.message()
    assert message.tool_calls is None and message.content == "No call needed."
    assert message.reasoning_content == f"I could write {CALL} here."


def test_a_call_after_reasoning_is_a_call():
    from chat.reasoning import THINK, ReasoningSplitter

    choice = ChoiceAccumulator(ChoiceOutput(TOOLS, splitter=ReasoningSplitter(THINK, starts_inside=True)))
    for text in ["Paris it is.</th", "ink>\n", CALL]:
        choice.add(TokenDelta(text))
    choice.add(GenerationFinished("stop", USAGE))
    message = choice.message()
    assert message.reasoning_content == "Paris it is." and message.tool_calls[0].function.name == "get_weather"


def test_whole_calls_are_tool_calls_even_where_the_budget_ended_the_answer():
    """Budget closing closes the last call at max_tokens: the engine says length, the calls are whole, and clients
    look for `tool_calls` to run them. A call cut off stays `length` (and is not returned)."""
    whole = ChoiceOutput(TOOLS)
    whole.read('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')
    assert whole.finish_reason("length") == "tool_calls" and whole.finish_reason("stop") == "tool_calls"
    cut = ChoiceOutput(TOOLS)
    cut.read('<tool_call>{"name": "get_weather", "arguments": {"city": "Pa')
    assert cut.finish_reason("length") == "length"
    assert ChoiceOutput(TOOLS).finish_reason("length") == "length"


def test_gpt_oss_channels_become_reasoning_content_and_calls():
    """Harmony (gpt-oss): the analysis channel is reasoning, the final channel's header is not content, a call
    addressed to=functions.NAME is a tool call; read the same in any chunking."""
    from chat.reasoning import HARMONY as HARMONY_CHANNELS
    from chat.reasoning import ReasoningSplitter, ReasoningText
    from chat.tool_formats import HARMONY

    answer = ("<|channel|>analysis<|message|>The user greets.<|end|><|start|>assistant<|channel|>final<|message|>"
              "Hello!<|return|>")
    call = ('<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant to=functions.get_weather'
            '<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>')
    for text, content, reasoning in ((answer, "Hello!", "The user greets."), (call, "", "Need weather.")):
        for size in (1, 3, len(text)):
            output = ChoiceOutput(TOOLS, HARMONY, ReasoningSplitter(HARMONY_CHANNELS))
            events = [e for start in range(0, len(text), size) for e in output.read(text[start:start + size])]
            events += output.finish()
            assert "".join(e.text for e in events if isinstance(e, ContentText)) == content
            assert "".join(e.text for e in events if isinstance(e, ReasoningText)) == reasoning
    assert [(c.name, c.arguments, c.complete) for c in output.calls] == [("get_weather", '{"city": "Paris"}', True)]
    assert output.finish_reason("stop") == "tool_calls"
