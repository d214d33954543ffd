"""Builds the FastAPI application: state in the lifespan, routes, and the error mapper."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sse_starlette.sse import AppStatus
from starlette.concurrency import run_in_threadpool

from api import tracing
from api.admin.cache_routes import router as cache_router
from api.admin.models_routes import router as models_router
from api.admin.routes import router as admin_router
from api.anthropic.routes import router as messages_router
from api.auth import ApiKeyMiddleware
from api.error_responses import install_error_handlers
from api.kv_events import KvEventPublisher
from api.limits import BodyLimitMiddleware
from api.observability import KeyUsageCollector, Metrics, RegistryCollector, RequestLogMiddleware
from api.openai.chat_routes import router as chat_router
from api.openai.completions_routes import router as completions_router
from api.openai.embeddings_routes import router as embeddings_router
from api.page_conversations import router as page_conversations_router
from api.rerank.routes import router as rerank_router
from api.responses.background import BackgroundRuns
from api.responses.compaction import CompactionSeal
from api.responses.conversation_routes import router as conversations_router
from api.responses.routes import router as responses_router
from api.responses.websocket import router as responses_socket_router
from api.router_metrics import RouterMetricsCollector
from api.routes_web import assets as web_assets
from api.routes_web import router as web_router
from backends.registry import ModelRegistry
from settings import Settings
from state.conversation_store import ConversationStore
from state.instance_liveness import HEARTBEAT_SECONDS
from state.page_conversations import PageConversations
from state.response_store import ResponseStore
from tenants.audit import audit
from tenants.keys import KeyLimits, KeyStore
from tenants.quotas import QuotaBook

logger = logging.getLogger(__name__)


def default_key_limits(settings: Settings) -> KeyLimits:
    """The flags' per-key limits (0 = none), for keys that set none of their own."""
    return KeyLimits(requests_per_minute=settings.key_requests_per_minute or None,
                     tokens_per_minute=settings.key_tokens_per_minute or None,
                     max_streams=settings.key_max_streams or None,
                     max_request_tokens=settings.key_max_request_tokens or None)


def _reload_keys_on_sighup(keys: KeyStore) -> None:
    """SIGHUP re-reads the key file; requests in flight keep the key they came with, streams are not cut."""

    def reload() -> None:
        try:
            ring = keys.reload()
        except (OSError, ValueError) as exc:
            logger.error("Key file not reloaded (the previous keys stay): %s", exc)
            return
        audit(None, "reload_keys", keys=len(ring.keys))
        logger.info("%s", keys.describe())

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, AttributeError):  # no signals here (Windows, not the main thread)
        logger.debug("SIGHUP key reload is not available here")


async def _tend_response_store(store: ResponseStore) -> None:
    """At start and every few seconds: this instance's heartbeat, and failing the background responses that an
    instance which stopped mid-generation left unfinished (this one's previous run, or another sharing the db)."""
    while True:
        try:
            if failed := await store.tend():
                logger.warning("%d stored responses were left unfinished by a server that stopped: marked failed",
                               failed)
        except Exception:  # the database is briefly unreachable: try again next time
            logger.exception("The response store could not be tended")
        await asyncio.sleep(HEARTBEAT_SECONDS)


def create_app(settings: Settings | None = None, responses: ResponseStore | None = None) -> FastAPI:
    """`responses`: the stored-Responses database, already opened (server.py opens it before uvicorn starts, so an
    unusable one is a one-line error); None: opened at startup."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        spans = tracing.configure(settings.otlp_traces_endpoint)  # (FastAPI opens request spans once it is set)
        registry = ModelRegistry.from_settings(settings)
        registry.start()
        metrics.registry.register(RegistryCollector(registry))
        metrics.registry.register(RouterMetricsCollector(registry, settings.kv_event_block_size))
        app.state.registry = registry
        app.state.responses = responses or ResponseStore.from_settings(settings)
        app.state.tending = asyncio.create_task(_tend_response_store(app.state.responses))
        app.state.page_conversations = PageConversations(app.state.responses.db)
        app.state.conversations = ConversationStore(app.state.responses.db)
        app.state.compaction_seal = CompactionSeal.from_settings(settings)
        # Sync dependencies run in anyio's thread pool, whose backend anyio imports on first use (~110 ms here):
        # done now, not in the first request's time to first token.
        await run_in_threadpool(lambda: None)
        app.state.background = BackgroundRuns(app.state.responses)
        app.state.startup = asyncio.create_task(registry.load_default_model())
        events = (KvEventPublisher(settings.kv_events, registry, settings.kv_events_replay)
                  if settings.kv_events else None)
        app.state.kv_events = asyncio.create_task(events.run()) if events else None
        logger.info("%s", keys.describe())
        _reload_keys_on_sighup(keys)
        try:
            yield
        finally:
            AppStatus.should_exit = True  # streams still open after uvicorn's grace period end now
            app.state.startup.cancel()
            app.state.tending.cancel()
            background = [app.state.startup, app.state.tending]
            if events is not None:
                app.state.kv_events.cancel()
                background.append(app.state.kv_events)
            await asyncio.gather(*background, return_exceptions=True)
            if events is not None:
                events.close()
            await app.state.background.aclose()
            await registry.aclose()  # models, then the upstream clients
            app.state.conversations.close()  # (its queued writes land first)
            app.state.responses.close()
            if spans is not None:
                spans.shutdown()  # (sends the spans still batched)

    app = FastAPI(title="OpenAI-compatible LLM server", version="0.1.0", lifespan=lifespan)
    # sse-starlette would end every stream the moment SIGTERM arrives; we let them finish within uvicorn's
    # graceful shutdown period (--shutdown-grace) instead, and end the rest when the lifespan shuts down.
    AppStatus.disable_automatic_graceful_drain()
    metrics = Metrics()
    keys = KeyStore(settings.admin_key, settings.api_key, settings.api_key_file, default_key_limits(settings))
    quotas = QuotaBook(window=settings.rate_window_seconds)
    metrics.registry.register(KeyUsageCollector(quotas))
    app.state.settings, app.state.metrics, app.state.keys, app.state.quotas = settings, metrics, keys, quotas
    install_error_handlers(app)
    # Outermost last: request log (sees every answer, 401s included) > CORS (preflights need no key) > API keys
    # > body limits > the routes.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout)
    app.add_middleware(ApiKeyMiddleware, keys=keys)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-request-id"])
    app.add_middleware(RequestLogMiddleware, metrics=metrics, json_logs=settings.log_format == "json")

    app.include_router(chat_router)
    app.include_router(models_router)
    app.include_router(cache_router)
    app.include_router(completions_router)
    app.include_router(embeddings_router)
    app.include_router(rerank_router)
    app.include_router(responses_router)
    app.include_router(responses_socket_router)
    app.include_router(conversations_router)
    app.include_router(messages_router)
    app.include_router(admin_router)
    app.include_router(web_router)
    app.include_router(page_conversations_router)
    app.mount("/chat/assets", web_assets, name="chat-assets")
    return app
