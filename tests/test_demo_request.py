"""Request validation against the demo's limits."""

import pytest

from diffsynth_l2p.demo.request import (
    MAX_SEED,
    GenerationRequest,
    Limits,
    size_limits,
    validate_request,
)

LIMITS = Limits()
VALID = dict(
    prompt="a red circle", negative_prompt="", steps=30, cfg_scale=2.0, width=1024, height=512, seed=42, num_images=2
)


def validate(**changes) -> GenerationRequest:
    return validate_request(LIMITS, **{**VALID, **changes})


def test_valid_values_become_a_typed_request():
    request = validate(steps=30.0, width="1024", cfg_scale=2)
    assert request == GenerationRequest("a red circle", "", 30, 2.0, 1024, 512, 42, 2)
    assert isinstance(request.steps, int) and isinstance(request.cfg_scale, float)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"width": 240}, "width 240 is out of range: it must be between 256 and 1024 in steps of 16"),
        ({"width": 1040}, "width 1040 is out of range"),
        ({"height": 520}, "height 520 is out of range: it must be between 256 and 1024 in steps of 16"),
        ({"steps": 0}, "steps 0 is out of range: it must be between 1 and 100"),
        ({"steps": 101}, "steps 101 is out of range"),
        ({"steps": 2.5}, "steps must be a whole number, got 2.5"),
        ({"steps": None}, "steps must be a whole number, got None"),
        ({"cfg_scale": 0.05}, "CFG scale 0.05 is out of range: it must be between 0.1 and 10.0"),
        ({"cfg_scale": "2"}, "CFG scale must be a number, got '2'"),
        ({"cfg_scale": True}, "CFG scale must be a number"),
        ({"seed": -1}, "seed -1 is out of range"),
        ({"seed": MAX_SEED + 1}, f"seed {MAX_SEED + 1} is out of range"),
        ({"seed": 2**64}, f"seed {2**64} is out of range: it must be between 0 and {MAX_SEED}"),
        ({"seed": 10**400}, "seed 1000000000000000000000000000000000"),
        ({"seed": True}, "seed must be a whole number, got True"),
        ({"steps": 10**9}, "steps 1000000000 is out of range"),
        ({"steps": float("inf")}, "steps must be a whole number, got inf"),
        ({"steps": "1e400"}, "steps must be a whole number, got '1e400'"),
        ({"width": 1e308}, r"width 1e\+308 is out of range"),
        ({"cfg_scale": float("nan")}, "CFG scale nan is out of range"),
        ({"cfg_scale": float("inf")}, "CFG scale inf is out of range"),
        ({"cfg_scale": 10**400}, "CFG scale 1000000000000000000000000000000000"),
        ({"num_images": 5}, "number of images 5 is out of range: it must be between 1 and 4"),
        ({"prompt": "   "}, "The prompt is empty"),
        ({"prompt": 3}, "The prompt must be text, got int"),
        ({"negative_prompt": "x" * 4001}, "The negative prompt is 4001 characters long; the limit is 4000"),
    ],
)
def test_invalid_values_are_rejected_with_the_field_and_range(changes, message):
    with pytest.raises(ValueError, match=message):
        validate(**changes)


def test_limits_follow_the_configured_sizes():
    small = Limits(min_size=64, max_size=128)
    assert validate_request(small, **{**VALID, "width": 64, "height": 128}).width == 64
    with pytest.raises(ValueError, match="width 256 is out of range: it must be between 64 and 128"):
        validate_request(small, **{**VALID, "width": 256, "height": 64})
    with pytest.raises(ValueError, match="multiples of the model's size step 16: pass --min-size and --max-size as"):
        Limits(min_size=100)
    with pytest.raises(ValueError, match="--min-size 512 must be positive and at most --max-size 256"):
        Limits(min_size=512, max_size=256)


def test_each_image_gets_its_own_reproducing_request():
    request = validate(seed=MAX_SEED - 1, num_images=3)
    assert request.image_seeds() == [MAX_SEED - 1, MAX_SEED, MAX_SEED + 1]
    single = request.for_image(2)
    assert (single.seed, single.num_images, single.prompt, single.width) == (MAX_SEED + 1, 1, "a red circle", 1024)


def test_pipeline_kwargs_name_the_pipeline_arguments():
    assert validate().pipeline_kwargs() == dict(
        prompt="a red circle", negative_prompt="", cfg_scale=2.0, height=512, width=1024, seed=42,
        num_inference_steps=30, num_images=2,
    )  # fmt: skip


@pytest.mark.parametrize(
    "size_step, native, expected",
    [
        (16, 64, (64, 1024)),  # tiny: its native 64 is below 256
        (16, 1024, (256, 1024)),  # 1K
        (64, 4096, (256, 1024)),  # 4K
        (128, 8192, (256, 1024)),  # 8K
        (320, 10240, (320, 960)),  # 10K: 256 rounds up, 1024 down
        (2048, 1024, (2048, 2048)),  # a step above 1024: one step
    ],
)
def test_default_size_limits_lie_on_the_models_size_grid(size_step, native, expected):
    limits = size_limits(size_step, native)
    assert (limits.min_size, limits.max_size, limits.size_step) == (*expected, size_step)


def test_explicit_size_limits_are_kept_or_rejected():
    assert size_limits(320, 10240, min_size=640, max_size=1920) == Limits(640, 1920, 320)
    assert size_limits(320, 10240, max_size=320) == Limits(320, 320, 320)
    with pytest.raises(ValueError, match="multiples of the model's size step 320"):
        size_limits(320, 10240, max_size=1024)
    with pytest.raises(ValueError, match="--min-size 1280 must be positive and at most --max-size 960"):
        size_limits(320, 10240, min_size=1280)


def test_clamp_size_stays_on_the_grid_and_in_range():
    limits = Limits(320, 960, 320)
    assert [limits.clamp_size(size) for size in (64, 320, 700, 960, 10240)] == [320, 320, 640, 960, 960]
