"""fp8 weight storage through DiffSynth's VRAM management, on the shipped tiny-world student (trained weights).

``load_pipeline(weight_dtype=torch.float8_e4m3fn)`` / ``l2p generate --fp8``: the weights are stored in fp8 and
computed in the pipeline's dtype (fp32 here: this CPU has no bf16 units).
"""

import numpy as np
import pytest
import torch
from diffsynth.core.vram.layers import AutoWrappedLinear, AutoWrappedModule
from PIL import Image

from diffsynth_l2p.cli import main
from diffsynth_l2p.models.configs import L2P_CONFIGS, TINY_TEXT_ENCODER_CONFIG
from diffsynth_l2p.models.text_encoder import Qwen3TextEncoder
from diffsynth_l2p.pipelines.loading import FP8_WEIGHT_DTYPE, load_pipeline
from diffsynth_l2p.registry import meta_model
from diffsynth_l2p.weight_memory import LINEAR_WEIGHT, stored_bytes

PROMPT = "two red circles above a blue square"
FAST = dict(height=64, width=64, num_inference_steps=3, progress_bar_cmd=lambda steps: steps)
# e4m3 keeps 3 mantissa bits: each weight is rounded by up to 2**-4 = 6.25% of itself (about 2% RMS). Through the
# whole tiny DiT this gives a velocity 5.8% off the fp32-stored one (measured); 10% leaves room for other seeds and
# inputs, while a layer left unconverted, double-scaled or computed in the wrong dtype is off by far more.
VELOCITY_TOLERANCE = 0.10
# Over 3 CFG steps (the text encoder is fp8 too) the 64x64 images differ by 6.2 uint8 levels on average (measured);
# twice that is the bound.
MEAN_PIXEL_TOLERANCE = 12.0


@pytest.fixture(scope="module")
def reference():
    return load_pipeline(torch_dtype=torch.float32)


@pytest.fixture(scope="module")
def fp8():
    return load_pipeline(torch_dtype=torch.float32, weight_dtype=FP8_WEIGHT_DTYPE)


def test_fp8_pipeline_stores_every_dit_tensor_in_fp8_in_diffsynth_wrappers(fp8):
    assert fp8.vram_management_enabled
    assert isinstance(fp8.dit.layers[0].attention.to_q, AutoWrappedLinear)
    assert isinstance(fp8.dit.local_decoder.enc1[0], AutoWrappedModule)  # the detailer head's convolutions
    assert {tensor.dtype for tensor in fp8.dit.state_dict().values()} == {FP8_WEIGHT_DTYPE}


def test_fp8_halves_the_stored_dit_bytes_and_matches_the_meta_prediction(fp8):
    bf16 = load_pipeline(torch_dtype=torch.bfloat16)  # loaded only, never run
    full, small = stored_bytes(bf16.dit), stored_bytes(fp8.dit)
    assert small[LINEAR_WEIGHT] / full[LINEAR_WEIGHT] <= 0.55
    assert sum(small.values()) / sum(full.values()) <= 0.55
    # What bench/fp8_memory.py computes for the 6B model from a meta build, checked on the loaded tiny model.
    meta = meta_model(**L2P_CONFIGS["tiny"].kwargs)
    assert stored_bytes(meta, torch.bfloat16) == full
    assert stored_bytes(meta, FP8_WEIGHT_DTYPE) == small
    encoder = meta_model(Qwen3TextEncoder, **TINY_TEXT_ENCODER_CONFIG)
    assert stored_bytes(encoder, FP8_WEIGHT_DTYPE) == stored_bytes(fp8.text_encoder)


def test_fp8_dit_velocity_is_within_tolerance_of_fp32_storage(reference, fp8):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 64, 64, generator=generator)
    caption = [torch.randn(7, L2P_CONFIGS["tiny"].kwargs["cap_feat_dim"], generator=generator)]
    timestep = torch.tensor([500.0])
    with torch.no_grad():
        expected, actual = reference.dit(x, timestep, caption), fp8.dit(x, timestep, caption)
    error = float((actual - expected).norm() / expected.norm())
    assert 1e-3 < error < VELOCITY_TOLERANCE  # really rounded to fp8, and only by that


def test_fp8_images_are_within_tolerance_of_fp32_storage(reference, fp8):
    expected = np.asarray(reference(PROMPT, seed=3, **FAST), dtype=np.float64)
    actual = np.asarray(fp8(PROMPT, seed=3, **FAST), dtype=np.float64)
    assert np.abs(actual - expected).mean() < MEAN_PIXEL_TOLERANCE


@pytest.mark.parametrize("weight_dtype", [torch.float16, torch.float8_e5m2, "fp8"])
def test_bad_weight_dtype_is_refused_naming_the_fix(weight_dtype):
    with pytest.raises(ValueError, match=r"weight_dtype must be None .* or torch\.float8_e4m3fn .* got"):
        load_pipeline(weight_dtype=weight_dtype)


def test_generate_fp8_option_matches_the_fp8_pipeline(fp8, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert "float8_e4m3fn" in capsys.readouterr().out
    out = tmp_path / "fp8.png"
    options = ["--steps", "2", "--cfg", "1.5", "--seed", "4", "--dtype", "float32"]
    assert main(["generate", "--prompt", PROMPT, "--out", str(out), "--fp8", *options]) == 0
    expected = fp8(PROMPT, cfg_scale=1.5, seed=4, num_inference_steps=2, height=64, width=64)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(expected))
