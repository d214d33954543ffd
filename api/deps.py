"""FastAPI dependencies: the app state routes need, reached through `Annotated` aliases."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, Request

from backends.registry import ModelRegistry
from settings import Settings


async def get_registry(request: Request) -> ModelRegistry:
    """The model registry, once start-up (assembling and loading the default model) has finished.

    Requests that arrive during start-up wait for it rather than failing; `/health` reports it instead.
    """
    startup: asyncio.Task = request.app.state.startup
    if not startup.done():
        await asyncio.shield(startup)
    return request.app.state.registry


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
