"""Media parts in requests: parsing every API's spelling, the limits, decoding, and placeholders in speculation."""

from __future__ import annotations

import asyncio
import base64
import io

import pytest
from PIL import Image

from api.anthropic.protocol import MessagesRequest
from api.anthropic.request import chat_messages
from backends.llamacpp.media import placeholder_token
from backends.llamacpp.speculation import SequenceDrafter, SpeculationOptions
from backends.media_inputs import MediaLimits, load_media
from chat.media import MEDIA_MARKER, MediaPart, image_from_url
from chat.messages import content_text
from errors import InvalidRequest, PayloadTooLarge

LIMITS = MediaLimits(max_items=2, max_bytes=50_000, max_pixels=100 * 100)


def _image(size=(8, 8), color=(200, 10, 10), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


def _url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_content_parts_become_markers_and_media_in_order():
    collected: list[MediaPart] = []
    content = [{"type": "text", "text": "Compare "}, {"type": "image_url", "image_url": {"url": _url(b"one")}},
               {"type": "text", "text": " and "}, {"type": "image_url", "image_url": {"url": _url(b"two")}}]
    text = content_text(content, "messages[0].content", collected.append)
    assert text == f"Compare {MEDIA_MARKER} and {MEDIA_MARKER}"
    assert [part.data for part in collected] == [b"one", b"two"]
    assert collected[1].param == "messages[0].content[3].image_url.url"
    with pytest.raises(InvalidRequest) as refused:  # a model without a projector
        content_text(content, "messages[0].content")
    assert refused.value.param == "messages[0].content[1].type"


@pytest.mark.parametrize("url", ["data:image/png,rawbytes", "data:image/png;base64,@@@", "ftp://host/x.png", "", None])
def test_image_urls_must_be_base64_data_or_http(url):
    with pytest.raises(InvalidRequest):
        image_from_url(url, "p")


def test_http_urls_are_kept_for_the_engine_to_fetch():
    assert image_from_url("https://example.com/a.png", "p").url == "https://example.com/a.png"


def test_anthropic_image_blocks_become_chat_image_parts():
    body = MessagesRequest(model="m", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
        {"type": "text", "text": "What is it?"}]}], system="Be brief.")
    messages = chat_messages(body)
    assert messages[1]["content"] == [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"},
                                       "source_param": "messages[0].content[0]"},
                                      {"type": "text", "text": "What is it?"}]


def _load(*datas: bytes, limits: MediaLimits = LIMITS):
    parts = tuple(MediaPart("image", f"p{i}", data=data) for i, data in enumerate(datas))
    return asyncio.run(load_media(parts, limits))


def test_images_decode_to_rgb_pixels_and_the_same_pixels_are_the_same_image():
    png, bmp = _image(fmt="PNG"), _image(fmt="BMP")
    first, second = _load(png, bmp)
    assert (first.width, first.height, len(first.pixels)) == (8, 8, 8 * 8 * 3)
    assert first.digest == second.digest  # another file format, the same picture
    assert _load(_image(color=(0, 0, 200)))[0].digest != first.digest


def test_limits_and_bad_files_name_the_part():
    cases = [
        (lambda: _load(_image(), _image(), _image()), InvalidRequest, "p2"),  # three images, two allowed
        (lambda: _load(_image(size=(101, 100))), InvalidRequest, "p0"),  # too many pixels
        (lambda: _load(_image() + b"\0" * 60_000), PayloadTooLarge, "p0"),  # too many bytes
        (lambda: _load(_image()[:40]), InvalidRequest, "p0"),  # truncated
        (lambda: _load(b"<svg></svg>"), InvalidRequest, "p0"),  # not an image Pillow reads
    ]
    for load, error, param in cases:
        with pytest.raises(error) as raised:
            load()
        assert raised.value.param == param


def test_urls_are_not_fetched_unless_the_operator_allows_it():
    with pytest.raises(InvalidRequest) as refused:
        asyncio.run(load_media((MediaPart("image", "p", url="http://127.0.0.1:9/x.png"),), LIMITS))
    assert "--media-fetch" in refused.value.message


def test_speculation_never_guesses_a_media_placeholder():
    image = placeholder_token(b"\x01\x02\x03\x04")
    assert image < 0
    prompt = [5, 6, 7, image, image, 8, 9, 5, 6, 7]  # "5 6 7" was followed by the image
    drafter = SequenceDrafter(prompt, SpeculationOptions(mode="ngram", draft_max=8))
    assert drafter.lookup(4) == []  # the only continuation is the image: nothing to guess
    drafter = SequenceDrafter([5, 6, 7, 1, image, 8, 5, 6], SpeculationOptions(mode="ngram", draft_max=8))
    assert drafter.lookup(4) == [7, 1]  # up to the image, not into it
