import pytest

from chat.tools import EMPTY_PARAMETERS, NO_TOOLS, ToolSpec, build_tool_plan
from errors import InvalidRequest

WEATHER = {"name": "weather", "description": "Weather now", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CLOCK = {"name": "clock"}


def _tools(*functions: dict) -> list[dict]:
    return [{"type": "function", "function": f} for f in functions]


def test_no_tools_and_no_choice_is_the_inactive_plan():
    plan = build_tool_plan(None, None, None)
    assert plan is NO_TOOLS
    assert not plan.active


def test_choice_none_without_tools_is_accepted():
    assert build_tool_plan([], "none", None) is NO_TOOLS


@pytest.mark.parametrize("choice", ["auto", "required", {"type": "function", "function": {"name": "x"}}])
def test_a_choice_without_tools_is_refused(choice):
    with pytest.raises(InvalidRequest) as info:
        build_tool_plan(None, choice, None)
    assert info.value.param == "tool_choice"


def test_missing_choice_defaults_to_auto_with_all_tools_and_parallel():
    plan = build_tool_plan(_tools(WEATHER, CLOCK), None, None)
    assert plan.mode == "auto"
    assert [t.name for t in plan.tools] == ["weather", "clock"]
    assert plan.parallel and plan.active and not plan.legacy


def test_tool_without_parameters_gets_empty_object_schema_and_empty_description():
    plan = build_tool_plan(_tools(CLOCK), "auto", None)
    assert plan.tools == (ToolSpec(name="clock", description="", parameters=EMPTY_PARAMETERS),)


def test_choice_none_keeps_tools_but_is_not_active():
    plan = build_tool_plan(_tools(WEATHER), "none", None)
    assert plan.mode == "none"
    assert len(plan.tools) == 1
    assert not plan.active


def test_required_mode_and_parallel_false_is_respected():
    plan = build_tool_plan(_tools(WEATHER, CLOCK), "required", False)
    assert plan.mode == "required"
    assert plan.parallel is False
    assert len(plan.tools) == 2


def test_named_choice_keeps_only_that_tool_and_disables_parallel():
    plan = build_tool_plan(_tools(WEATHER, CLOCK), {"type": "function", "function": {"name": "clock"}}, True)
    assert plan.mode == "named"
    assert [t.name for t in plan.tools] == ["clock"]
    assert plan.parallel is False


def test_unknown_named_tool_is_refused():
    with pytest.raises(InvalidRequest) as info:
        build_tool_plan(_tools(WEATHER), {"type": "function", "function": {"name": "ghost"}}, None)
    assert info.value.param == "tool_choice"
    assert "ghost" in info.value.message


def test_duplicate_tool_names_are_refused():
    with pytest.raises(InvalidRequest) as info:
        build_tool_plan(_tools(WEATHER, WEATHER), "auto", None)
    assert info.value.param == "tools"


def test_invalid_json_schema_is_refused_naming_the_tool_index():
    bad = {"name": "bad", "parameters": {"type": "object", "properties": {"x": {"type": "no-such-type"}}}}
    with pytest.raises(InvalidRequest) as info:
        build_tool_plan(_tools(CLOCK, bad), "auto", None)
    assert info.value.param == "tools[1].function.parameters"
    assert "bad" in info.value.message


def test_non_object_parameters_schema_is_refused():
    with pytest.raises(InvalidRequest) as info:
        build_tool_plan(_tools({"name": "s", "parameters": {"type": "string"}}), "auto", None)
    assert info.value.param == "tools[0].function.parameters"


def test_schema_without_type_is_accepted_as_object():
    params = {"properties": {"n": {"type": "integer"}}}
    plan = build_tool_plan(_tools({"name": "n", "parameters": params}), None, None)
    assert plan.tools[0].parameters == params


def test_tools_and_legacy_functions_together_are_refused():
    with pytest.raises(InvalidRequest) as info:
        build_tool_plan(_tools(WEATHER), None, None, functions=[CLOCK])
    assert info.value.param == "functions"


def test_legacy_functions_are_legacy_and_never_parallel():
    plan = build_tool_plan(None, None, True, functions=[WEATHER, CLOCK], function_call="auto")
    assert plan.legacy and plan.mode == "auto"
    assert plan.parallel is False
    assert len(plan.tools) == 2


def test_legacy_named_function_call_uses_name_directly():
    plan = build_tool_plan(None, None, None, functions=[WEATHER, CLOCK], function_call={"name": "weather"})
    assert plan.mode == "named"
    assert [t.name for t in plan.tools] == ["weather"]


def test_legacy_errors_name_legacy_params():
    with pytest.raises(InvalidRequest) as info:
        build_tool_plan(None, None, None, functions=[WEATHER], function_call={"name": "ghost"})
    assert info.value.param == "function_call"
    with pytest.raises(InvalidRequest) as info:
        build_tool_plan(None, None, None, functions=[{"name": "s", "parameters": {"type": "array"}}])
    assert info.value.param == "functions[0].function.parameters"


def test_legacy_function_call_none_keeps_functions_inactive():
    plan = build_tool_plan(None, None, None, functions=[WEATHER], function_call="none")
    assert plan.legacy and plan.mode == "none"
    assert not plan.active


def test_legacy_function_call_without_functions_is_refused_not_dropped():
    with pytest.raises(InvalidRequest) as info:
        build_tool_plan([{"type": "function", "function": WEATHER}], None, None, function_call="auto")
    assert info.value.param == "function_call"
