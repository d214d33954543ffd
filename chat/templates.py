"""Chat templates: choosing one for a model and rendering messages into a prompt.

Templates shipped inside model files are untrusted code: every template is compiled in the sandboxed environment of
chat/template_environment.py (transformers' own), whatever its origin.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jinja2

from chat.reasoning import ReasoningMarkers, detect_markers
from chat.template_adaptation import adapt, probe
from chat.template_environment import new_environment
from chat.tool_formats import GENERIC, HERMES, ToolCallFormat, detect_tool_call_format
from errors import InvalidRequest


@dataclasses.dataclass(frozen=True)
class ChatTemplateInfo:
    """What chat rendering needs from a model: its template source and special token texts."""

    source: str
    bos_token: str = ""
    eos_token: str = ""
    origin: str = ""  # where the template came from, shown in model info
    tool_prompt_source: str = ""  # tool-use instructions for templates that cannot render tools themselves
    vocabulary_markers: tuple[str, ...] = ()  # known reasoning markers the vocabulary holds as single tokens
    # The model's named `tool_use` template (Hermes 2 Pro / 3, Command R+): rendered instead of `source` when a request
    # has tools, as transformers and llama.cpp do; empty when the model has one template for everything.
    tool_use_source: str = ""


# Architecture (GGUF `general.architecture`) -> template file in templates/. Llama 2 era models share the
# `llama` architecture with Llama 3, so the model name decides between llama3 and mistral-style prompts.
_TEMPLATE_BY_ARCHITECTURE = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "phi3": "phi3",
    "mistral": "mistral",
    "qwen2": "chatml",
    "qwen3": "chatml",
}
FALLBACK_TEMPLATE = "chatml"


def builtin_template_name(architecture: str, model_name: str) -> str:
    """Pick the shipped template for a model that carries none of its own."""
    if architecture == "llama":
        lowered = model_name.lower()
        if "llama-3" in lowered or "llama3" in lowered:
            return "llama3"
        if "mistral" in lowered or "mixtral" in lowered:
            return "mistral"
    return _TEMPLATE_BY_ARCHITECTURE.get(architecture, FALLBACK_TEMPLATE)


def resolve_template_source(
    *,
    override: str | None,
    sidecar: Path | None,
    embedded: str | None,
    architecture: str,
    model_name: str,
    templates_dir: Path,
) -> tuple[str, str]:
    """Return (template source, origin), in order: operator override, `<model>.jinja` beside the model file,
    the template embedded in the model, then the shipped template for the architecture."""
    if override:
        return _read_override(override, templates_dir)
    if sidecar is not None and sidecar.is_file():
        return sidecar.read_text(encoding="utf-8"), f"file:{sidecar.name}"
    if embedded:
        return embedded, "model"
    name = builtin_template_name(architecture, model_name)
    return (templates_dir / f"{name}.jinja").read_text(encoding="utf-8"), f"builtin:{name}"


def resolve_tool_use_source(*, override: str | None, default_origin: str, embedded: str | None,
                            templates_dir: Path) -> str:
    """The template for requests with tools, where the model has a named `tool_use` one: the operator's, else the
    model's own when its default template is the model's own too (an override of the default replaces both)."""
    if override:
        return _read_override(override, templates_dir)[0]
    return embedded or "" if default_origin == "model" else ""


def _read_override(override: str, templates_dir: Path) -> tuple[str, str]:
    """An operator's template: a file path, else a template name in templates/."""
    path = Path(override)
    if not path.is_file():
        path = templates_dir / f"{override.removesuffix('.jinja')}.jinja"
    return path.read_text(encoding="utf-8"), f"override:{path.name}"


def resolve_tool_prompt_source(sidecar: Path | None, templates_dir: Path) -> str:
    """Instructions for calling tools, for templates without tool support: `<model>.tools.jinja` beside the
    model, else the shipped `templates/tool_prompt.jinja`."""
    if sidecar is not None and sidecar.is_file():
        return sidecar.read_text(encoding="utf-8")
    return (templates_dir / "tool_prompt.jinja").read_text(encoding="utf-8")


class ChatPromptRenderer:
    """Renders OpenAI-style message dicts with one model's template (compiled once)."""

    def __init__(self, info: ChatTemplateInfo) -> None:
        self.info = info
        self._template = self._compile(info.source, info.origin)
        self._tool_prompt = self._compile(info.tool_prompt_source, "tool prompt") if info.tool_prompt_source else None
        self.needs = probe(lambda messages: self._render_as_is(messages, True, None, {}), info.origin or "model")
        # Requests with tools render with this one: the model's `tool_use` template when it has one, else itself.
        self._with_tools = self if not info.tool_use_source else ChatPromptRenderer(dataclasses.replace(
            info, source=info.tool_use_source, tool_use_source="", origin=f"{info.origin or 'model'} (tool_use)"))

    @staticmethod
    def _compile(source: str, origin: str) -> jinja2.Template:
        try:
            return new_environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"chat template ({origin}) does not compile, line {exc.lineno}: {exc.message}") from exc
        except jinja2.TemplateError as exc:
            raise ValueError(f"chat template ({origin}) does not compile: {exc}") from exc

    @property
    def supports_tools(self) -> bool:
        """Whether the model's own template renders a `tools` list (most modern GGUF templates do)."""
        return "tools" in self._with_tools.info.source

    @functools.cached_property
    def tool_call_format(self) -> ToolCallFormat:
        """How this model writes calls: what its own template teaches (in its tool list, or in the calls of its
        history, which some templates write without rendering a tool list), else what the tool prompt teaches."""
        if self._with_tools is not self:
            return self._with_tools.tool_call_format
        if self.supports_tools or self._native_tool_call_format is not GENERIC:
            return self._native_tool_call_format
        return detect_tool_call_format(self.info.tool_prompt_source)

    @functools.cached_property
    def _native_tool_call_format(self) -> ToolCallFormat:
        return detect_tool_call_format(self.info.source)

    @functools.cached_property
    def _tool_call_example(self) -> str:
        """A call in the model's own format, for the tool prompt, when that format is not the prompt's usual hermes
        (the calls of its history are written in it too); empty otherwise."""
        native = self._native_tool_call_format
        return native.render_calls([("TOOL_NAME", {"ARGUMENT": "VALUE"})]) if native not in (GENERIC, HERMES) else ""

    @functools.cached_property
    def reasoning_markers(self) -> ReasoningMarkers | None:
        """The thinking block this model writes, if it is a reasoning model (see chat/reasoning.py)."""
        return detect_markers(self.info.source, self.info.vocabulary_markers)

    def reads_variable(self, name: str) -> bool:
        """Whether the template mentions a variable (e.g. `enable_thinking`, `reasoning_effort`)."""
        return name in self.info.source

    def render(self, messages: list[dict], *, add_generation_prompt: bool = True, tools: list[dict] | None = None,
               extra: dict[str, Any] | None = None) -> str:
        """`extra`: more template variables (chat_template_kwargs); they may not replace the ones set here."""
        if tools and self._with_tools is not self:
            return self._with_tools.render(messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                           extra=extra)
        return self._render_as_is(adapt(messages, self.needs), add_generation_prompt, tools, extra or {})

    def _render_as_is(self, messages: list[dict], add_generation_prompt: bool, tools: list[dict] | None,
                      extra: dict[str, Any]) -> str:
        # As transformers does: `tools` and `documents` always set (None when absent), reasoning under every name
        # templates read it by.
        fixed = dict(messages=aliased_reasoning(messages), add_generation_prompt=add_generation_prompt,
                     bos_token=self.info.bos_token, eos_token=self.info.eos_token, tools=tools or None, documents=None)
        clash = sorted(set(extra) & set(fixed))
        if clash:
            raise InvalidRequest(f"chat_template_kwargs may not set {clash[0]!r}.", param="chat_template_kwargs")
        return self._render(self._template, **extra, **fixed)

    def render_tool_prompt(self, tools: list[dict], mode: str, parallel: bool) -> str:
        if self._tool_prompt is None:
            raise InvalidRequest("This model has no tool-use prompt configured.", param="tools")
        return self._render(self._tool_prompt, tools=tools, mode=mode, parallel=parallel,
                            call_example=self._tool_call_example).strip()

    @staticmethod
    def _render(template: jinja2.Template, **variables) -> str:
        try:
            return template.render(**variables)
        except InvalidRequest:
            raise
        except jinja2.exceptions.SecurityError as exc:
            raise InvalidRequest(f"The model's chat template attempted an unsafe operation{_line(exc)}: {exc}") from exc
        except Exception as exc:  # TypeError, RecursionError, ...: a template that cannot render this conversation
            raise InvalidRequest(f"The chat template could not render this conversation{_line(exc)}: "
                                 f"{type(exc).__name__}: {exc}", param="messages") from exc


REASONING_NAMES = ("reasoning_content", "thinking", "reasoning")


def aliased_reasoning(messages: list[dict]) -> list[dict]:
    """A message's reasoning under `reasoning_content` (what most templates read) and `thinking` (gpt-oss), as
    transformers hands it to templates."""
    aliased = []
    for message in messages:
        reasoning = next((message[name] for name in REASONING_NAMES if message.get(name) is not None), None)
        aliased.append(message if reasoning is None else {"thinking": reasoning, **message,
                                                          "reasoning_content": reasoning})
    return aliased


def _line(exc: BaseException) -> str:
    """Where in the template it failed (Jinja maps its frames to the template's lines), if known."""
    lines = [tb.tb_lineno for tb in _frames(exc.__traceback__) if tb.tb_frame.f_code.co_filename == "<template>"]
    return f" (template line {lines[-1]})" if lines else ""


def _frames(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next
