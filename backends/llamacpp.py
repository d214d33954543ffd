"""The llama.cpp engine: GGUF models through llama-cpp-python's low-level API.

This is the asyncio-facing side: it validates and tokenises a request, hands it to the scheduler thread
and turns the thread's chunks back into an async iterator. All decoding happens in `llamacpp_scheduler`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from backends.base import (
    ChatTemplateInfo,
    Engine,
    EngineCapabilities,
    GenerationChunk,
    GenerationFinished,
    GenerationRequest,
)
from backends.llamacpp_model import ContextConfig, LlamaContext, LlamaModel, default_threads
from backends.llamacpp_sampling import grammar_parses
from backends.llamacpp_scheduler import Scheduler, SequenceJob
from chat.templates import resolve_template_source, resolve_tool_prompt_source
from errors import ContextLengthExceeded, InvalidRequest
from settings import Settings

logger = logging.getLogger(__name__)


class LlamaCppEngine(Engine):
    engine_kind = "llama.cpp"
    capabilities = EngineCapabilities(
        streaming=True, logprobs=True, max_top_logprobs=20, tools=True, parallel_tool_calls=True, json_schema=True,
        grammar=True,
    )

    def __init__(self, path: Path, settings: Settings, chat_template_override: str | None = None) -> None:
        self.path = path
        self.model = LlamaModel(path, n_gpu_layers=settings.n_gpu_layers)
        threads = settings.n_threads or default_threads()
        # Never allocate more context than the model was trained for: positions beyond it are garbage.
        n_ctx = min(settings.n_ctx, self.model.n_ctx_train * settings.parallel)
        config = ContextConfig(
            n_ctx=n_ctx,
            n_seq_max=settings.parallel,
            n_batch=settings.n_batch,
            n_ubatch=settings.n_ubatch,
            n_threads=threads,
            n_threads_batch=settings.n_threads_batch or threads,
            flash_attn=settings.flash_attn,
            kv_unified=settings.kv_unified,
            swa_full=settings.swa_full,
        )
        try:
            self.context = LlamaContext(self.model, config)
        except Exception:
            self.model.free()
            raise
        self._context_length = min(self.context.n_ctx // settings.parallel, self.model.n_ctx_train)
        self._default_max_tokens = settings.default_max_tokens
        self._template = self._load_template(settings, chat_template_override)
        self.scheduler = Scheduler(
            self.model, self.context, settings.parallel, self._context_length, settings.max_queue
        )

    def _load_template(self, settings: Settings, override: str | None) -> ChatTemplateInfo:
        source, origin = resolve_template_source(
            override=override,
            sidecar=self.path.with_suffix(".jinja"),
            embedded=self.model.metadata("tokenizer.chat_template"),
            architecture=self.model.metadata("general.architecture") or "",
            model_name=(self.model.metadata("general.name") or "") + " " + self.path.name,
            templates_dir=settings.templates_dir,
        )
        decode = lambda token: self.model.token_text(token).decode("utf-8", errors="replace")  # noqa: E731
        return ChatTemplateInfo(
            source=source,
            bos_token=decode(self.model.bos_token_id) if self.model.bos_token_id >= 0 else "",
            eos_token=decode(self.model.eos_token_id) if self.model.eos_token_id >= 0 else "",
            origin=origin,
            tool_prompt_source=resolve_tool_prompt_source(
                self.path.with_name(self.path.stem + ".tools.jinja"), settings.templates_dir
            ),
        )

    # ---------------------------------------------------------------- Engine interface

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def chat_template(self) -> ChatTemplateInfo:
        return self._template

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenize(text))

    def _validate(self, request: GenerationRequest, prompt_tokens: list[int]) -> int:
        """Check the request fits one sequence's context; return the completion token budget."""
        n_prompt = len(prompt_tokens)
        room = self._context_length - n_prompt
        if room <= 0:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self._context_length} tokens. However, your messages "
                f"resulted in {n_prompt} tokens. Please reduce the length of the messages.",
                param="messages",
            )
        if request.max_tokens is None:
            return min(self._default_max_tokens, room)
        if request.max_tokens > room:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {self._context_length} tokens. However, you requested "
                f"{n_prompt + request.max_tokens} tokens ({n_prompt} in the messages, {request.max_tokens} in "
                "the completion). Please reduce the length of the messages or completion.",
                param="max_tokens",
            )
        return request.max_tokens

    def _check_logit_bias(self, request: GenerationRequest) -> None:
        for token in request.sampling.logit_bias:
            if not 0 <= token < self.model.n_vocab:
                raise InvalidRequest(
                    f"logit_bias token id {token} is outside this model's vocabulary (0..{self.model.n_vocab - 1}).",
                    param="logit_bias",
                )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        prompt_tokens = self.model.tokenize(request.prompt)
        max_tokens = self._validate(request, prompt_tokens)
        self._check_logit_bias(request)
        if request.grammar is not None and not grammar_parses(self.model, request.grammar):
            raise InvalidRequest("The grammar does not parse as GBNF (llama.cpp's grammar format).", param="grammar")
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[GenerationChunk | Exception] = asyncio.Queue()

        def emit(item: GenerationChunk | Exception) -> None:
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, item)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening any more
                pass

        job = SequenceJob(
            prompt_tokens=prompt_tokens,
            sampling=request.sampling,
            max_tokens=max_tokens,
            stop=request.stop,
            top_logprobs=request.top_logprobs,
            grammar=request.grammar,
            emit=emit,
            shown_special_tokens=self.model.special_tokens_among(request.preserved_tokens),
        )
        self.scheduler.submit(job)
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if isinstance(item, GenerationFinished):
                    return
        finally:
            # Runs on normal end, client disconnect (GeneratorExit/CancelledError) and errors alike.
            self.scheduler.cancel(job)

    def active_sequences(self) -> int:
        return self.scheduler.active_sequences

    def queued_requests(self) -> int:
        return self.scheduler.queued

    async def aclose(self) -> None:
        await asyncio.to_thread(self._close_blocking)

    def _close_blocking(self) -> None:
        self.scheduler.shutdown()
        self.context.free()
        self.model.free()
