"""What one demo request asks for, the limits it must respect, and its validation."""

from dataclasses import asdict, dataclass
from typing import Any

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 4000
DEFAULT_MIN_SIZE = 256
DEFAULT_MAX_SIZE = 1024


@dataclass(frozen=True)
class Limits:
    """Allowed ranges for every control; the UI is built from them and the server checks them on every request."""

    min_size: int = DEFAULT_MIN_SIZE
    max_size: int = DEFAULT_MAX_SIZE
    size_step: int = 16
    min_steps: int = 1
    max_steps: int = 100
    min_cfg: float = 0.1
    max_cfg: float = 10.0
    max_images: int = 4

    def __post_init__(self) -> None:
        if self.size_step < 1 or self.min_size % self.size_step or self.max_size % self.size_step:
            raise ValueError(
                f"Image size limits {self.min_size}-{self.max_size} must be multiples of the model's size step "
                f"{self.size_step}: pass --min-size and --max-size as multiples of {self.size_step}."
            )
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(f"--min-size {self.min_size} must be positive and at most --max-size {self.max_size}.")

    def clamp_size(self, size: int) -> int:
        """``size`` brought into the allowed range, rounded down to a multiple of the size step."""
        return max(self.min_size, min(size, self.max_size) // self.size_step * self.size_step)


def size_limits(size_step: int, native_size: int, min_size: int | None = None, max_size: int | None = None) -> Limits:
    """`Limits` for a model whose sizes are multiples of ``size_step``; unset sizes get defaults on that grid.

    The default smallest size is the first multiple of the step at or above 256 (or above the native size when that is
    smaller), the default largest is the last multiple at or below 1024 (at least one step). Sizes that are set must be
    multiples of the step themselves.
    """
    if min_size is None:
        min_size = -(-min(DEFAULT_MIN_SIZE, native_size) // size_step) * size_step
    if max_size is None:
        max_size = max(size_step, DEFAULT_MAX_SIZE // size_step * size_step)
    return Limits(min_size=min_size, max_size=max_size, size_step=size_step)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    steps: int = 30
    cfg_scale: float = 2.0
    width: int = 1024
    height: int = 1024
    seed: int = 42
    num_images: int = 1

    def pipeline_kwargs(self) -> dict:
        """The request as ``ZImageL2PPipeline.__call__`` arguments."""
        return dict(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            cfg_scale=self.cfg_scale,
            height=self.height,
            width=self.width,
            seed=self.seed,
            num_inference_steps=self.steps,
            num_images=self.num_images,
        )

    def image_seeds(self) -> list[int]:
        """Image i uses ``seed + i`` (the pipeline's rule), so each image reproduces alone with its own seed."""
        return [self.seed + index for index in range(self.num_images)]

    def for_image(self, index: int) -> "GenerationRequest":
        """The single-image request that reproduces image ``index``."""
        return GenerationRequest(**{**asdict(self), "seed": self.image_seeds()[index], "num_images": 1})


def _in_range(name: str, value: Any, number: float, low: float, high: float, step: int | None = None) -> None:
    """``number`` (``value`` as the client sent it) must lie in ``[low, high]``, on the ``step`` grid from ``low``."""
    if not low <= number <= high or (step is not None and (number - low) % step):  # NaN compares false: refused
        steps = f" in steps of {step}" if step is not None else ""
        raise ValueError(f"{name} {value} is out of range: it must be between {low} and {high}{steps}.")


def _integer(name: str, value: Any, low: int, high: int, step: int | None = None) -> int:
    """A whole number in range: ints stay exact however large, whole floats and numeric text are converted."""
    number = value
    if not isinstance(value, int) or isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if isinstance(value, bool) or number is None or not number.is_integer():
            raise ValueError(f"{name} must be a whole number, got {value!r}.")
    _in_range(name, value, number, low, high, step)
    return int(number)


def _number(name: str, value: Any, low: float, high: float) -> float:
    """A finite number in range (checked before converting, so huge ints cannot overflow)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    _in_range(name, value, value, low, high)
    return float(value)


def validate_request(
    limits: Limits,
    prompt: Any,
    negative_prompt: Any,
    steps: Any,
    cfg_scale: Any,
    width: Any,
    height: Any,
    seed: Any,
    num_images: Any,
) -> GenerationRequest:
    """Check raw UI/API values against ``limits`` and return the typed request; `ValueError` names what is wrong.

    The values are typed ``Any`` on purpose: they arrive unconverted from the page or the API (strings, floats, None)
    and this function is what checks and converts them.
    """
    for name, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
        if not isinstance(text, str):
            raise ValueError(f"The {name} must be text, got {type(text).__name__}.")
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"The {name} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    if not prompt.strip():
        raise ValueError("The prompt is empty; describe the image to generate.")
    return GenerationRequest(
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=_integer("steps", steps, limits.min_steps, limits.max_steps),
        cfg_scale=_number("CFG scale", cfg_scale, limits.min_cfg, limits.max_cfg),
        width=_integer("width", width, limits.min_size, limits.max_size, limits.size_step),
        height=_integer("height", height, limits.min_size, limits.max_size, limits.size_step),
        seed=_integer("seed", seed, 0, MAX_SEED),
        num_images=_integer("number of images", num_images, 1, limits.max_images),
    )
