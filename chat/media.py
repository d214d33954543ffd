"""Images and audio in chat messages: content parts that are not text, as every API spells them, become one
`MediaPart` each and a marker in the message text where they stood.

The marker is llama.cpp's mtmd default (`<__media__>`): the engine splits the rendered prompt there and puts the
media's embeddings in its place, so a template only ever sees text, wherever the client put the image.
Fetching and decoding happen in the engine (backends/media_inputs.py), off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Literal

from errors import InvalidRequest

MEDIA_MARKER = "<__media__>"
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w-]+=[^;,]*)*)(?P<b64>;base64)?,(?P<data>.*)",
                       re.DOTALL)
_AUDIO_FORMATS = {"wav", "mp3", "flac"}


@dataclass(frozen=True)
class MediaPart:
    """One image or audio clip of a request: its bytes, or an http(s) URL to fetch them from."""

    kind: Literal["image", "audio"]
    param: str  # where the request put it, for errors
    data: bytes | None = None
    url: str | None = None
    mime: str | None = None  # as the client declared it (data URL, Anthropic media_type, audio format)


def _decoded(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("The media data is not valid base64.", param=param) from None


def image_from_url(url: Any, param: str) -> MediaPart:
    """An image given by URL: a `data:` URL (base64) carries the bytes; http(s) is fetched if the server allows."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest("An image needs a 'url' string (a data: URL or an http(s) URL).", param=param)
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None or not match.group("b64"):
            raise InvalidRequest("An image data URL must be base64: data:image/png;base64,....", param=param)
        return MediaPart("image", param, data=_decoded(match.group("data"), param), mime=match.group("mime"))
    if url.startswith(("http://", "https://")):
        return MediaPart("image", param, url=url)
    raise InvalidRequest("An image URL must be a data: URL or an http(s) URL.", param=param)


def media_part(part: dict[str, Any], param: str) -> MediaPart | None:
    """The media of a chat content part (`image_url`, `input_audio`), or None for other kinds."""
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return image_from_url(url, f"{param}.image_url.url")
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
            raise InvalidRequest("An input_audio part needs 'data' (base64) and 'format'.", param=f"{param}.input_audio")
        audio_format = audio.get("format")
        if audio_format not in _AUDIO_FORMATS:
            raise InvalidRequest(f"Audio format must be one of {sorted(_AUDIO_FORMATS)}.",
                                 param=f"{param}.input_audio.format")
        return MediaPart("audio", param, data=_decoded(audio["data"], f"{param}.input_audio.data"), mime=audio_format)
    return None


def chat_image_part(url: str, source_param: str) -> dict[str, Any]:
    """The chat content part other APIs' images become (Responses `input_image`, Anthropic `image`);
    `source_param` is where the client put it, so errors name the field it sent."""
    return {"type": "image_url", "image_url": {"url": url}, "source_param": source_param}
