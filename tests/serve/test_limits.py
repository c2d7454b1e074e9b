"""Request checks that need no model: images, ranges, ids, methods."""

import io
import struct
import zlib

import pytest
from PIL import Image

from e4t.errors import InvalidInput
from serve.limits import Limits, check_concept_id, check_method, check_range, decode_image

LIMITS = Limits()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims `width`x`height` but carries a few bytes of data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(5000, 5000), (100_000, 100_000)])
def test_decompression_bomb_is_rejected_before_decoding(size):
    # 5000x5000 passes PIL's own guard but not ours; 100000x100000 trips PIL's DecompressionBombError
    with pytest.raises(InvalidInput, match="pixels"):
        decode_image(png_header_claiming(*size), LIMITS)


@pytest.mark.parametrize("data", [b"definitely not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"GIF89a"])
def test_non_image_bytes(data):
    with pytest.raises(InvalidInput, match="image could not be decoded"):
        decode_image(data, LIMITS)


def test_truncated_image():
    data = png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(InvalidInput, match="could not be decoded"):
        decode_image(data[: len(data) // 2], LIMITS)


def test_empty_and_oversized_bytes():
    with pytest.raises(InvalidInput, match="required"):
        decode_image(b"", LIMITS)
    with pytest.raises(InvalidInput, match="at most 100 bytes"):
        decode_image(png_bytes(Image.effect_noise((64, 64), 50)), Limits(max_request_bytes=100))


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1", "CMYK"])
def test_modes_become_rgb(mode):
    image = Image.new(mode, (16, 12))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    decoded = decode_image(buf.getvalue(), LIMITS)
    assert decoded.mode == "RGB" and decoded.size == (16, 12)


def test_transparent_pixels_become_white():
    decoded = decode_image(png_bytes(Image.new("RGBA", (4, 4), (255, 0, 0, 0))), LIMITS)
    assert decoded.getpixel((0, 0)) == (255, 255, 255)


def test_unsupported_mode():
    with pytest.raises(InvalidInput, match="mode"):
        decode_image(png_bytes(Image.new("I;16", (8, 8))), LIMITS)


def test_mask_decodes_to_l():
    assert decode_image(png_bytes(Image.new("RGB", (8, 8), "white")), LIMITS, what="mask", mode="L").mode == "L"


def test_ranges_ids_methods():
    check_range("steps", 5, 1, 50)
    with pytest.raises(InvalidInput, match=r"`num_images` has to be in \[1, 8\] but is 100"):
        check_range("num_images", 100, 1, 8)
    assert check_concept_id("c_0123456789ab") == "c_0123456789ab"
    with pytest.raises(InvalidInput):
        check_concept_id("c_../../x")
    assert check_method("") == "e4t"
    with pytest.raises(InvalidInput, match="method dreambooth is not available; available: e4t"):
        check_method("dreambooth")
