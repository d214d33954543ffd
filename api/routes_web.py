"""The built-in web chat page: static files from `web/` (no build step, no CDN), at `/chat`, and at `/` for
browsers (clients asking for JSON still get the status there)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from settings import PROJECT_ROOT

WEB_DIR = PROJECT_ROOT / "web"
router = APIRouter(tags=["web"])


def chat_page() -> FileResponse:
    return FileResponse(WEB_DIR / "chat.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/chat", include_in_schema=False)
async def chat() -> FileResponse:
    return chat_page()


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    """Browsers ask for it on every page of this origin (JSON ones too); a 404 shows as a console error."""
    return FileResponse(WEB_DIR / "favicon.svg", media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


assets = StaticFiles(directory=WEB_DIR)
