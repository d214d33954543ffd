"""What a request asks of tool calling, validated: which tools, which choice mode, how many calls.

Engine-independent: it works on plain dicts (OpenAI's `tools`, `tool_choice`, and the legacy `functions`
/ `function_call`), so every engine shares one behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import jsonschema

from chat.custom_tools import CustomInput, custom_input
from errors import InvalidRequest

ToolMode = Literal["none", "auto", "required", "named"]
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]
    strict: bool = False  # the client asked that every keyword of `parameters` hold (else a 400)
    custom: CustomInput | None = None  # set: a custom tool, its raw input the one string parameter (chat/custom_tools.py)


@dataclass(frozen=True)
class ToolPlan:
    mode: ToolMode
    tools: tuple[ToolSpec, ...] = ()  # the tools the model may call (only the named one for a named choice)
    parallel: bool = True
    legacy: bool = False  # request used `functions`: answer with `function_call`, as OpenAI did
    parallel_by_default: bool = True  # the client left parallel_tool_calls unset (OpenAI's default: true)

    @property
    def active(self) -> bool:
        return self.mode != "none" and bool(self.tools)


NO_TOOLS = ToolPlan(mode="none")


def _tool_spec(function: dict[str, Any], param: str) -> ToolSpec:
    parameters = function.get("parameters") or EMPTY_PARAMETERS
    if not isinstance(parameters.get("$schema", ""), str):  # jsonschema looks it up in a dict: a list would crash it
        raise InvalidRequest(f"Tool '{function['name']}' parameters: '$schema' must be a URI string.", param=param)
    try:
        jsonschema.validators.validator_for(parameters).check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"Invalid JSON schema for tool '{function['name']}': {exc.message}", param=param) from None
    if parameters.get("type", "object") != "object":
        raise InvalidRequest(f"Tool '{function['name']}' parameters must be a JSON object schema.", param=param)
    return ToolSpec(name=function["name"], description=function.get("description") or "", parameters=parameters,
                    strict=function.get("strict") is True)


def _custom_spec(custom: dict[str, Any], param: str) -> ToolSpec:
    given = custom_input(custom.get("format"), f"{param}.format")
    return ToolSpec(name=custom["name"], description=custom.get("description") or "", parameters=given.parameters(),
                    custom=given)


def _definitions(tools: list[dict]) -> list[tuple[dict, str]]:
    """(the definition, where it was sent) of each tool: a function's `function`, a custom tool's `custom`."""
    return [(tool["custom"], f"tools[{index}].custom") if tool.get("type") == "custom"
            else (tool["function"], f"tools[{index}].function") for index, tool in enumerate(tools)]


def _choice_mode(choice: Any, names: list[str], param: str) -> tuple[ToolMode, str | None]:
    if choice is None:
        return "auto", None
    if isinstance(choice, str):
        return choice, None
    named = choice.get("function") or choice.get("custom") or choice  # (a custom tool's: {"custom": {"name"}})
    name = named["name"]
    if name not in names:
        raise InvalidRequest(f"tool_choice names '{name}', which is not among the tools given.", param=param)
    return "named", name


def build_tool_plan(
    tools: list[dict] | None,
    tool_choice: Any,
    parallel_tool_calls: bool | None,
    functions: list[dict] | None = None,
    function_call: Any = None,
) -> ToolPlan:
    """Validate the request's tool fields (modern or legacy) into one plan."""
    if functions and tools:
        raise InvalidRequest("Send either 'tools' or the legacy 'functions', not both.", param="functions")
    if function_call not in (None, "none") and not functions:  # never silently dropped
        raise InvalidRequest("'function_call' needs the legacy 'functions' (with 'tools', use 'tool_choice').",
                             param="function_call")
    legacy = bool(functions)
    sent = [(function, f"functions[{index}].function") for index, function in enumerate(functions)] if legacy \
        else _definitions(tools or [])
    definitions = [definition for definition, _ in sent]
    choice = function_call if legacy else tool_choice
    tools_param, choice_param = ("functions", "function_call") if legacy else ("tools", "tool_choice")
    if not definitions:
        if choice not in (None, "none"):
            raise InvalidRequest(f"'{choice_param}' was given without any tools.", param=choice_param)
        return NO_TOOLS
    names = [d["name"] for d in definitions]
    if len(set(names)) != len(names):
        raise InvalidRequest("Tool names must be unique.", param=tools_param)
    specs = tuple(_custom_spec(d, where) if where.endswith(".custom") else _tool_spec(d, f"{where}.parameters")
                  for d, where in sent)
    mode, named = _choice_mode(choice, names, choice_param)
    if named:
        specs = tuple(s for s in specs if s.name == named)
    # Legacy function calling never returned more than one call.
    parallel = False if legacy or named else parallel_tool_calls is not False
    return ToolPlan(mode=mode, tools=specs, parallel=parallel, legacy=legacy,
                    parallel_by_default=parallel_tool_calls is None)
