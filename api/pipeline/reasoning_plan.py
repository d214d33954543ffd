"""A request's reasoning: the template variables that switch thinking on or off, the budget, where the thinking
goes in the answer, and what the engine is told. One plan serves chat completions and Responses."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from backends.base import GrammarSpec, ReasoningControl
from backends.catalog import GenerationDefaults
from chat.reasoning import ReasoningMarkers, ReasoningSplitter, grammar_after_reasoning, opens_reasoning
from chat.templates import ChatPromptRenderer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerReasoning:
    """The operator's defaults (--reasoning-format, --reasoning-budget)."""

    output_format: str = "reasoning_content"
    budget: int = -1


def server_reasoning(settings) -> ServerReasoning:
    return ServerReasoning(settings.reasoning_format, settings.reasoning_budget)


@dataclass(frozen=True)
class ReasoningRequest:
    """The reasoning fields of one request, whichever API they came through."""

    effort: str | None = None  # OpenAI `reasoning_effort` / Responses `reasoning.effort`
    template_kwargs: dict[str, Any] | None = None
    output_format: str | None = None  # reasoning_content / reasoning / both / none
    budget: int | None = None  # -1 unlimited


def template_variables(request: ReasoningRequest, defaults: GenerationDefaults,
                       renderer: ChatPromptRenderer) -> dict[str, Any]:
    """The model's chat_template_kwargs, the request's over them; `reasoning_effort` reaches the template as
    itself, and `none` also as `enable_thinking: false` unless the kwargs say otherwise."""
    variables = {**(defaults.chat_template_kwargs or {}), **(request.template_kwargs or {})}
    if request.effort is not None:
        if renderer.reasoning_markers is None:
            logger.warning("Ignoring reasoning_effort %r: this model does not reason", request.effort)
            return variables
        variables.setdefault("reasoning_effort", request.effort)
        if request.effort == "none":
            variables.setdefault("enable_thinking", False)
    return variables


@dataclass(frozen=True)
class ReasoningPlan:
    markers: ReasoningMarkers
    starts_inside: bool  # the rendered prompt opened the block
    thinking: bool  # the model may think in this answer
    output_format: str
    budget: int | None  # None: unlimited

    def splitter(self) -> ReasoningSplitter | None:
        if self.output_format == "none":
            return None
        return ReasoningSplitter(self.markers, self.starts_inside)

    def control(self) -> ReasoningControl | None:
        if not self.thinking:
            return None
        return ReasoningControl(self.markers.open, self.markers.close, self.starts_inside, self.budget)

    def grammar(self, grammar: GrammarSpec | None) -> GrammarSpec | None:
        """A constraint on the answer applies after the thinking (when the model may think at all)."""
        if grammar is None or not self.thinking:
            return grammar
        return grammar_after_reasoning(grammar, self.markers, self.starts_inside)

    @property
    def preserved_tokens(self) -> tuple[str, ...]:
        return (self.markers.open, self.markers.close)


def plan_reasoning(request: ReasoningRequest, renderer: ChatPromptRenderer, prompt: str, variables: dict[str, Any],
                   defaults: GenerationDefaults, server: ServerReasoning) -> ReasoningPlan | None:
    """None for a model that does not reason."""
    markers = renderer.reasoning_markers
    if markers is None:
        if request.budget is not None or request.output_format is not None:
            logger.warning("Ignoring reasoning_budget / reasoning_format: this model does not reason")
        return None
    budget = next(b for b in (request.budget, defaults.reasoning_budget, server.budget) if b is not None)
    starts_inside = opens_reasoning(prompt, markers)
    turned_off = variables.get("enable_thinking") is False or request.effort == "none"
    if turned_off:
        budget = 0  # a template that opens the block anyway gets it closed at once
    return ReasoningPlan(
        markers=markers,
        starts_inside=starts_inside,
        thinking=not turned_off or starts_inside,
        output_format=request.output_format or server.output_format,
        budget=None if budget < 0 else budget,
    )
