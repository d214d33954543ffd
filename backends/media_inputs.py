"""A request's images and audio, made ready for a projector: fetched (http(s) URLs, only where the operator
allows it, bounded in size and time), checked against the limits, decoded (Pillow, on a worker thread: never
on the event loop), and fingerprinted, so the same picture in the same place of a prompt reuses its cached KV.

Limits: media per request (400), bytes per file (413), pixels per image (400, checked from the header before
anything is decoded). A file that is not an image Pillow reads, or is truncated, is a 400 naming the part.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from dataclasses import dataclass

import httpx

from chat.media import MediaPart
from errors import InvalidRequest, PayloadTooLarge

IMAGE_FORMATS = {"PNG", "JPEG", "WEBP", "GIF", "BMP"}


@dataclass(frozen=True)
class MediaLimits:
    max_items: int
    max_bytes: int
    max_pixels: int
    fetch: bool = False  # download http(s) images
    fetch_timeout: float = 10.0

    @classmethod
    def from_settings(cls, settings) -> MediaLimits:
        return cls(settings.max_media_per_request, settings.max_media_bytes, settings.max_image_pixels,
                   settings.media_fetch, settings.media_fetch_timeout)


@dataclass(frozen=True, eq=False)
class LoadedMedia:
    """What the projector reads: RGB pixels (images) or the file (audio, decoded by llama.cpp), and a digest of
    exactly that (two different files showing the same pixels are the same image)."""

    kind: str
    digest: bytes
    param: str = "messages"  # where the request put it, for errors found later (llama.cpp refusing the file)
    width: int = 0
    height: int = 0
    pixels: bytes = b""  # RGB, rows top to bottom
    data: bytes = b""  # audio: the file's bytes


async def load_media(parts: tuple[MediaPart, ...], limits: MediaLimits) -> list[LoadedMedia]:
    if len(parts) > limits.max_items:
        raise InvalidRequest(f"At most {limits.max_items} images or audio clips per request (--max-media-per-request).",
                             param=parts[limits.max_items].param)
    contents = [await _contents(part, limits) for part in parts]
    return await asyncio.to_thread(lambda: [_decode(part, data, limits) for part, data in zip(parts, contents)])


async def _contents(part: MediaPart, limits: MediaLimits) -> bytes:
    if part.data is not None:
        data = part.data
    elif not limits.fetch:
        raise InvalidRequest("This server does not fetch media URLs (--media-fetch is off); send the image as a "
                             "data: URL (base64).", param=part.param)
    else:
        data = await _fetch(part, limits)
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"The {part.kind} is {len(data)} bytes; the limit is {limits.max_bytes} "
                              "(--max-media-bytes).", param=part.param)
    return data


async def _fetch(part: MediaPart, limits: MediaLimits) -> bytes:
    """The URL's body, read no further than the byte limit allows."""
    received = bytearray()
    try:
        async with (httpx.AsyncClient(timeout=limits.fetch_timeout, follow_redirects=True) as client,
                    asyncio.timeout(limits.fetch_timeout), client.stream("GET", part.url) as response):
            if response.status_code != 200:
                raise InvalidRequest(f"Fetching the {part.kind} URL answered HTTP {response.status_code}.",
                                     param=part.param)
            async for piece in response.aiter_bytes():
                received += piece
                if len(received) > limits.max_bytes:
                    break
    except (httpx.HTTPError, TimeoutError) as exc:
        raise InvalidRequest(f"Could not fetch the {part.kind} URL: {type(exc).__name__}.", param=part.param) from None
    return bytes(received)


def _decode(part: MediaPart, data: bytes, limits: MediaLimits) -> LoadedMedia:
    if part.kind == "audio":  # llama.cpp's projector helper decodes WAV, MP3 and FLAC itself
        return LoadedMedia("audio", hashlib.sha256(data).digest(), part.param, data=data)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            if image.format not in IMAGE_FORMATS:
                raise InvalidRequest(f"Images must be one of {sorted(IMAGE_FORMATS)}; this is {image.format}.",
                                     param=part.param)
            width, height = image.size
            if width * height > limits.max_pixels:
                raise InvalidRequest(f"The image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels "
                                     "(--max-image-pixels).", param=part.param)
            pixels = image.convert("RGB").tobytes()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise InvalidRequest("The image could not be read (not an image, or an unsupported format).",
                             param=part.param) from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InvalidRequest(f"The image could not be decoded: {exc}.", param=part.param) from None
    digest = hashlib.sha256(b"%dx%d:" % (width, height) + pixels).digest()
    return LoadedMedia("image", digest, part.param, width, height, pixels)
