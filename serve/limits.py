"""Request limits and the checks that enforce them, before any model work.

Every check raises `e4t.errors.InvalidInput` with what was expected and what
was given; the servicer turns that into INVALID_ARGUMENT.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from e4t.errors import InvalidInput
from serve.errors import RateLimited

DEFAULT_PERSONALIZE_STEPS = 5
# tuning steps when a request leaves them unset, per personalization method
DEFAULT_METHOD_STEPS = {"e4t": DEFAULT_PERSONALIZE_STEPS, "textual_inversion": 1000, "dreambooth": 400}
DEFAULT_METHOD_STEPS["two_stage"] = 200  # e4t.two_stage.DEFAULT_STEPS
DEFAULT_METHOD_STEPS["break_a_scene"] = 300  # e4t.break_a_scene.DEFAULT_STEPS
DEFAULT_NUM_IMAGES = 4
DEFAULT_GENERATE_STEPS = 25
DEFAULT_PAGE_SIZE = 100

# Formats a client may upload; PIL can open many more, but each one is attack surface.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
# Modes with a well-defined RGB conversion (16/32-bit integer and float modes have none).
IMAGE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
CONCEPT_ID_RE = re.compile(r"c_[0-9a-f]{12}")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; the server's message size follows `max_request_bytes`."""

    max_request_bytes: int = 8 * 1024 * 1024  # image + mask of one Personalize
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 2000  # cheap guard before tokenizing
    max_num_images: int = 8
    max_generate_steps: int = 100
    max_personalize_steps: int = 50  # e4t
    max_textual_inversion_steps: int = 3000  # e4t.textual_inversion.MAX_STEPS
    max_dreambooth_steps: int = 1000  # e4t.dreambooth.MAX_STEPS
    max_break_a_scene_steps: int = 1000  # e4t.break_a_scene.MAX_STEPS
    max_two_stage_steps: int = 1000  # e4t.two_stage.MAX_STEPS
    max_guidance: float = 30.0
    max_seed: int = 2**32 - 1
    max_owner_chars: int = 128
    max_page_size: int = 1000

    def max_steps(self, method: str) -> int:
        """Most tuning steps one Personalize of `method` may ask for."""
        return {
            "e4t": self.max_personalize_steps,
            "textual_inversion": self.max_textual_inversion_steps,
            "dreambooth": self.max_dreambooth_steps,
            "break_a_scene": self.max_break_a_scene_steps,
            "two_stage": self.max_two_stage_steps,
        }[method]


def check_range(name: str, value: float, low: float, high: float) -> None:
    """Raises InvalidInput unless `low <= value <= high`."""
    if not low <= value <= high:
        raise InvalidInput(f"`{name}` has to be in [{low}, {high}] but is {value}.")


def check_concept_id(concept_id: str) -> str:
    """Returns `concept_id` if it is `c_` + 12 lowercase hex digits (so it is a safe file name)."""
    if not isinstance(concept_id, str) or not CONCEPT_ID_RE.fullmatch(concept_id):
        raise InvalidInput(f"A concept id has to be `c_` followed by 12 lowercase hex digits but is {concept_id!r}.")
    return concept_id


def check_owner(owner: str, limits: Limits) -> str:
    if len(owner) > limits.max_owner_chars:
        raise InvalidInput(f"`owner` has to be at most {limits.max_owner_chars} characters but has {len(owner)}.")
    return owner


def check_method(method: str, available: tuple[str, ...] = ("e4t",)) -> str:
    """Empty means the default (first available) method."""
    method = method or available[0]
    if method not in available:
        raise InvalidInput(f"method {method} is not available; available: {', '.join(available)}")
    return method


def decode_image(data: bytes, limits: Limits, *, what: str = "image", mode: str = "RGB") -> Image.Image:
    """Decodes an uploaded image to `mode` ("RGB" or "L"), checking its size BEFORE decoding pixels.

    Transparent pixels are composited on white so that a cut-out subject keeps a clean background.
    """
    # 1. bytes
    if not data:
        raise InvalidInput(f"`{what}` is required but no bytes were given.")
    if len(data) > limits.max_request_bytes:
        raise InvalidInput(f"`{what}` has to be at most {limits.max_request_bytes} bytes but has {len(data)}.")
    # 2. header only: Image.open reads the size without decoding the pixels
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as e:
        raise InvalidInput(f"{what} could not be decoded: it claims too many pixels ({e}).") from e
    except Exception as e:  # UnidentifiedImageError, SyntaxError, struct errors...: all mean "not an image"
        raise InvalidInput(f"{what} could not be decoded: {e} (expected one of {', '.join(IMAGE_FORMATS)}).") from e
    width, height = image.size
    if width < 1 or height < 1 or width * height > limits.max_image_pixels:
        raise InvalidInput(
            f"`{what}` has to have at most {limits.max_image_pixels} pixels but is {width}x{height} "
            f"({width * height} pixels)."
        )
    if image.mode not in IMAGE_MODES:
        raise InvalidInput(f"`{what}` mode has to be one of {', '.join(IMAGE_MODES)} but is {image.mode}.")
    # 3. pixels
    try:
        image.seek(0)  # first frame of an animation
        image.load()
    except Exception as e:  # truncated or corrupt data; also DecompressionBombError from lazy formats
        raise InvalidInput(f"{what} could not be decoded: {e}.") from e
    # 4. mode
    if mode == "L":
        return image.convert("L")
    if image.mode in ("LA", "PA", "RGBA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def count_prompt_tokens(tokenizer, prompt: str, concept_ids: list[str]) -> int:
    """Tokens of `prompt` without the special tokens; each `{concept}` takes one placeholder token.

    Counts like `e4t.prompts`: the text between concept names is tokenized piece by piece.
    """
    if not concept_ids:
        pieces = [prompt]
    else:
        pieces = re.split("|".join(re.escape("{" + c + "}") for c in concept_ids), prompt)
    n = len(pieces) - 1
    for piece in pieces:
        if piece.strip():
            n += len(tokenizer(piece.strip(), add_special_tokens=False)["input_ids"])
    return n


def check_prompt(
    prompt: str, limits: Limits, *, tokenizer, concept_ids: list[str], what: str = "prompt", required: bool = True
) -> None:
    """Non-empty (when required) and within the text encoder's context minus its BOS/EOS tokens."""
    if required and not prompt.strip():
        raise InvalidInput(f"`{what}` has to be a non-empty string but is {prompt!r}.")
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidInput(f"`{what}` has to be at most {limits.max_prompt_chars} characters but has {len(prompt)}.")
    if not prompt:
        return
    max_tokens = int(tokenizer.model_max_length) - 2
    n = count_prompt_tokens(tokenizer, prompt, concept_ids)
    if n > max_tokens:
        raise InvalidInput(f"`{what}` has to be at most {max_tokens} tokens but has {n}.")


@dataclass(frozen=True)
class TenantLimits:
    """Per tenant: a token bucket over every E4T RPC, and a quota of stored concepts (0: none)."""

    rate: float = 0.0  # requests per second, refilled continuously; 0 = unlimited
    burst: int = 10  # requests allowed at once after an idle spell
    max_concepts: int = 0


class RateLimiter:
    """Token buckets per tenant; thread-safe. `acquire` raises RateLimited with the wait that would succeed."""

    def __init__(self, limits: TenantLimits, clock: Callable[[], float] = time.monotonic) -> None:
        if limits.rate < 0 or limits.burst < 1:
            raise ValueError(f"rate has to be >= 0 and burst >= 1 but are {limits.rate} and {limits.burst}.")
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def acquire(self, tenant: str) -> None:
        if self.limits.rate == 0:
            return
        rate, burst = self.limits.rate, float(self.limits.burst)
        with self._lock:
            now = self._clock()
            tokens, at = self._buckets.get(tenant, (burst, now))
            tokens = min(burst, tokens + (now - at) * rate)
            if tokens < 1.0:
                self._buckets[tenant] = (tokens, now)
                wait = (1.0 - tokens) / rate
                raise RateLimited(
                    f"tenant {tenant or '(open)'} is over its rate of {rate:g} requests/s "
                    f"(burst {self.limits.burst}); retry after {wait:.2f} s.",
                    retry_after_s=wait,
                )
            self._buckets[tenant] = (tokens - 1.0, now)
