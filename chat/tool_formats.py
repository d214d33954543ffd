"""The textual shapes in which models write tool calls, and which one a given chat template teaches.

Every format is a sequence of calls wrapped in literal markers, each call either one JSON object
`{"name": ..., "<arguments key>": {...}}` or (`name_close` set) the name as plain text between two markers, then
the arguments' JSON object. So one parser, one grammar builder and one history writer serve them all:

- hermes  `<tool_call>{"name": ..., "arguments": ...}</tool_call>` per call (Qwen 2.5/3, Hermes, Granite 4,
  our default tool prompt);
- mistral `[TOOL_CALLS][{"name": ..., "arguments": ...}, ...]` (Mistral 7B v0.3, Nemo, Mixtral templates);
- mistral-v7 `[TOOL_CALLS]name[ARGS]{...}` per call (Mistral Small 3.2, Devstral, Ministral 3, Magistral);
- deepseek-v3 `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>name<｜tool▁sep｜>{...}<｜tool▁call▁end｜>...` (V3.1);
- deepseek-r1 the same with `function<｜tool▁sep｜>name` and the arguments in a ```json fence (R1 distills);
- functionary-v3.1 `<function=name>{...}</function>`; functionary-v3.2 `>>>name\n{...}`, a recipient format: the
  prompt ends with `>>>`, the answer starts with its recipient, `all` for text;
- apriel `<tool_calls>[{...}, ...]</tool_calls>`; nemotron `<TOOLCALL>[{...}, ...]</TOOLCALL>` (Nemotron Nano 2);
  minimax-m1 `<tool_calls>` then one object per line, `</tool_calls>`;
- llama3  `{"name": ..., "parameters": ...}` as the whole answer, optionally after `<|python_tag|>` (Llama 3.1+);
- generic `{"name": ..., "arguments": ...}` as the whole answer (templates that take `tools` but name no format).
- qwen-xml `<tool_call>\n<function=name>\n<parameter=key>\nvalue\n</parameter>\n</function>\n</tool_call>`
  (Qwen3-Coder, Qwen 3.5, Nemotron 3, StepFun 3.5) and seed-xml (Seed-OSS): arguments as XML-like parameters
  (chat/xml_arguments.py).
- glm `<tool_call>name\n<arg_key>key</arg_key>\n<arg_value>value</arg_value>\n</tool_call>` (GLM 4.5/4.6, Laguna,
  Ling 3) and glm-4.7 the same without line breaks (GLM 4.7, Spark 2.5): XML-like parameters too.
- minimax-m2 `<minimax:tool_call>\n<invoke name="name">\n<parameter name="key">value</parameter>\n</invoke>\n
  </minimax:tool_call>` and minicpm `<function name="name"><param name="key">value</param></function>` (MiniCPM 5):
  XML-like parameters too;
- kimi-k2 `<|tool_calls_section_begin|><|tool_call_begin|>functions.name:0<|tool_call_argument_begin|>{...}
  <|tool_call_end|>...<|tool_calls_section_end|>` (the `:0` is the call's index in the turn).
- dsml-function_calls (DeepSeek V3.2) and dsml-tool_calls (V4): `<｜DSML｜function_calls>\n<｜DSML｜invoke name="name">
  \n<｜DSML｜parameter name="key" string="true">value</｜DSML｜parameter>\n</｜DSML｜invoke>...`, `string="false"` for a
  value that is not text.
- cohere `<|START_ACTION|>[{"tool_call_id": "0", "tool_name": ..., "parameters": {...}}]<|END_ACTION|>` (Command R7B,
  Command A) and cohere-r-plus (`Action:` and the same list, without ids, in a ```json fence);
- pythonic `<|tool_call_start|>[get_weather(city='Paris'), get_time()]<|tool_call_end|>` (LFM 2.5: Python calls
  with keyword literals; chat/python_arguments.py);
- apertus `<|tools_prefix|>[{"name": {...}}, ...]<|tools_suffix|>` (the name as the key of its arguments);
- solar `<|tool_calls|><|tool_call:begin|>ID<|tool_call:name|>name<|tool_call:args|>{...}<|tool_call:end|>...<|calls|>`
  (Solar Open: the model writes a call id before the name);
- gigachat `<|function_call|>{"name": ..., "arguments": {...}}` (GigaChat 3.1);
- gemma4 `<|tool_call>call:name{key:<|"|>text<|"|>,other:3}<tool_call|>` (Gemma 4: keys bare and sorted, text between
  `<|"|>` markers; chat/gemma_arguments.py).
- hy3 (Hunyuan 3) glm's tags with a `:opensource` suffix and `<tool_sep:opensource>` after the name; kimi-k3
  `<|open|>call tool="name" index="1"<|sep|><|open|>argument key="k" type="string"<|sep|>v<|close|>argument<|sep|>...`
  (each value's JSON type named before it); muse's ATEM `<atem:invoke name="...">` after a ` to=name<|message|>`
  header that is never content; minimax-m3 `]<]minimax[>[<key>value]<]minimax[>[</key>`, nested values as nested
  tags (chat/element_arguments.py); gigachat-3 `<|message_sep|>\n\nfunction call<|role_sep|>\n{...}` (GigaChat 3
  10B: a call is a message of its own).
- harmony (gpt-oss): after the `<|start|>assistant` header the prompt ends with, ` to=functions.name<|channel|>
  commentary json<|message|>{...}<|call|>`; its final channel's header is never content (the analysis channel is
  its reasoning: chat/reasoning.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from chat.element_arguments import elements_text
from chat.gemma_arguments import QUOTE, gemma_text
from chat.python_arguments import arguments_text
from chat.xml_arguments import TYPE, XmlParameters, json_type

_CONTROL_LOOKING = re.compile(r"<[|｜][^<>]*?[|｜]>|\[[A-Z_]+\]")


@dataclass(frozen=True)
class ToolCallFormat:
    name: str
    section_open: str = ""  # opens the block of calls, anywhere in the output ("" = no such marker)
    call_open: str = ""  # before each call
    call_close: str = ""  # after each call
    list_open: str = ""  # after the section marker, before the first call
    separator: str = "\n"  # between calls
    section_close: str = ""  # closes the block of calls
    arguments_key: str = "arguments"
    name_key: str = "name"  # (JSON calls) the key of the tool's name
    id_key: str = ""  # (JSON calls) set: the key of a call id the model writes first (Cohere's `tool_call_id`)
    name_as_key: bool = False  # (JSON calls) `{"name": {arguments}}` (Apertus)
    json_at_start: bool = False  # a bare `{"name"` at the very start of the output also opens the calls
    optional_prefix: str = ""  # a marker the model may put before bare calls (llama3's <|python_tag|>)
    name_open: str = ""  # (name outside the JSON) before the name, after call_open
    name_close: str = ""  # set: the call is call_open, name_open, the name, name_close, the arguments, call_close
    header: str = ""  # a message header the model may write before its calls (harmony's `<|start|>assistant`)
    content_markup: tuple[str, ...] = ()  # headers that are never content wherever they appear (harmony's final)
    xml_parameters: XmlParameters | None = None  # arguments as XML-like parameters (chat/xml_arguments.py)
    # set: written after the name, `{}` the call's index in the turn counting from first_index (Kimi K2's `:{}`)
    call_index: str = ""
    first_index: int = 0
    id_before_name: str = ""  # set: the model writes a call id, this marker, then the name (Solar Open)
    python_arguments: bool = False  # `name(key=value, ...)` Python calls (chat/python_arguments.py)
    # set: a recipient format (Functionary 3.2): every message opens with call_open and its recipient, a tool or this
    # one for text, and the prompt ends having opened the answer's first (the answer starts with a recipient)
    content_recipient: str = ""
    gemma_arguments: bool = False  # the arguments in Gemma 4's notation, not JSON (chat/gemma_arguments.py)
    # set: (open, close) around the recipient a message's header names, never content (muse's ` to=NAME<|message|>`)
    recipient_header: tuple[str, ...] = ()
    element_marker: str = ""  # set: the arguments as elements, each tag after it (chat/element_arguments.py)

    @property
    def names_outside(self) -> bool:
        return bool(self.name_close or self.xml_parameters or self.gemma_arguments or self.element_marker)

    @property
    def entry_markers(self) -> tuple[str, ...]:
        """Literals that switch from free text to calls wherever they appear."""
        return tuple(m for m in (self.section_open or self.call_open, self.optional_prefix) if m)

    @property
    def markup(self) -> tuple[str, ...]:
        """Literals between and around calls that are never content."""
        pieces = (self.list_open, self.call_open, *self.call_close.split(), self.separator.strip(),
                  *self.section_close.split(), self.header)
        return tuple(m for m in pieces if m)

    @property
    def preserved_tokens(self) -> tuple[str, ...]:
        """Markers some vocabularies hold as special tokens, which engines must still show as text."""
        markers = [m.strip() for m in (self.section_open, self.call_open, self.name_open, self.id_before_name,
                                        self.name_close,
                                        self.call_close, self.section_close, self.optional_prefix, self.header,
                                        *self.content_markup, *self.recipient_header, self.element_marker)
                   if m.strip()]
        # and the control-token-looking pieces inside longer markers (DeepSeek's `\n```<｜tool▁call▁end｜>`)
        pieces = [piece for marker in markers for piece in _CONTROL_LOOKING.findall(marker)]
        if self.gemma_arguments:
            pieces.append(QUOTE)  # (Gemma 4's vocabulary holds its text marker as one control token)
        return tuple(dict.fromkeys(markers + pieces))

    def lazy_triggers(self) -> tuple[str, ...]:
        """Regexes over the generated text (full match) whose first group starts the calls (tool_choice auto)."""
        triggers = [rf"[\s\S]*?({re.escape(marker)})[\s\S]*" for marker in self.entry_markers]
        if self.json_at_start:
            triggers.append(r'\s*(\{\s*"name")[\s\S]*')
        return tuple(triggers)

    def recipient_triggers(self, tool_names: list[str]) -> tuple[str, ...]:
        """(recipient formats) A recipient that is one of these tools: the answer's first (the prompt opened it) or
        a later one after call_open. Only tools' names, never `>>>` alone (a later `>>>all` is text): the grammar
        takes over from the trigger's text, and llama.cpp aborts the process on text it cannot accept."""
        recipient = "(?:" + "|".join(re.escape(name) for name in tool_names) + ")" + re.escape(self.name_close)
        return rf"\s*({recipient})[\s\S]*", rf"[\s\S]*?({re.escape(self.call_open)}{recipient})[\s\S]*"

    def render_calls(self, calls: list[tuple[str, Any]]) -> str:
        """Calls from the conversation history, written the way the model itself writes them."""
        objects = [self.call_open + self._call_body(self._name_text(name, index), arguments, index) + self.call_close
                   for index, (name, arguments) in enumerate(calls)]
        return self.section_open + self.list_open + self.separator.join(objects) + self.section_close

    def _name_text(self, name: str, index: int) -> str:
        """The name as written, with what the format writes around it (a call's index or id)."""
        if self.call_index:
            return name + self.call_index.format(index + self.first_index)
        return f"call{index:05d}{self.id_before_name}{name}" if self.id_before_name else name

    def _call_body(self, name: str, arguments: Any, index: int) -> str:
        if self.gemma_arguments:
            return self.name_open + name + gemma_text(arguments or {})
        if self.python_arguments:
            return self.name_open + name + self.name_close + arguments_text(arguments or {}) + ")"
        if self.element_marker:
            return self.name_open + name + self.name_close + elements_text(arguments or {}, self.element_marker)
        if self.xml_parameters is not None:
            syntax = self.xml_parameters
            parameters = "".join(syntax.open + key + syntax.name_close_for(json_type(value))
                                 + (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
                                 + syntax.close for key, value in (arguments or {}).items())
            return self.name_open + name + self.name_close + parameters + syntax.end
        if self.names_outside:
            return self.name_open + name + self.name_close + json.dumps(arguments, ensure_ascii=False)
        if self.name_as_key:
            return json.dumps({name: arguments}, ensure_ascii=False)
        call_id = {self.id_key: str(index)} if self.id_key else {}
        return json.dumps({**call_id, self.name_key: name, self.arguments_key: arguments}, ensure_ascii=False)


HERMES = ToolCallFormat("hermes", call_open="<tool_call>", call_close="</tool_call>")
MISTRAL = ToolCallFormat("mistral", section_open="[TOOL_CALLS]", list_open="[", separator=", ", section_close="]")
LLAMA3 = ToolCallFormat("llama3", arguments_key="parameters", json_at_start=True, optional_prefix="<|python_tag|>")
GENERIC = ToolCallFormat("generic", json_at_start=True)
MISTRAL_V7 = ToolCallFormat("mistral-v7", call_open="[TOOL_CALLS]", name_close="[ARGS]", separator="")
DEEPSEEK_V3 = ToolCallFormat("deepseek-v3", section_open="<｜tool▁calls▁begin｜>", call_open="<｜tool▁call▁begin｜>",
                             name_close="<｜tool▁sep｜>", call_close="<｜tool▁call▁end｜>", separator="",
                             section_close="<｜tool▁calls▁end｜>")
DEEPSEEK_R1 = ToolCallFormat("deepseek-r1", section_open="<｜tool▁calls▁begin｜>", call_open="<｜tool▁call▁begin｜>",
                             name_open="function<｜tool▁sep｜>", name_close="\n```json\n",
                             call_close="\n```<｜tool▁call▁end｜>", separator="\n", section_close="<｜tool▁calls▁end｜>")
FUNCTIONARY_V31 = ToolCallFormat("functionary-v3.1", call_open="<function=", name_close=">", call_close="</function>",
                                 separator="")
FUNCTIONARY_V32 = ToolCallFormat("functionary-v3.2", call_open=">>>", name_close="\n", separator="",
                                 content_recipient="all")
APRIEL = ToolCallFormat("apriel", section_open="<tool_calls>", list_open="[", separator=", ",
                        section_close="]</tool_calls>")
NEMOTRON = ToolCallFormat("nemotron", section_open="<TOOLCALL>", list_open="[", separator=", ",
                          section_close="]</TOOLCALL>")
HARMONY = ToolCallFormat("harmony", call_open=" to=functions.", name_close="<|channel|>commentary json<|message|>",
                         call_close="<|call|>", separator="<|start|>assistant", header="<|start|>assistant",
                         content_markup=("<|start|>assistant", "<|channel|>final<|message|>",
                                         "<|channel|>commentary<|message|>", "<|message|>", "<|end|>", "<|return|>"))
QWEN_XML = ToolCallFormat("qwen-xml", call_open="<tool_call>", name_open="\n<function=", name_close=">",
                          call_close="\n</tool_call>", separator="\n",
                          xml_parameters=XmlParameters(open="\n<parameter=", name_close=">\n", close="\n</parameter>",
                                                       end="\n</function>"))
SEED_XML = ToolCallFormat("seed-xml", call_open="<seed:tool_call>", name_open="\n<function=", name_close=">",
                          call_close="\n</seed:tool_call>", separator="\n",
                          xml_parameters=XmlParameters(open="\n<parameter=", name_close=">", close="</parameter>",
                                                       end="\n</function>"))
# GLM 4.6: `<tool_call>NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>\n</tool_call>`; GLM 4.7 the same without the
# line breaks. The name ends where the first parameter (or the call) does: no marker of its own.
GLM = ToolCallFormat("glm", call_open="<tool_call>", separator="\n", xml_parameters=XmlParameters(
    open="\n<arg_key>", name_close="</arg_key>\n<arg_value>", close="</arg_value>", end="\n</tool_call>"))
GLM_47 = ToolCallFormat("glm-4.7", call_open="<tool_call>", separator="", xml_parameters=XmlParameters(
    open="<arg_key>", name_close="</arg_key><arg_value>", close="</arg_value>", end="</tool_call>"))
def _invoke_calls(name: str, section: str, prefix: str = "", value_open: str = '">', string_value_open: str = "",
                  **more: Any) -> ToolCallFormat:
    """`<SECTION>\n<PREFIXinvoke name="NAME">\n<PREFIXparameter name="KEY">VALUE</PREFIXparameter>...\n
    </PREFIXinvoke>\n</SECTION>`, one invoke per call (MiniMax M2, DeepSeek's DSML, muse's ATEM)."""
    return ToolCallFormat(name, section_open=f"<{section}>", call_open=f'\n<{prefix}invoke name="', name_close='">',
                          separator="", section_close=f"\n</{section}>", **more,
                          xml_parameters=XmlParameters(open=f'\n<{prefix}parameter name="', name_close=value_open,
                                                       string_name_close=string_value_open,
                                                       close=f"</{prefix}parameter>", end=f"\n</{prefix}invoke>"))


MINIMAX_M2 = _invoke_calls("minimax-m2", "minimax:tool_call")
# DeepSeek V3.2 (`function_calls`) and V4 (`tool_calls`): `string="true"` before a value that is text, else "false"
DSML_V32, DSML_V4 = (_invoke_calls(f"dsml-{section}", f"｜DSML｜{section}", "｜DSML｜", value_open='" string="false">',
                                   string_value_open='" string="true">') for section in ("function_calls", "tool_calls"))
# muse (Glimmer): each message opens with a header naming its recipient, ` to=get_weather<|message|>` before a call,
# ` to=user<|message|>` before text, never content (the prompt ends having opened the first: `<|start|>assistant`)
MUSE = _invoke_calls("muse", "atem:function_calls", "atem:", header="<|start|>assistant",
                     recipient_header=(" to=", "<|message|>"),
                     content_markup=("<|start|>assistant", "<|message|>", "<|eom|>", "<|eot|>"))
GEMMA4 = ToolCallFormat("gemma4", call_open="<|tool_call>", name_open="call:", call_close="<tool_call|>", separator="",
                        gemma_arguments=True)
# Cohere Command R7B / Command A: `<|START_ACTION|>[{"tool_call_id": "0", "tool_name": ..., "parameters": {...}}]
# <|END_ACTION|>`; Command R+'s tool_use template: `Action:\n```json\n[{"tool_name": ..., "parameters": ...}\n]````.
COHERE = ToolCallFormat("cohere", section_open="<|START_ACTION|>", list_open="[", separator=",",
                        section_close="]<|END_ACTION|>", name_key="tool_name", id_key="tool_call_id",
                        arguments_key="parameters")
COHERE_R_PLUS = ToolCallFormat("cohere-r-plus", section_open="Action:\n```json\n", list_open="[", separator=",",
                               section_close="\n]```", name_key="tool_name", arguments_key="parameters")
PYTHONIC = ToolCallFormat("pythonic", section_open="<|tool_call_start|>", list_open="[", name_close="(",
                          separator=", ", section_close="]<|tool_call_end|>", python_arguments=True)
APERTUS = ToolCallFormat("apertus", section_open="<|tools_prefix|>", list_open="[", separator=", ",
                         section_close="]<|tools_suffix|>", name_as_key=True)
SOLAR = ToolCallFormat("solar", section_open="<|tool_calls|>", call_open="<|tool_call:begin|>",
                       id_before_name="<|tool_call:name|>", name_close="<|tool_call:args|>", call_close="<|tool_call:end|>",
                       separator="", section_close="<|calls|>")
GIGACHAT = ToolCallFormat("gigachat", call_open="<|function_call|>")  # (GigaChat 3.1: `<|function_call|>{"name": ...}`)
MINICPM = ToolCallFormat("minicpm", call_open='<function name="', name_close='">', separator="\n",
                         xml_parameters=XmlParameters(open='<param name="', name_close='">', close="</param>",
                                                      end="</function>"))
KIMI_K2 = ToolCallFormat("kimi-k2", section_open="<|tool_calls_section_begin|>", call_open="<|tool_call_begin|>",
                         name_open="functions.", name_close="<|tool_call_argument_begin|>",
                         call_close="<|tool_call_end|>", separator="", section_close="<|tool_calls_section_end|>",
                         call_index=":{}")
# Kimi K3: `<|open|>tools<|sep|><|open|>call tool="NAME" index="1"<|sep|><|open|>argument key="K" type="string"<|sep|>V
# <|close|>argument<|sep|><|close|>call<|sep|><|close|>tools<|sep|>`, the value's JSON type named before it
KIMI_K3 = ToolCallFormat("kimi-k3", section_open="<|open|>tools<|sep|>", call_open='<|open|>call tool="',
                         call_index='" index="{}', first_index=1, name_close='"<|sep|>', separator="",
                         section_close="<|close|>tools<|sep|>",
                         xml_parameters=XmlParameters(open='<|open|>argument key="', name_close=f'" type="{TYPE}"<|sep|>',
                                                      close="<|close|>argument<|sep|>", end="<|close|>call<|sep|>"))
# MiniMax M3: `]<]minimax[>[<tool_call>\n]<]minimax[>[<invoke name="NAME">]<]minimax[>[<city>Paris]<]minimax[>[</city>
# ]<]minimax[>[</invoke>\n]<]minimax[>[</tool_call>`, each parameter a tag of its name, nested values nested tags
_MINIMAX = "]<]minimax[>["
MINIMAX_M3 = ToolCallFormat("minimax-m3", section_open=f"{_MINIMAX}<tool_call>", call_open=f'\n{_MINIMAX}<invoke name="',
                            name_close='">', call_close=f"{_MINIMAX}</invoke>", separator="",
                            section_close=f"\n{_MINIMAX}</tool_call>", element_marker=_MINIMAX)
MINIMAX_M1 = ToolCallFormat("minimax-m1", section_open="<tool_calls>", separator="\n", section_close="</tool_calls>")
# Hy3: GLM's tags with a `:opensource` suffix, and a marker of its own after the name
HY3 = ToolCallFormat("hy3", section_open="<tool_calls:opensource>", list_open="\n", call_open="<tool_call:opensource>",
                     name_close="<tool_sep:opensource>", separator="\n", section_close="\n</tool_calls:opensource>",
                     xml_parameters=XmlParameters(open="\n<arg_key:opensource>",
                                                  name_close="</arg_key:opensource>\n<arg_value:opensource>",
                                                  close="</arg_value:opensource>", end="\n</tool_call:opensource>"))
# GigaChat 3 (10B-A1.8B): a call is a message of its own, after the answer's: `<|message_sep|>\n\nfunction call
# <|role_sep|>\n{"name": ..., "arguments": ...}`, one such message per call
GIGACHAT_3 = ToolCallFormat("gigachat-3", section_open="<|message_sep|>", list_open="\n\n",
                            call_open="function call<|role_sep|>\n", separator="<|message_sep|>\n\n")
FORMATS = (HERMES, MISTRAL, MISTRAL_V7, HARMONY, QWEN_XML, SEED_XML, GLM, GLM_47, MINIMAX_M2, MINICPM, KIMI_K2,
           DSML_V32, DSML_V4, GEMMA4, GIGACHAT, SOLAR, COHERE, COHERE_R_PLUS, APERTUS, PYTHONIC,
           DEEPSEEK_V3, DEEPSEEK_R1, FUNCTIONARY_V32, FUNCTIONARY_V31, APRIEL, NEMOTRON, MINIMAX_M1, HY3, GIGACHAT_3, KIMI_K3, MUSE,
           MINIMAX_M3,
           LLAMA3, GENERIC)
XML_ARGUMENTS = ("<parameter=", "<arg_key>", "<invoke name=", "DSML", "<param name=")


# Formats a template is recognised by from markers only it writes (all of them present), tried in this order
_MARKED_FORMATS = (
    ((">>>all",), FUNCTIONARY_V32),
    (("<|tool_call_start|>", "<|tool_call_end|>"), PYTHONIC),
    (("<|tools_prefix|>",), APERTUS),
    (("<|START_ACTION|>",), COHERE),
    (("Action:\\n```json", '"tool_name": '), COHERE_R_PLUS),  # (its source writes line breaks as `\` `n`)
    (("<|tool_call:name|>",), SOLAR),
    (("<|function_call|>",), GIGACHAT),
    (("<|message_sep|>", "function call"), GIGACHAT_3),
    (("<tool_sep:opensource>",), HY3),
    (("<tool_sep{}>", ":opensource"), HY3),  # (Hy3's template builds its markers with `format`)
    (("<|tool_call>call:",), GEMMA4),
    (("<|tool_call_argument_begin|>",), KIMI_K2),
    (('<|open|>argument key="',), KIMI_K3),
    (("<|open|>", "open_tag('argument'"), KIMI_K3),  # (K3's template builds its tags with a macro)
    (("<minimax:tool_call>", '<invoke name="'), MINIMAX_M2),
    ((_MINIMAX, '<invoke name="'), MINIMAX_M3),
    (("<atem:function_calls>", '<atem:invoke name="'), MUSE),
    (('<function name="', '<param name="'), MINICPM),
)


def detect_tool_call_format(template_source: str) -> ToolCallFormat:
    """The format a chat template (or tool prompt) teaches, recognised by the markers it writes."""
    if "[ARGS]" in template_source:
        return MISTRAL_V7
    if "<|call|>" in template_source and "<|channel|>" in template_source:
        return HARMONY
    if "<function=" in template_source and "<parameter=" in template_source:
        return SEED_XML if "<seed:tool_call>" in template_source else QWEN_XML
    for markers, call_format in _MARKED_FORMATS:
        if all(marker in template_source for marker in markers):
            return call_format
    if "｜DSML｜" in template_source:
        return DSML_V32 if "function_calls" in template_source else DSML_V4
    if "<arg_key>" in template_source and "<tool_call>" in template_source:
        return GLM_47 if "</arg_key><arg_value>" in template_source else GLM
    if "<｜tool▁sep｜>" in template_source and not any(m in template_source for m in XML_ARGUMENTS):
        return DEEPSEEK_R1 if "```json" in template_source else DEEPSEEK_V3
    if "<tool_calls>[" in template_source:
        return APRIEL
    if "<tool_calls>" in template_source and not any(m in template_source for m in XML_ARGUMENTS):
        return MINIMAX_M1
    if "<TOOLCALL>" in template_source:
        return NEMOTRON
    if "<tool_call>" in template_source:
        return HERMES
    if "[TOOL_CALLS]" in template_source:
        return MISTRAL
    if "<function=" in template_source and "</function>" in template_source \
            and not any(m in template_source for m in XML_ARGUMENTS):
        return FUNCTIONARY_V31
    if "<|python_tag|>" in template_source or '"parameters": ' in template_source or "<|start_header_id|>" in template_source:
        return LLAMA3
    return GENERIC
