"""The transformers engine: Hugging Face checkpoints on torch (CUDA when present, CPU otherwise).

The asyncio-facing side, like `llamacpp.py`: it tokenises and validates a request, compiles its grammar, and
hands it to the batching worker thread (`hf_scheduler`). Chat templates, tools and JSON schemas go through the
same engine-independent code as the llama.cpp engine, so the API behaves the same on both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from backends.answer_steering import SteeringOptions
from backends.base import GENERATIVE_CAPABILITIES, AdapterSet, ChatTemplateInfo, GenerationChunk, GenerationRequest
from backends.catalog import ModelEntry
from backends.engine_support import (
    WorkerThreadEngine,
    check_logit_bias,
    check_token_ids,
    completion_budget,
    fitted_grammar,
)
from backends.hf.grammar import GrammarCompiler, GrammarConstraint
from backends.hf.loading import free_checkpoint, load_checkpoint
from backends.hf.peft_adapters import PeftAdapters
from backends.hf.scheduler import BatchScheduler, HFJob
from backends.hf.vocabulary import TokenizerVocabulary
from chat.templates import resolve_template_source, resolve_tool_use_source
from settings import Settings

logger = logging.getLogger(__name__)


class TransformersEngine(WorkerThreadEngine):
    engine_kind = "transformers"
    capabilities = GENERATIVE_CAPABILITIES

    def __init__(self, entry: ModelEntry, settings: Settings) -> None:
        self.entry = entry
        self.checkpoint = load_checkpoint(entry, settings.trust_remote_code)
        tokenizer, config = self.checkpoint.tokenizer, self.checkpoint.model.config
        self.vocab_size = config.vocab_size
        trained = getattr(config, "max_position_embeddings", None) or settings.n_ctx
        super().__init__(settings, context_length=min(settings.n_ctx, trained))
        eos_ids = self._end_of_generation_ids()
        self.vocabulary = TokenizerVocabulary(tokenizer, self.vocab_size, eos_ids)
        self.grammars = GrammarCompiler(self.vocabulary)
        self.scheduler = BatchScheduler(
            self.checkpoint, self.vocabulary, max_batch=settings.parallel, max_queue=settings.max_queue,
            seq_ctx=self._context_length, eos_ids=eos_ids,
            steering=SteeringOptions(budget_closing=settings.budget_closing, loop_breaking=settings.loop_breaking),
        )
        self.adapters = PeftAdapters(self.checkpoint, self.scheduler.model_lock)

    def _end_of_generation_ids(self) -> set[int]:
        tokenizer, model = self.checkpoint.tokenizer, self.checkpoint.model
        ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        configured = getattr(model.generation_config, "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured] if configured is not None else [])
        return ids

    def _load_template(self, settings: Settings) -> ChatTemplateInfo:
        tokenizer = self.checkpoint.tokenizer
        # One template, or named ones (`default`, `tool_use`, `rag`...: tokenizer_config's list of templates)
        named = tokenizer.chat_template if isinstance(tokenizer.chat_template, dict) else {}
        embedded = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else named.get("default")
        source, origin = resolve_template_source(
            override=settings.chat_template,
            sidecar=None,
            embedded=embedded,
            architecture=getattr(self.checkpoint.model.config, "model_type", ""),
            model_name=self.entry.id,
            templates_dir=settings.templates_dir,
        )
        tool_use = resolve_tool_use_source(override=settings.chat_template_tool_use, default_origin=origin,
                                           embedded=named.get("tool_use"), templates_dir=settings.templates_dir)
        return ChatTemplateInfo(
            source=source, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "", origin=origin,
            tool_use_source=tool_use,
            tool_prompt_source=(settings.templates_dir / "tool_prompt.jinja").read_text(encoding="utf-8")
            if self.entry.tool_prompt is None else self.entry.tool_prompt.read_text(encoding="utf-8"),
        )

    # ---------------------------------------------------------------- Engine interface

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def _tokenize(self, text: str) -> list[int]:
        # Special-token text (a chat template's BOS included) is parsed; a BOS the tokenizer normally adds is
        # added only when the text did not bring one, as llama.cpp does.
        tokenizer = self.checkpoint.tokenizer
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id
        if getattr(tokenizer, "add_bos_token", False) and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def tokenize(self, text: str) -> list[int]:
        return self._tokenize(text)

    def detokenize(self, tokens: list[int]) -> str:
        check_token_ids(tokens, self.vocab_size, param="tokens")
        return self.checkpoint.tokenizer.decode(tokens, skip_special_tokens=True)

    def _special_ids_among(self, texts: tuple[str, ...]) -> frozenset[int]:
        tokenizer = self.checkpoint.tokenizer
        special = set(tokenizer.all_special_ids)
        found = set()
        for text in texts:
            ids = tokenizer.convert_tokens_to_ids([text])
            if ids and ids[0] in special:
                found.add(ids[0])
        return frozenset(found)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if isinstance(request.prompt, str):
            prompt_ids = self._tokenize(request.prompt)
        else:
            check_token_ids(request.prompt, self.vocab_size, param="prompt")
            prompt_ids = list(request.prompt)
        max_tokens = completion_budget(request, len(prompt_ids), self._context_length, self._default_max_tokens)
        check_logit_bias(request, self.vocab_size)
        tokenizer = self.checkpoint.tokenizer
        grammar, floor = fitted_grammar(request, max_tokens,
                                          lambda text: len(tokenizer.encode(text, add_special_tokens=False)))
        constraint = None
        if grammar is not None:
            compiled = await asyncio.to_thread(self.grammars.compile, grammar.gbnf)
            constraint = GrammarConstraint(compiled, grammar, self.vocabulary)
        job = HFJob(
            tenant=request.tenant,
            prompt_ids=prompt_ids,
            sampling=request.sampling,
            max_tokens=max_tokens,
            stop=request.stop,
            top_logprobs=request.top_logprobs,
            constraint=constraint,
            shown_special_ids=self._special_ids_among(request.preserved_tokens),
            reasoning=request.reasoning,
            adapter=self.adapters.name_of(request.adapters),
            answer_floor=floor,
        )
        async for chunk in self.run_job(job, len(prompt_ids)):
            yield chunk

    def attach_adapters(self, model_id: str, adapters: tuple) -> AdapterSet:
        return self.adapters.attach(model_id, adapters)

    def detach_adapters(self, adapters: AdapterSet) -> None:
        self.adapters.detach(adapters)

    def close_blocking(self) -> None:
        self.scheduler.shutdown()
        self.scheduler = None
        self.grammars = None
        free_checkpoint(self.checkpoint)
