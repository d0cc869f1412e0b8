"""The UHR (4K, 8K, 10K) L2P layouts: published hashes, head layer lists, forward semantics on small versions,
and the sampling defaults and pixel caps a pipeline picks up from a UHR checkpoint."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffsynth.core import hash_state_dict_keys
from diffsynth.diffusion import FlowMatchScheduler
from tiny_checkpoints import SMALL_BACKBONE

from diffsynth_l2p.cli import main
from diffsynth_l2p.generate import read_png_parameters
from diffsynth_l2p.models import DetailerHead, ZImageL2PDiT
from diffsynth_l2p.models.configs import L2P_CONFIGS, TINY_TEXT_ENCODER_CONFIG
from diffsynth_l2p.pipelines.loading import load_pipeline, native_config
from diffsynth_l2p.pipelines.z_image_l2p import default_sigma_shift
from diffsynth_l2p.registry import find_registered, meta_model, register_l2p_dit
from diffsynth_l2p.safetensors_io import save_module
from diffsynth_l2p.tiny import init_weights

# (module, in, out, kernel) of every conv in each released head; 3x3 unless marked 1.
HEAD_4K = [
    ("enc0.0", 3, 16, 3), ("enc0b.0", 16, 32, 3), ("enc1.0", 32, 64, 3), ("enc2.0", 64, 128, 3),
    ("enc3.0", 128, 256, 3), ("enc4.0", 256, 512, 3), ("bottleneck.0", 512 + 3840, 512, 1),
    ("up4.1", 512, 512, 3), ("dec4.0", 1024, 256, 3), ("up3.1", 256, 256, 3), ("dec3.0", 512, 128, 3),
    ("up2.1", 128, 128, 3), ("dec2.0", 256, 64, 3), ("up1.1", 64, 64, 3), ("dec1.0", 128, 32, 3),
    ("up0b.1", 32, 32, 3), ("dec0b.0", 64, 16, 3), ("up0.1", 16, 16, 3), ("dec0.0", 32, 16, 3),
    ("out_conv", 16, 3, 1),
]
HEAD_8K = [("enc_8k.0", 3, 3, 3), ("enc0.0", 3, 16, 3), *HEAD_4K[1:-1], ("up_8k.1", 16, 16, 3),
           ("dec_8k.0", 16 + 3, 16, 3), ("out_conv", 16, 3, 1)]
HEAD_10K = [
    ("enc_10k_a.0", 3, 3, 3), ("enc0.0", 3, 16, 3), ("enc0b.0", 16, 32, 3), ("enc1.0", 32, 64, 3),
    ("enc2.0", 64, 128, 3), ("enc3.0", 128, 256, 3), ("bottleneck.0", 256 + 3840, 512, 1),
    ("up3.1", 512, 256, 3), ("dec3.0", 512, 128, 3), *HEAD_4K[11:-1], ("up_10k_a.1", 16, 16, 3),
    ("dec_10k_a.0", 16 + 3, 16, 3), ("out_conv", 16, 3, 1),
]
RELEASED_HEADS = {"4k": (64, HEAD_4K), "8k": (128, HEAD_8K), "10k": (160, HEAD_10K)}

# Small versions of the UHR heads on a small backbone: same names, structure and patch sizes.
SMALL_HEADS = {
    "4k": dict(head_channels=(2, 4, 4, 8, 8, 8)),
    "8k": dict(head_channels=(3, 2, 4, 4, 8, 8, 8), head_decoder_channels=(2, 2, 4, 4, 8, 8, 8)),
    "10k": dict(
        head_channels=(3, 2, 4, 4, 8, 8), head_decoder_channels=(2, 2, 4, 4, 8, 8), head_bottleneck_channels=16
    ),
}
SMALL_SIZES = {"4k": (128, 192), "8k": (256, 128), "10k": (320, 640)}


def small_uhr_kwargs(name: str, **overrides) -> dict:
    """``ZImageL2PDiT`` kwargs of the small version of UHR head ``name`` (``overrides`` change the backbone)."""
    released = L2P_CONFIGS[name].kwargs
    kwargs = {**SMALL_BACKBONE, **SMALL_HEADS[name], **overrides}
    kwargs.update(all_patch_size=released["all_patch_size"], head_stage_names=released["head_stage_names"])
    return kwargs


def small_uhr(name: str, seed: int = 0, **overrides) -> ZImageL2PDiT:
    model = ZImageL2PDiT(**small_uhr_kwargs(name, **overrides))
    init_weights(model, seed)  # every parameter, including the pad tokens DiffSynth leaves uninitialised
    return model.eval()


def unrolled_head(head: DetailerHead, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The 1K head written out by module name: pre-pool skips, [pooled, features] and [upsampled, skip] concats."""
    names = head.stage_names
    skips, x = [], image
    for name in names:
        skips.append(getattr(head, f"enc{name}")(x))
        x = F.max_pool2d(skips[-1], 2)
    x = head.bottleneck(torch.cat([x, F.interpolate(features, size=x.shape[-2:], mode="nearest")], dim=1))
    for name, skip in zip(names[::-1], skips[::-1], strict=True):
        up = getattr(head, f"up{name}")[1](F.interpolate(x, scale_factor=2.0, mode="nearest"))
        x = getattr(head, f"dec{name}")(torch.cat([up, skip], dim=1))
    return head.out_conv(x)


@pytest.mark.parametrize("name", ["4k", "8k", "10k"])
def test_meta_build_reproduces_published_hash_and_layer_list(name):
    patch, layers = RELEASED_HEADS[name]
    config = L2P_CONFIGS[name]
    with torch.device("meta"):
        model = ZImageL2PDiT(**config.kwargs)
        base = ZImageL2PDiT()
    state = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected_head = {}
    for module, cin, cout, k in layers:
        expected_head[f"local_decoder.{module}.weight"] = (cout, cin, k, k)
        expected_head[f"local_decoder.{module}.bias"] = (cout,)
    assert {key: shape for key, shape in state.items() if key.startswith("local_decoder.")} == expected_head
    # Backbone: the 1K keys and shapes except the patch embedder, which now takes P*P*3 pixels.
    backbone = {key: shape for key, shape in state.items() if not key.startswith("local_decoder.")}
    base_backbone = {key: tuple(value.shape) for key, value in base.state_dict().items()
                     if not key.startswith(("local_decoder.", "all_x_embedder."))}
    assert backbone == {**base_backbone, f"all_x_embedder.{patch}-1.weight": (3840, patch * patch * 3),
                        f"all_x_embedder.{patch}-1.bias": (3840,)}
    assert hash_state_dict_keys(model.state_dict()) == config.published_hash
    assert (config.default_height, config.default_width) == (64 * patch, 64 * patch)


@pytest.mark.parametrize("name", ["4k", "8k", "10k"])
def test_published_hash_is_registered_with_rebuildable_kwargs(name):
    entries = find_registered(L2P_CONFIGS[name].published_hash)
    assert len(entries) == 1
    with torch.device("meta"):
        model = ZImageL2PDiT(**entries[0]["extra_kwargs"])
    assert hash_state_dict_keys(model.state_dict()) == L2P_CONFIGS[name].published_hash


@pytest.mark.parametrize("name", ["4k", "8k", "10k"])
def test_small_uhr_head_follows_the_release_forward(name):
    model = small_uhr(name)
    head = model.local_decoder
    height, width = SMALL_SIZES[name]
    patch = model.patch_size
    generator = torch.Generator().manual_seed(1)
    image = torch.randn(2, 3, height, width, generator=generator)
    features = torch.randn(2, 32, height // patch, width // patch, generator=generator)
    with torch.no_grad():
        ours = head(image, features)
        reference = unrolled_head(head, image, features)
    assert ours.shape == (2, 3, height, width)
    assert (ours - reference).abs().max().item() <= 1e-6
    assert ours.std().item() > 0


@pytest.mark.parametrize("name", ["4k", "8k", "10k"])
def test_small_uhr_dit_forward(name):
    model = small_uhr(name)
    height, width = SMALL_SIZES[name]
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, height, width, generator=generator)
    caps = [torch.randn(7, 16, generator=generator)]
    timestep = torch.tensor([500.0])
    with torch.no_grad():
        features = model.forward_features(x, timestep, caps)
        velocity = model(x, timestep, caps)
        head = model.local_decoder(x, features)
    assert features.shape == (1, 32, height // model.patch_size, width // model.patch_size)
    assert velocity.shape == x.shape
    assert torch.equal(velocity, -head)


def test_10k_upsamples_features_to_a_finer_bottleneck():
    model = small_uhr("10k")
    head = model.local_decoder
    assert (model.patch_size, head.stride, model.size_multiple) == (160, 64, 320)
    image = torch.randn(1, 3, 320, 320)
    features = torch.randn(1, 32, 2, 2)  # the 2x2 token grid; the bottleneck is 5x5
    upsampled = F.interpolate(features, size=(5, 5), mode="nearest")
    with torch.no_grad():
        assert torch.equal(head(image, features), head(image, upsampled))
    with pytest.raises(ValueError, match="multiple of 320"):
        model(torch.zeros(1, 3, 160, 320), torch.tensor([1.0]), [torch.zeros(3, 16)])


def test_invalid_uhr_head_configs_are_rejected():
    with pytest.raises(ValueError, match="use 6 stages"):
        ZImageL2PDiT(**{**SMALL_BACKBONE, "all_patch_size": (64,), "head_channels": (4, 4, 8, 8, 8)})
    with pytest.raises(ValueError, match="at most 7 stages"):
        ZImageL2PDiT(**{**SMALL_BACKBONE, "all_patch_size": (160,), "head_channels": (2,) * 8})
    with pytest.raises(ValueError, match="one entry per stage"):
        DetailerHead(channels=(4, 8), decoder_channels=(4,))
    with pytest.raises(ValueError, match="multiple of 4"):
        DetailerHead(feature_dim=8, channels=(4, 8))(torch.zeros(1, 3, 16, 18), torch.zeros(1, 8, 4, 4))


# --- Sampling defaults and pixel caps picked from the checkpoint -------------------------------------------------

PROMPT = "a red circle"
# The UHR release's sampling: 50 steps, CFG 4.0, seed 42, the scheduler's default shift (3) at every size.
UHR_STEPS, UHR_CFG, UHR_SEED = 50, 4.0, 42
SMALLEST = {"4k": (64, 64), "8k": (128, 128), "10k": (320, 320)}  # one size step each
NATIVE = {"4k": 4096, "8k": 8192, "10k": 10240}


class Stop(Exception):
    """Raised by a progress bar to end a call once the schedule is set, before any denoising step."""


def stop_before_denoising(timesteps):
    raise Stop


class Recorder:
    """Records the seeds the noise is drawn with, the CFG scale of every step, and (as progress bar) the steps."""

    def __init__(self, pipe, monkeypatch) -> None:
        self.seeds, self.cfg_scales, self.steps = [], [], []
        generate_noise, cfg_guided_model_fn = pipe.generate_noise, pipe.cfg_guided_model_fn

        def record_noise(shape, seed=None, **kwargs):
            self.seeds.append(seed)
            return generate_noise(shape, seed=seed, **kwargs)

        def record_cfg(model_fn, cfg_scale, *args, **kwargs):
            self.cfg_scales.append(cfg_scale)
            return cfg_guided_model_fn(model_fn, cfg_scale, *args, **kwargs)

        monkeypatch.setattr(pipe, "generate_noise", record_noise)
        monkeypatch.setattr(pipe, "cfg_guided_model_fn", record_cfg)

    def progress(self, timesteps):
        for timestep in timesteps:
            self.steps.append(float(timestep))
            yield timestep


def expected_sigmas(steps: int, shift=None) -> torch.Tensor:
    scheduler = FlowMatchScheduler("Z-Image")
    scheduler.set_timesteps(steps, shift=shift)
    return scheduler.sigmas


def save_registered_dit(kwargs: dict, directory) -> str:
    """A random ``ZImageL2PDiT(**kwargs)`` file whose hash is registered with ``kwargs``, as for a release file."""
    model = ZImageL2PDiT(**kwargs)
    init_weights(model, 0)
    path = str(directory / "dit.safetensors")
    save_module(model, path)
    register_l2p_dit(**kwargs)
    return path


@pytest.fixture(scope="module")
def uhr_dits(tmp_path_factory) -> dict:
    """Per UHR head layout, the small head on a backbone as wide as the tiny text encoder (kwargs of no named
    config, so only the layout tells the config) with a 64x64 token grid like the releases'."""
    width = TINY_TEXT_ENCODER_CONFIG["hidden_size"]
    return {
        name: save_registered_dit(
            small_uhr_kwargs(name, cap_feat_dim=width, axes_lens=(64, 64, 64)), tmp_path_factory.mktemp(name)
        )
        for name in ("4k", "8k", "10k")
    }


@pytest.fixture(scope="module")
def uhr_pipes(tiny_model_set, uhr_dits) -> dict:
    return {name: load_pipeline({**tiny_model_set, "dit": path}) for name, path in uhr_dits.items()}


def test_defaults_table():
    rows = {
        name: (c.default_steps, c.default_cfg_scale, c.default_sigma_shift, c.default_seed, c.default_height,
               c.default_width, c.size_step, c.max_pixels)
        for name, c in L2P_CONFIGS.items()
    }
    assert rows == {
        "1k": (30, 2.0, None, 42, 1024, 1024, 16, 4096**2),
        "4k": (50, 4.0, 3.0, 42, 4096, 4096, 64, 4096**2),
        "8k": (50, 4.0, 3.0, 42, 8192, 8192, 128, 8192**2),
        "10k": (50, 4.0, 3.0, 42, 10240, 10240, 320, 10240**2),
        "tiny": (30, 4.0, None, 42, 64, 64, 16, 4096**2),
    }  # fmt: skip
    for config in L2P_CONFIGS.values():  # the size step is the model's
        assert meta_model(**config.kwargs).size_multiple == config.size_step


@pytest.mark.parametrize("name", ["4k", "8k", "10k"])
def test_pipeline_takes_the_config_of_the_uhr_layout(uhr_pipes, uhr_dits, name):
    pipe = uhr_pipes[name]
    assert native_config(uhr_dits[name]) is L2P_CONFIGS[name]
    assert pipe.config is L2P_CONFIGS[name]
    assert pipe.max_pixels == L2P_CONFIGS[name].max_pixels
    assert pipe.height_division_factor == L2P_CONFIGS[name].size_step
    assert pipe.sigma_shift_for(NATIVE[name], NATIVE[name]) == 3.0


@pytest.mark.parametrize("name", ["4k", "8k", "10k"])
def test_uhr_call_without_overrides_samples_50_steps_cfg_4_seed_42_shift_3(uhr_pipes, name, monkeypatch):
    pipe = uhr_pipes[name]
    recorder = Recorder(pipe, monkeypatch)
    height, width = SMALLEST[name]
    image = pipe(PROMPT, height=height, width=width, progress_bar_cmd=recorder.progress)
    assert image.size == (width, height)
    assert (len(recorder.steps), set(recorder.cfg_scales), recorder.seeds) == (UHR_STEPS, {UHR_CFG}, [UHR_SEED])
    assert torch.equal(pipe.scheduler.sigmas, expected_sigmas(UHR_STEPS))


@pytest.mark.parametrize("name", ["4k", "8k", "10k"])
def test_uhr_shift_stays_3_above_1024_squared(uhr_pipes, name):
    # 1280x1280 is a multiple of every UHR size step; the 1K rule would give a shift of about 3.24 here.
    pipe = uhr_pipes[name]
    with pytest.raises(Stop):
        pipe(PROMPT, height=1280, width=1280, progress_bar_cmd=stop_before_denoising)
    assert torch.equal(pipe.scheduler.sigmas, expected_sigmas(UHR_STEPS, shift=3.0))
    assert not torch.allclose(pipe.scheduler.sigmas, expected_sigmas(UHR_STEPS, default_sigma_shift(1280, 1280)))


@pytest.mark.parametrize("name", ["1k", "tiny"])
def test_1k_and_tiny_keep_30_steps_and_the_resolution_rule(tiny_model_set, tmp_path, name):
    # "1k": the 1K layout on a small backbone (kwargs of no named config); "tiny": the tiny set as built.
    files = dict(tiny_model_set)
    if name == "1k":
        files["dit"] = save_registered_dit({**L2P_CONFIGS["tiny"].kwargs, "n_layers": 1}, tmp_path)
    pipe = load_pipeline(files)
    config = L2P_CONFIGS[name]
    assert (pipe.config, pipe.max_pixels) == (config, 4096 * 4096)
    with pytest.raises(Stop):
        pipe(PROMPT, height=1280, width=1280, progress_bar_cmd=stop_before_denoising)
    assert torch.allclose(pipe.scheduler.sigmas, expected_sigmas(30, shift=3.0 + 0.375 * math.log2(1.5625)))
    assert pipe.sigma_shift_for(4096, 4096) == pytest.approx(4.5)


@pytest.mark.parametrize("name", ["4k", "8k", "10k"])
def test_overrides_win_over_the_uhr_defaults(uhr_pipes, name, monkeypatch):
    pipe = uhr_pipes[name]
    recorder = Recorder(pipe, monkeypatch)
    height, width = SMALLEST[name]
    pipe(PROMPT, height=height, width=width, num_inference_steps=2, cfg_scale=1.5, seed=7, sigma_shift=5.0,
         progress_bar_cmd=recorder.progress)  # fmt: skip
    assert (len(recorder.steps), set(recorder.cfg_scales), recorder.seeds) == (2, {1.5}, [7])
    assert torch.equal(pipe.scheduler.sigmas, expected_sigmas(2, shift=5.0))


@pytest.mark.parametrize("name", ["8k", "10k"])
def test_native_8k_and_10k_pass_the_size_checks_and_larger_sizes_name_pipe_max_pixels(uhr_pipes, name):
    pipe = uhr_pipes[name]
    native, step = NATIVE[name], L2P_CONFIGS[name].size_step
    check = dict(prompt=PROMPT, negative_prompt="", cfg_scale=4.0, num_inference_steps=50, denoising_strength=1.0,
                 num_images=1, input_image=None)  # fmt: skip
    assert pipe.check_inputs(height=native, width=native, **check) == (native, native)
    with pytest.raises(ValueError, match=r"over the cap .*raise pipe\.max_pixels"):
        pipe.check_inputs(height=native, width=native + step, **check)
    pipe.max_pixels = native * (native + step)  # raising the cap is what the message asks for
    try:
        with pytest.raises(ValueError, match="position embedding covers at most 64x64 tokens"):
            pipe.check_inputs(height=native, width=native + step, **check)
    finally:
        pipe.use_config(pipe.config)
    assert pipe.max_pixels == native * native


def test_generate_cli_uses_the_uhr_defaults_and_refuses_sizes_over_its_cap(tiny_model_set, uhr_dits, tmp_path, capsys):
    model = ["--model", uhr_dits["8k"], *tiny_model_set["text_encoder"], tiny_model_set["tokenizer"]]
    out = tmp_path / "a.png"
    assert main(["generate", "--prompt", PROMPT, "--height", "128", "--width", "128", "--out", str(out), *model]) == 0
    parameters = read_png_parameters(out)
    assert (parameters["num_inference_steps"], parameters["cfg_scale"], parameters["seed"]) == (50, 4.0, 42)
    assert parameters["sigma_shift"] == 3.0
    capsys.readouterr()
    over = ["--height", "8192", "--width", "8320", "--out", str(tmp_path / "b.png")]
    assert main(["generate", "--prompt", PROMPT, *over, *model]) == 2
    error = capsys.readouterr().err
    assert "over the cap of 67,108,864" in error and "raise pipe.max_pixels" in error
