"""Remote OpenAI-compatible upstreams (vLLM, Ollama, OpenAI, llama-server, another of ours): their config,
one pooled `httpx.AsyncClient` each, per-URL load and health, and the models they serve.

Declared in the models file (`upstreams:`) or with `--upstream NAME=URL[,URL...][#KEY_ENV]`. An upstream's API
key is read from the environment variable its config names, at request time; it is never logged or returned.
Each base URL counts its requests in flight; a request goes to the healthy URL with the fewest. A URL that
refuses connections is taken out for `down_seconds` and probed in the background until it answers again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field

from backends.catalog import ModelEntry

logger = logging.getLogger(__name__)


class UpstreamTimeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect: float = Field(5.0, gt=0)
    first_byte: float = Field(300.0, gt=0)  # headers and first chunk (a long prompt's prefill happens here)
    idle: float = Field(120.0, gt=0)  # between two chunks of a stream
    total: float = Field(3600.0, gt=0)


class UpstreamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base_urls: list[str] = Field(min_length=1)
    api_key_env: str | None = None  # the variable holding the key, never the key itself
    headers: dict[str, str] = {}
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    models: list[str] | None = None  # a static list; None: discovered from GET {base_url}/models
    refresh_seconds: float = Field(60.0, gt=0)
    down_seconds: float = Field(10.0, gt=0)


def parse_upstream_flag(spec: str) -> UpstreamConfig:
    """`NAME=URL[,URL...][#KEY_ENV]`, the command-line form."""
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)=([^#]+)(?:#(\w+))?", spec.strip())
    if not match:
        raise ValueError(f"--upstream expects NAME=URL[,URL...][#KEY_ENV], got {spec!r}")
    name, urls, key_env = match.groups()
    return UpstreamConfig(name=name, base_urls=[u.strip() for u in urls.split(",") if u.strip()], api_key_env=key_env)


def load_upstream_configs(models_file: Path | None, flags: list[str]) -> list[UpstreamConfig]:
    configs: dict[str, UpstreamConfig] = {}
    if models_file is not None and models_file.is_file():
        try:
            document = yaml.safe_load(models_file.read_text(encoding="utf-8")) or {}
            for raw in document.get("upstreams", []) if isinstance(document, dict) else []:
                config = UpstreamConfig.model_validate(raw)
                configs[config.name] = config
        except Exception as exc:
            logger.error("Ignoring the upstreams of %s: %s", models_file, exc)
    for spec in flags:
        config = parse_upstream_flag(spec)
        configs[config.name] = config
    return list(configs.values())


@dataclass(eq=False)
class UpstreamURL:
    base: str
    in_flight: int = 0
    down_until: float = 0.0
    last_error: str | None = None

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self.down_until

    def describe(self) -> dict:
        # Never show credentials that may sit in a URL's userinfo.
        return {"url": re.sub(r"//[^/@]*@", "//", self.base), "healthy": self.healthy, "in_flight": self.in_flight,
                "last_error": self.last_error}


class UpstreamPool:
    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.name = config.name
        self.urls = [UpstreamURL(url.rstrip("/")) for url in config.base_urls]
        timeouts = config.timeouts
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeouts.first_byte, connect=timeouts.connect),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
        )
        self.models: list[str] = list(config.models or [])
        self._tasks: list[asyncio.Task] = []

    def headers(self) -> dict[str, str]:
        headers = dict(self.config.headers)
        key = os.environ.get(self.config.api_key_env) if self.config.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def borrow(self, exclude: set[UpstreamURL]) -> UpstreamURL | None:
        """The healthy URL with the fewest requests in flight (if all are down, the one down the longest), its
        count taken; every borrowed URL is given back with `release` (relay.UpstreamCall does so exactly once)."""
        candidates = [u for u in self.urls if u not in exclude]
        healthy = [u for u in candidates if u.healthy]
        url = min(healthy, key=lambda u: u.in_flight) if healthy else \
            min(candidates, key=lambda u: u.down_until, default=None)
        if url is not None:
            url.in_flight += 1
        return url

    def release(self, url: UpstreamURL) -> None:
        url.in_flight -= 1

    def mark_failed(self, url: UpstreamURL, error: Exception) -> None:
        url.down_until = time.monotonic() + self.config.down_seconds
        url.last_error = f"{type(error).__name__}: {error}"
        logger.warning("Upstream %s at %s failed (%s); out for %.0f s", self.name, url.describe()["url"],
                       url.last_error, self.config.down_seconds)

    @property
    def healthy(self) -> bool:
        return any(u.healthy for u in self.urls)

    def describe(self) -> dict:
        return {"name": self.name, "healthy": self.healthy, "urls": [u.describe() for u in self.urls]}

    # ---------------------------------------------------------------- background: discovery and health

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._maintain()))

    async def _maintain(self) -> None:
        last_discovery = float("-inf")
        while True:
            if self.config.models is None and time.monotonic() - last_discovery >= self.config.refresh_seconds:
                if await self._discover():
                    last_discovery = time.monotonic()
            await self._probe_down_urls()
            await asyncio.sleep(min(2.0, self.config.down_seconds))

    async def _get_models(self, url: UpstreamURL) -> list[str]:
        response = await self.client.get(f"{url.base}/models", headers=self.headers(),
                                         timeout=httpx.Timeout(5.0, connect=self.config.timeouts.connect))
        response.raise_for_status()
        return [item["id"] for item in response.json().get("data", []) if isinstance(item, dict) and "id" in item]

    async def _discover(self) -> bool:
        for url in [u for u in self.urls if u.healthy]:
            try:
                self.models = await self._get_models(url)
                return True
            except (httpx.HTTPError, ValueError) as exc:
                self.mark_failed(url, exc)
        return False

    async def _probe_down_urls(self) -> None:
        for url in [u for u in self.urls if not u.healthy or u.last_error]:
            try:
                await self._get_models(url)
            except (httpx.HTTPError, ValueError):
                continue
            url.down_until, url.last_error = 0.0, None
            logger.info("Upstream %s at %s is back", self.name, url.describe()["url"])

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()


class RemoteDirectory:
    """All upstreams, and the catalog entries for the models they serve (`upstream/model`)."""

    def __init__(self, configs: list[UpstreamConfig]) -> None:
        self.pools = {config.name: UpstreamPool(config) for config in configs}

    def start(self) -> None:
        for pool in self.pools.values():
            pool.start()

    def entries(self) -> list[ModelEntry]:
        return [
            ModelEntry(id=f"{pool.name}/{model}", engine="remote", upstream={"name": pool.name, "model": model},
                       source="upstream")
            for pool in self.pools.values()
            for model in pool.models
        ]

    def pool(self, name: str) -> UpstreamPool | None:
        return self.pools.get(name)

    async def aclose(self) -> None:
        await asyncio.gather(*(pool.aclose() for pool in self.pools.values()), return_exceptions=True)
