"""What one demo request asks for, the limits it must respect, and its validation."""

from dataclasses import asdict, dataclass

MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 4000


@dataclass(frozen=True)
class Limits:
    """Allowed ranges for every control; the UI is built from them and the server checks them on every request."""

    min_size: int = 256
    max_size: int = 1024
    size_step: int = 16
    min_steps: int = 1
    max_steps: int = 100
    min_cfg: float = 0.1
    max_cfg: float = 10.0
    max_images: int = 4

    def __post_init__(self):
        if self.size_step < 1 or self.min_size % self.size_step or self.max_size % self.size_step:
            raise ValueError(
                f"Image size limits {self.min_size}-{self.max_size} must be multiples of the model's patch size "
                f"{self.size_step}."
            )
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(f"--min-size {self.min_size} must be positive and at most --max-size {self.max_size}.")


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


def _integer(name: str, value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}.") from None
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    return int(number)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    return float(value)


def _in_range(name: str, value, low, high, step: int | None = None) -> None:
    if not low <= value <= high or (step is not None and (value - low) % step):
        steps = f" in steps of {step}" if step is not None else ""
        raise ValueError(f"{name} {value} is out of range: it must be between {low} and {high}{steps}.")


def validate_request(
    limits: Limits,
    prompt,
    negative_prompt,
    steps,
    cfg_scale,
    width,
    height,
    seed,
    num_images,
) -> GenerationRequest:
    """Check raw UI/API values against ``limits`` and return the typed request; `ValueError` names what is wrong."""
    for name, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
        if not isinstance(text, str):
            raise ValueError(f"The {name} must be text, got {type(text).__name__}.")
        if len(text) > MAX_PROMPT_CHARS:
            raise ValueError(f"The {name} is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}.")
    if not prompt.strip():
        raise ValueError("The prompt is empty; describe the image to generate.")
    request = GenerationRequest(
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=_integer("steps", steps),
        cfg_scale=_number("CFG scale", cfg_scale),
        width=_integer("width", width),
        height=_integer("height", height),
        seed=_integer("seed", seed),
        num_images=_integer("number of images", num_images),
    )
    _in_range("steps", request.steps, limits.min_steps, limits.max_steps)
    _in_range("CFG scale", request.cfg_scale, limits.min_cfg, limits.max_cfg)
    _in_range("width", request.width, limits.min_size, limits.max_size, limits.size_step)
    _in_range("height", request.height, limits.min_size, limits.max_size, limits.size_step)
    _in_range("seed", request.seed, 0, MAX_SEED)
    _in_range("number of images", request.num_images, 1, limits.max_images)
    return request
