"""The llama.cpp engine: GGUF models through llama-cpp-python's low-level API.

This is the asyncio-facing side: it validates and tokenises a request, hands it to the scheduler thread
and turns the thread's chunks back into an async iterator. All decoding happens in `llamacpp_scheduler`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from backends.adapters import adapter_key
from backends.answer_steering import SteeringOptions
from backends.base import (
    GENERATIVE_CAPABILITIES,
    AdapterSet,
    ChatTemplateInfo,
    GenerationChunk,
    GenerationFinished,
    GenerationRequest,
    KvCacheUsage,
    SamplingParams,
    WarmedPrompt,
)
from backends.catalog import ModelEntry
from backends.engine_support import (
    WorkerThreadEngine,
    check_logit_bias,
    check_token_ids,
    completion_budget,
    fitted_grammar,
)
from backends.llamacpp.draft_model import DraftModel
from backends.llamacpp.lora import BASE, LlamaLoraSet, LoraLibrary, prompt_cache_of
from backends.llamacpp.media import MediaSpan, Projector, find_projector
from backends.llamacpp.model import ContextConfig, LlamaContext, LlamaModel, default_threads, flash_attention
from backends.llamacpp.prompt_cache import CachedPrefix, PromptCache, model_namespace, state_format_tag
from backends.llamacpp.sampling import grammar_parses
from backends.llamacpp.scheduler import Scheduler
from backends.llamacpp.sequences import SequenceJob, common_prefix_length
from backends.llamacpp.speculation import SpeculationOptions
from backends.media_inputs import MediaLimits, load_media
from chat.reasoning import KNOWN_MARKERS
from chat.templates import resolve_template_source, resolve_tool_prompt_source, resolve_tool_use_source
from errors import InvalidRequest, NotSupported
from settings import Settings

logger = logging.getLogger(__name__)


class LlamaCppEngine(WorkerThreadEngine):
    engine_kind = "llama.cpp"
    capabilities = GENERATIVE_CAPABILITIES

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        """`settings` are the server's with the catalog entry's overrides applied (factory.engine_settings)."""
        self.entry = entry
        self.path = path = entry.path
        self.model = LlamaModel(path, n_gpu_layers=settings.n_gpu_layers, repack=settings.repack)
        threads = settings.n_threads or default_threads()
        # Never allocate more context than the model was trained for: positions beyond it are garbage.
        n_ctx = min(settings.n_ctx, self.model.n_ctx_train * settings.parallel)
        self.flash_attn = flash_attention(settings.flash_attn, self.model, sequences=settings.parallel)
        logger.info("%s: flash attention %s (--flash-attn %s; attention heads %d wide)", path.name,
                    "on" if self.flash_attn else "off", settings.flash_attn, self.model.attention_head_size)
        config = ContextConfig(
            n_ctx=n_ctx,
            n_seq_max=settings.parallel,
            n_batch=settings.n_batch,
            n_ubatch=settings.n_ubatch,
            n_threads=threads,
            n_threads_batch=settings.n_threads_batch or threads,
            flash_attn=self.flash_attn,
            kv_unified=settings.kv_unified,
            swa_full=settings.swa_full,
        )
        try:
            self.context = LlamaContext(self.model, config)
        except Exception:
            self.model.free()
            raise
        try:
            self.draft_model = _open_draft_model(settings, self.model, config)
            self.projector = _open_projector(settings, entry, self.model, threads)
        except Exception:
            if getattr(self, "draft_model", None) is not None:
                self.draft_model.close()
            self.context.free()
            self.model.free()
            raise
        if self.projector is not None:  # this model reads images and/or audio too
            self.capabilities = replace(GENERATIVE_CAPABILITIES, vision=self.projector.vision,
                                        audio=self.projector.audio)
        self.media_limits = MediaLimits.from_settings(settings)
        super().__init__(settings, context_length=min(self.context.n_ctx // settings.parallel, self.model.n_ctx_train))
        self.settings = settings
        self.prompt_cache = self._open_prompt_cache()
        self.loras = LoraLibrary(self.model)
        self._attached: set[LlamaLoraSet] = set()  # adapter sets loaded into this model (their own disk caches)
        self._retired_events: list[dict] = []  # (--kv-events) removals of a detached set's disk blocks
        self.scheduler = Scheduler(
            self.model, self.context, settings.parallel, self._context_length, settings.max_queue, self.prompt_cache,
            SteeringOptions(budget_closing=settings.budget_closing, loop_breaking=settings.loop_breaking),
            SpeculationOptions(mode=self._speculation_mode(),
                               draft_max=settings.spec_draft_max,
                               draft_min=min(settings.spec_draft_min, settings.spec_draft_max),
                               max_sequences=settings.spec_max_sequences,
                               pool_tokens=settings.spec_pool_tokens),
            self.draft_model,
            self.projector,
            checkpoints=(settings.ctx_checkpoints, settings.checkpoint_every),
            event_block_size=settings.kv_event_block_size if settings.kv_events else 0,
        )
        spec = self.scheduler.speculative_steps.options.mode
        self.capabilities = replace(
            self.capabilities, prefix_reuse="checkpoints" if self.model.has_recurrent_state else "kv",
            speculation=f"{spec} (recurrent state cannot drop rejected drafts)"
            if self.model.has_recurrent_state and spec == "off" and settings.spec != "off" else spec)
        # Budget-aware closing needs the vocabulary's closing tokens: found now, in the background, so the first
        # constrained answer near its budget does not stall every stream of the scheduler for it.
        steers = settings.budget_closing or settings.loop_breaking
        keep_in = self.prompt_cache.store.directory if self.prompt_cache else None  # this model file's cache dir
        self._closing_tokens_ready = self.model.prepare_closing_tokens(keep_in) if steers else None

    def _speculation_mode(self) -> str:
        """Speculation removes rejected drafts from the cache, which recurrent state cannot do: off for such models
        (said on the card's capabilities)."""
        if self.model.has_recurrent_state:
            if self.settings.spec != "off" or self.draft_model:
                logger.info("%s has recurrent layers: speculative decoding is off for it", self.path.name)
            return "off"
        return "draft" if self.draft_model else self.settings.spec

    def _open_prompt_cache(self, adapter_key: str = BASE) -> PromptCache | None:
        """The disk cache of this model's states (computed with the adapters `adapter_key` names, if any)."""
        settings = self.settings
        if not settings.prompt_cache:
            return None
        namespace = model_namespace(self.entry.id, self.path) + (f"-lora-{adapter_key}" if adapter_key else "")
        try:
            cache = PromptCache(
                settings.cache_dir / namespace,
                settings.cache_capacity_bytes,
                settings.cache_min_tokens,
                state_format_tag(flash_attn=self.flash_attn, swa_full=settings.swa_full,
                                 kv_unified=settings.kv_unified),
            )
        except Exception as exc:  # an unusable cache dir must not stop the model from serving
            logger.warning("Prompt cache disabled for %s: %s", self.path.name, exc)
            return None
        cache.busy = lambda: self.scheduler.active_sequences > 0  # (writes wait for a quiet moment)
        if settings.kv_events:  # what the store holds is announced too, as the DISK medium (disk_blocks.py)
            cache.announce_blocks(settings.kv_event_block_size, adapter_key)
        return cache

    def _load_template(self, settings: Settings) -> ChatTemplateInfo:
        source, origin = resolve_template_source(
            override=settings.chat_template,
            sidecar=self.path.with_suffix(".jinja"),
            embedded=self.model.metadata("tokenizer.chat_template"),
            architecture=self.model.metadata("general.architecture") or "",
            model_name=(self.model.metadata("general.name") or "") + " " + self.path.name,
            templates_dir=settings.templates_dir,
        )
        tool_use = resolve_tool_use_source(
            override=settings.chat_template_tool_use, default_origin=origin, templates_dir=settings.templates_dir,
            embedded=self.model.metadata("tokenizer.chat_template.tool_use"))  # a named template, as converters write it
        decode = lambda token: self.model.token_text(token).decode("utf-8", errors="replace")  # noqa: E731
        return ChatTemplateInfo(
            source=source,
            tool_use_source=tool_use,
            bos_token=decode(self.model.bos_token_id) if self.model.bos_token_id >= 0 else "",
            eos_token=decode(self.model.eos_token_id) if self.model.eos_token_id >= 0 else "",
            origin=origin,
            tool_prompt_source=resolve_tool_prompt_source(
                self.entry.tool_prompt or self.path.with_name(self.path.stem + ".tools.jinja"), settings.templates_dir
            ),
            vocabulary_markers=tuple(text for markers in KNOWN_MARKERS for text in (markers.open, markers.close)
                                     if len(self.model.tokenize_markup(text)) == 1),
        )

    # ---------------------------------------------------------------- Engine interface

    def weight_placement(self) -> dict:
        return self.model.placement.describe()

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenize(text))

    def tokenize(self, text: str) -> list[int]:
        return self.model.tokenize(text)

    def detokenize(self, tokens: list[int]) -> str:
        check_token_ids(tokens, self.model.n_vocab, param="tokens")
        return b"".join(self.model.piece(token) for token in tokens).decode("utf-8", errors="replace")

    def infill_prompt(self, prefix: str, suffix: str) -> list[int] | None:
        markers = self.model.fill_in_the_middle_tokens()
        if markers is None:
            return None
        begin, before_suffix, middle = markers
        bos = [self.model.bos_token_id] if self.model.add_bos else []
        # The user's code is literal text: special-token spellings in it are not parsed.
        return bos + [begin, *self.model.tokenize_literal(prefix), before_suffix,
                      *self.model.tokenize_literal(suffix), middle]

    async def _stored_prefix(self, prompt_tokens: list[int], max_length: int,
                             adapters: LlamaLoraSet | None) -> CachedPrefix | None:
        """A longer prefix than any slot holds, from the disk cache (read off the event loop)."""
        cache = prompt_cache_of(adapters, self.prompt_cache)
        if cache is None:
            return None
        in_memory = self.scheduler.longest_cached_prefix(prompt_tokens, adapters)
        if max_length <= max(in_memory, cache.min_tokens - 1):
            return None
        return await asyncio.to_thread(cache.lookup, prompt_tokens, max_length, in_memory)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        adapters = self._own_adapters(request.adapters)
        media: list[MediaSpan] = []
        if request.media:
            prompt_tokens, media = await self._media_prompt(request)
        elif isinstance(request.prompt, str):
            prompt_tokens = self.model.tokenize(request.prompt)
        else:
            check_token_ids(request.prompt, self.model.n_vocab, param="prompt")
            prompt_tokens = list(request.prompt)
        max_tokens = completion_budget(request, len(prompt_tokens), self._context_length, self._default_max_tokens)
        check_logit_bias(request, self.model.n_vocab)
        if request.grammar is not None and not grammar_parses(self.model, request.grammar):
            raise InvalidRequest("The grammar does not parse as GBNF (llama.cpp's grammar format).", param="grammar")
        grammar, floor = fitted_grammar(request, max_tokens, lambda text: len(self.model.tokenize_markup(text)))
        if grammar is not request.grammar and not grammar_parses(self.model, grammar):
            grammar = request.grammar  # the compact variant of an unusual grammar: keep the one that parses
        # The last prompt token is always evaluated (its logits pick the first completion token).
        cached_prefix = await self._stored_prefix(prompt_tokens, len(prompt_tokens) - 1, adapters)
        if media:
            await self._encode_uncached(media, prompt_tokens, cached_prefix, adapters)
        job = SequenceJob(
            tenant=request.tenant,
            prompt_tokens=prompt_tokens,
            sampling=request.sampling,
            max_tokens=max_tokens,
            stop=request.stop,
            top_logprobs=request.top_logprobs,
            grammar=grammar,
            emit=lambda item: None,
            shown_special_tokens=self.model.special_tokens_among(request.preserved_tokens),
            reasoning=request.reasoning,
            speculative=request.speculative,
            adapters=adapters,
            affinity=request.affinity,
            media=media,
            cached_prefix=cached_prefix,
            answer_floor=floor,
        )
        async for chunk in self.run_job(job, len(prompt_tokens)):
            yield chunk

    async def _media_prompt(self, request: GenerationRequest) -> tuple[list[int], list[MediaSpan]]:
        """The prompt's tokens (media as placeholder runs) and its media spans: files fetched and decoded, then
        the prompt split at its markers by the projector, all off the event loop."""
        if self.projector is None or not isinstance(request.prompt, str):
            raise InvalidRequest("This model takes no images or audio.", param=request.media[0].param)
        loaded = await load_media(request.media, self.media_limits)
        prompt = await asyncio.to_thread(self.projector.tokenize, request.prompt, loaded)
        return prompt.tokens, prompt.spans

    async def _encode_uncached(self, media: list[MediaSpan], prompt_tokens: list[int], stored: CachedPrefix | None,
                               adapters: LlamaLoraSet | None) -> None:
        """Run the media no cached prefix covers through the projector, on a worker thread (if a slot's prefix
        is gone by the time the sequence starts, the scheduler encodes what is missing itself)."""
        covered = max(self.scheduler.longest_cached_prefix(prompt_tokens, adapters),
                      len(stored.tokens) if stored is not None else 0)
        missing = [span for span in media if span.end > covered]
        if missing:
            await asyncio.to_thread(lambda: [self.projector.encode(span) for span in missing])

    async def warm_prompt(self, prompt: str, conversation: str, adapters: AdapterSet | None = None) -> WarmedPrompt:
        if self.prompt_cache is None:
            raise NotSupported("The prompt cache is turned off on this server (--no-prompt-cache).")
        adapters = self._own_adapters(adapters)
        prompt_tokens = self.model.tokenize(prompt)
        completion_budget(GenerationRequest(prompt, SamplingParams(), 1), len(prompt_tokens), self._context_length, 1)
        # Cache what continuations share: the conversation without the generation prompt, which a follow-up
        # turn replaces with its next message. (A sliding-window cache cannot be cut back, so caching the
        # generation prompt too would make the state useless for exactly those follow-ups.)
        shared = common_prefix_length(prompt_tokens, self.model.tokenize(conversation))
        to_cache = prompt_tokens[: max(shared, 1)]
        loop = asyncio.get_running_loop()
        saved: asyncio.Future[bool] = loop.create_future()
        job = SequenceJob(
            prompt_tokens=to_cache,
            sampling=SamplingParams(temperature=0.0),
            max_tokens=0,
            stop=(),
            top_logprobs=None,
            grammar=None,
            emit=lambda item: None,
            prefill_only=True,
            on_saved=lambda ok: loop.call_soon_threadsafe(_resolve, saved, ok),
            adapters=adapters,
            cached_prefix=await self._stored_prefix(to_cache, len(to_cache), adapters),
        )
        usage = None
        async for chunk in self.run_job(job, len(to_cache)):
            if isinstance(chunk, GenerationFinished):
                usage = chunk.usage
        if not await saved:
            logger.warning("The warmed prompt of %d tokens could not be written to the disk cache", len(to_cache))
        return WarmedPrompt(prompt_tokens=len(prompt_tokens), cached_tokens=len(to_cache), reused_tokens=usage.cached_tokens)

    def kv_cache_usage(self) -> KvCacheUsage:
        return self.scheduler.kv_cache_usage()

    def cache_summary(self, adapters: AdapterSet | None = None) -> dict | None:
        cache = prompt_cache_of(self._own_adapters(adapters), self.prompt_cache)
        return cache.summary() if cache else None

    # ---------------------------------------------------------------- LoRA adapters (lora.py)

    def _own_adapters(self, adapters: AdapterSet | None) -> LlamaLoraSet | None:
        if adapters is not None and not isinstance(adapters, LlamaLoraSet):
            raise InvalidRequest(f"The adapters of '{adapters.model_id}' were not loaded into this model.")
        return adapters

    def attach_adapters(self, model_id: str, adapters: tuple) -> LlamaLoraSet:
        handles = []
        try:
            for adapter in adapters:
                handles.append(self.loras.acquire(adapter.path))
        except Exception:
            for adapter in adapters[: len(handles)]:
                self.loras.release(adapter.path)
            raise
        key = adapter_key(adapters)
        logger.info("LoRA adapters of %s loaded into %s: %s", model_id, self.entry.id,
                    ", ".join(f"{a.path.name} x{a.scale:g}" for a in adapters))
        attached = LlamaLoraSet(model_id=model_id, key=key, files=tuple(a.path for a in adapters),
                                scales=tuple(a.scale for a in adapters), handles=tuple(handles),
                                prompt_cache=self._open_prompt_cache(key))
        self._attached.add(attached)
        return attached

    def detach_adapters(self, adapters: AdapterSet) -> None:
        adapters = self._own_adapters(adapters)
        self.scheduler.forget_adapters(adapters)
        for path in adapters.files:
            self.loras.release(path)
        if adapters.prompt_cache is not None:
            adapters.prompt_cache.close()
            if (blocks := adapters.prompt_cache.disk_blocks) is not None:  # (states only these adapters can use)
                blocks.clear()
                self._retired_events.extend(blocks.drain())
        self._attached.discard(adapters)

    def kv_events(self) -> list[dict]:
        events = self.scheduler.ledger.drain() if self.scheduler.ledger is not None else []
        for cache in [self.prompt_cache, *(adapters.prompt_cache for adapters in list(self._attached))]:
            if cache is not None and cache.disk_blocks is not None:
                events.extend(cache.disk_blocks.drain())
        events.extend(self._retired_events)
        self._retired_events.clear()
        return events

    def close_blocking(self) -> None:
        if self._closing_tokens_ready is not None:
            self._closing_tokens_ready.join()  # it reads the vocabulary freed below
        self.scheduler.shutdown()
        if self.prompt_cache is not None:
            self.prompt_cache.close()  # finishes the writes already queued
        if self.draft_model is not None:
            self.draft_model.close()
        self.context.free()
        self.loras.free_all()
        if self.projector is not None:
            self.projector.free()
        self.model.free()


def _open_draft_model(settings: Settings, target: LlamaModel, config: ContextConfig) -> DraftModel | None:
    """The draft model speculation uses, if any: `--draft-model` (or models.yaml's) unless `--spec off`."""
    if settings.spec == "off" or (settings.spec != "draft" and not settings.draft_model):
        return None
    if not settings.draft_model:
        raise ValueError("--spec draft needs a draft model (--draft-model, a small GGUF with the same vocabulary)")
    path = settings.models_dir / settings.draft_model  # (an absolute path stays as it is)
    if not path.is_file():
        raise ValueError(f"The draft model {path} does not exist")
    logger.info("Speculative decoding with the draft model %s", path.name)
    return DraftModel(path, target, config)


def _open_projector(settings: Settings, entry: ModelEntry, model: LlamaModel, threads: int) -> Projector | None:
    """The model's multimodal projector: `--mmproj` / models.yaml `mmproj`, else one found beside the model file."""
    if settings.mmproj:
        path = settings.models_dir / settings.mmproj  # (an absolute path stays as it is)
        if not path.is_file():
            raise ValueError(f"The projector {path} does not exist")
    else:
        path = find_projector(entry.path)
        if path is None:
            return None
    projector = Projector(path, model, threads)
    logger.info("Projector %s loaded: %s", path.name,
                " and ".join(kind for kind, on in (("images", projector.vision), ("audio", projector.audio)) if on))
    return projector


def _resolve(future: asyncio.Future, value) -> None:
    if not future.done():
        future.set_result(value)
