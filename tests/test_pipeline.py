"""ZImageL2PPipeline on the tiny model set: sampling, CFG, sizes, batching, img2img, training inputs, errors."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from diffsynth.configs import MODEL_CONFIGS
from diffsynth.core import ModelConfig, hash_model_file
from diffsynth.diffusion.loss import FlowMatchSFTLoss
from PIL import Image
from safetensors.torch import save_file
from tiny_checkpoints import tiny_latent_state_dict

from diffsynth_l2p._import_alias import ALIAS, PipelineAliasFinder
from diffsynth_l2p.model_set import DEFAULT_MODEL_DIR
from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.models.text_encoder import Qwen3TextEncoder
from diffsynth_l2p.pipelines.loading import load_pipeline, resolve_model_files
from diffsynth_l2p.pipelines.z_image_l2p import ZImageL2PPipeline, default_sigma_shift, model_fn_z_image_l2p
from diffsynth_l2p.registry import register_text_encoder
from diffsynth_l2p.tiny import TINY_TEXT_ENCODER_CONFIG
from diffsynth_l2p.tiny_world.shape_eval import score_image

PROMPT = "two red circles above a blue square"
FAST = dict(height=64, width=64, num_inference_steps=3, progress_bar_cmd=lambda steps: steps)


@pytest.fixture(scope="module")
def pipe(tiny_model_set) -> ZImageL2PPipeline:
    return load_pipeline(tiny_model_set)


@pytest.fixture(scope="module")
def shipped_pipe() -> ZImageL2PPipeline:
    """The shipped (trained) tiny model, whose images ShapeEval can judge."""
    return load_pipeline(DEFAULT_MODEL_DIR)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class FinalSamples:
    """Records the [-1, 1] tensors the pipeline turns into PIL images."""

    def __init__(self, pipe: ZImageL2PPipeline, monkeypatch) -> None:
        self.samples = []
        original = pipe.vae_output_to_image

        def record(sample, **kwargs):
            self.samples.append(sample.clone())
            return original(sample, **kwargs)

        monkeypatch.setattr(pipe, "vae_output_to_image", record)


def test_text_to_image_returns_rgb_pil_of_requested_size(pipe):
    image = pipe(PROMPT, **dict(FAST, height=48, width=80))
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (80, 48)


def test_same_seed_same_bytes_other_seed_other_image(pipe):
    first, again, other = (pipe(PROMPT, seed=seed, **FAST) for seed in (7, 7, 8))
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_call_defaults_come_from_the_loaded_config_the_1k_release_examples_by_default(pipe):
    import inspect

    defaults = {k: v.default for k, v in inspect.signature(ZImageL2PPipeline.__call__).parameters.items()}
    names = ("num_inference_steps", "cfg_scale", "seed", "height", "width", "cfg_max_sigma", "sigma_shift")
    assert [defaults[name] for name in names] == [None] * len(names) and defaults["num_images"] == 1
    fresh = ZImageL2PPipeline(device="cpu", torch_dtype=torch.float32)  # nothing loaded yet: the 1K release's
    assert fresh.with_defaults(**dict.fromkeys(names[:-1])) == dict(
        num_inference_steps=30, cfg_scale=2.0, seed=42, height=1024, width=1024, cfg_max_sigma=None
    )
    assert (fresh.sigma_shift_for(1024, 1024), fresh.sigma_shift_for(4096, 4096)) == (3.0, 4.5)
    assert (fresh.config, fresh.max_pixels, pipe.config) == (L2P_CONFIGS["1k"], 4096**2, L2P_CONFIGS["tiny"])
    assert pipe.with_defaults(cfg_scale=None, height=None, width=None) == dict(cfg_scale=4.0, height=64, width=64)
    assert pipe.with_defaults(cfg_max_sigma=None) == dict(cfg_max_sigma=0.8)  # the tiny models guide below 0.8
    assert pipe.with_defaults(cfg_scale=1.5, seed=0) == dict(cfg_scale=1.5, seed=0)


@pytest.mark.parametrize(
    "cfg_scale, batch_cfg, num_images, captions_per_step",
    [
        (1.0, True, 1, ["P"]),  # the negative prompt is neither encoded nor run
        (1.0, False, 1, ["P"]),
        (2.0, True, 1, ["PN"]),  # one forward: positive then negative
        (2.0, True, 2, ["PPNN"]),
        (2.0, False, 1, ["P", "N"]),  # DiffSynth's two passes
        (2.0, False, 2, ["PP", "NN"]),
    ],
)
def test_dit_forwards_per_step_and_their_captions(pipe, cfg_scale, batch_cfg, num_images, captions_per_step):
    encode = pipe.units[1].encode_prompt
    lengths = {key: len(encode(pipe, text, "cpu")[0]) for key, text in (("P", PROMPT), ("N", "green"))}
    assert lengths["P"] != lengths["N"]  # so the caption lengths tell the prompts apart
    forwards, encodes = [], []
    hooks = [
        pipe.dit.register_forward_pre_hook(lambda _, args: forwards.append((len(args[0]), [len(c) for c in args[2]]))),
        pipe.text_encoder.register_forward_hook(lambda *args: encodes.append(1)),
    ]
    try:
        pipe(
            PROMPT,
            negative_prompt="green",
            cfg_scale=cfg_scale,
            batch_cfg=batch_cfg,
            num_images=num_images,
            cfg_max_sigma=1.0,  # guidance at every step
            **FAST,
        )
    finally:
        for hook in hooks:
            hook.remove()
    step = [(len(keys), [lengths[key] for key in keys]) for keys in captions_per_step]
    assert forwards == step * FAST["num_inference_steps"]
    assert len(encodes) == (1 if cfg_scale == 1 else 2)


@pytest.mark.parametrize("cfg_max_sigma, guided_steps", [(None, [False, False, True]), (0.9, [False, True, True])])
def test_guidance_runs_only_at_sigmas_up_to_cfg_max_sigma(pipe, cfg_max_sigma, guided_steps):
    """3 steps at shift 3 have sigmas 1, 0.857 and 0.6; the tiny models' default (0.8) guides only the last."""
    batches = []
    hook = pipe.dit.register_forward_pre_hook(lambda _, args: batches.append(len(args[0])))
    try:
        pipe(PROMPT, cfg_scale=2.0, cfg_max_sigma=cfg_max_sigma, **FAST)
    finally:
        hook.remove()
    assert batches == [2 if guided else 1 for guided in guided_steps]


@pytest.mark.parametrize("batch_cfg, cfg_max_sigma", [(True, 1.0), (False, 1.0), (True, 0.8), (False, 0.8)])
def test_sampling_equals_a_plain_euler_loop(pipe, monkeypatch, batch_cfg, cfg_max_sigma):
    steps, cfg, seed, shift = 4, 2.5, 3, 3.0
    recorder = FinalSamples(pipe, monkeypatch)
    kwargs = dict(FAST, num_inference_steps=steps, batch_cfg=batch_cfg, cfg_max_sigma=cfg_max_sigma)
    image = pipe(PROMPT, negative_prompt="yellow", cfg_scale=cfg, seed=seed, **kwargs)

    encode = pipe.units[1].encode_prompt
    positive, negative = encode(pipe, PROMPT, "cpu"), encode(pipe, "yellow", "cpu")
    x = torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(seed))
    sigmas = torch.linspace(1, 0, steps + 1)
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)  # sigma shift; the last sigma stays 0
    with torch.no_grad():
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            t = (sigma * 1000).reshape(1)
            v_pos, v_neg = pipe.dit(x, t, positive), pipe.dit(x, t, negative)
            scale = cfg if sigma <= cfg_max_sigma else 1.0  # no guidance above cfg_max_sigma
            x = x + (v_neg + scale * (v_pos - v_neg)) * (sigma_next - sigma)
    assert (recorder.samples[0] - x[0]).abs().max().item() <= 1e-5
    expected = (((x[0] + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(image), expected)


@pytest.mark.parametrize("prompt, seed", [("a red circle left of a blue triangle", 0), ("two green triangles", 7)])
def test_batched_cfg_images_equal_two_pass_images(shipped_pipe, prompt, seed):
    kwargs = dict(FAST, num_inference_steps=10, cfg_scale=4.0, seed=seed)
    batched, two_pass = (pixels(shipped_pipe(prompt, batch_cfg=batch_cfg, **kwargs)) for batch_cfg in (True, False))
    assert np.abs(batched - two_pass).mean() < 2.0  # batch rounding only: a few levels on a few pixels
    assert score_image(batched.astype(np.uint8), prompt) == score_image(two_pass.astype(np.uint8), prompt)


@pytest.mark.parametrize("size", [(112, 112), (64, 176), (16, 16)])
def test_any_multiple_of_16_works_including_token_counts_not_multiple_of_32(pipe, size):
    height, width = size  # 112x112 = 7x7 = 49 tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = pipe(PROMPT, **dict(FAST, height=height, width=width, num_inference_steps=2))
    assert image.size == (width, height)
    assert np.isfinite(pixels(image)).all()


def test_size_not_multiple_of_16_is_rounded_up_with_a_warning(pipe):
    with pytest.warns(UserWarning, match=r"rounded up to 64x112"):
        image = pipe(PROMPT, **dict(FAST, height=50, width=100, num_inference_steps=1))
    assert image.size == (112, 64)


def test_sizes_over_the_pixel_cap_or_the_position_grid_are_rejected_before_allocating(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "generate_noise", lambda *a, **k: pytest.fail("noise was allocated"))
    with pytest.raises(ValueError, match=r"max_pixels"):
        pipe(PROMPT, **dict(FAST, height=100_000, width=100_000))
    with pytest.raises(ValueError, match=r"position embedding covers at most 128x128 tokens"):
        pipe(PROMPT, **dict(FAST, height=4096, width=64))
    monkeypatch.setattr(pipe, "max_pixels", 32 * 32)
    with pytest.raises(ValueError, match=r"over the cap of 1,024 \(max_pixels\)"):
        pipe(PROMPT, **FAST)


def test_num_images_equals_separate_calls_with_consecutive_seeds(pipe, monkeypatch):
    recorder = FinalSamples(pipe, monkeypatch)
    batch = pipe(PROMPT, seed=11, num_images=2, **FAST)
    singles = [pipe(PROMPT, seed=seed, **FAST) for seed in (11, 12)]
    assert isinstance(batch, list) and len(batch) == 2
    for index in range(2):
        assert (recorder.samples[index] - recorder.samples[2 + index]).abs().max().item() <= 1e-5
        assert np.abs(pixels(batch[index]) - pixels(singles[index])).max() <= 1
    assert batch[0].tobytes() != batch[1].tobytes()


def test_call_unwraps_one_image_and_generate_images_always_returns_a_list(pipe):
    single = pipe(PROMPT, seed=5, **FAST)
    listed = pipe.generate_images(PROMPT, seed=5, **FAST)
    assert isinstance(single, Image.Image) and isinstance(listed, list) and len(listed) == 1
    assert listed[0].tobytes() == single.tobytes()


def test_model_fn_shares_one_prompt_across_the_batch(pipe):
    embeds = pipe.units[1].encode_prompt(pipe, PROMPT, "cpu")
    latents = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    timestep = torch.tensor([700.0])
    with torch.no_grad():
        batched = model_fn_z_image_l2p(pipe.dit, latents, timestep, embeds)
        single = [model_fn_z_image_l2p(pipe.dit, latents[i : i + 1], timestep, embeds) for i in range(2)]
    torch.testing.assert_close(batched, torch.cat(single), atol=1e-5, rtol=0)


def smooth_image(size: int = 64) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 1 - (x - 0.5) ** 2 - (y - 0.5) ** 2], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((pixels(a).astype(np.float64) - pixels(b)) ** 2)
    return 10 * np.log10(255**2 / mse)


def test_img2img_with_tiny_strength_stays_close_to_the_input(pipe):
    source = smooth_image()
    close = pipe(PROMPT, input_image=source, denoising_strength=0.01, **FAST)
    far = pipe(PROMPT, input_image=source, denoising_strength=1.0, **FAST)
    assert psnr(close, source) >= 30
    assert psnr(far, source) < 20


def test_img2img_batch_noises_each_image_with_its_own_seed(pipe):
    images = pipe(PROMPT, input_image=smooth_image(), denoising_strength=0.01, num_images=2, **FAST)
    assert images[0].tobytes() != images[1].tobytes()
    assert min(psnr(image, smooth_image()) for image in images) >= 30


def test_img2img_resizes_the_input_to_the_requested_size(pipe):
    image = pipe(PROMPT, input_image=smooth_image(96), denoising_strength=0.01, **FAST)
    assert image.size == (64, 64) and psnr(image, smooth_image(64)) >= 25


def test_training_mode_inputs_fit_flow_match_sft_loss(pipe):
    training = ZImageL2PPipeline(device="cpu", torch_dtype=torch.float32)
    training.dit, training.text_encoder, training.tokenizer = pipe.dit, pipe.text_encoder, pipe.tokenizer
    training.scheduler.set_timesteps(1000, training=True)
    source = smooth_image()
    shared = dict(input_image=source, height=64, width=64, seed=0, rand_device="cpu", cfg_scale=1, num_images=1)
    posi, nega = {"prompt": PROMPT}, {"negative_prompt": ""}
    for unit in training.units:
        shared, posi, nega = training.unit_runner(unit, training, shared, posi, nega)
    assert torch.equal(
        shared["latents"], training.generate_noise((1, 3, 64, 64), seed=0, rand_torch_dtype=torch.float32)
    )
    x0 = shared["input_latents"]
    assert x0.shape == (1, 3, 64, 64) and x0.min() >= -1 and x0.max() <= 1
    np.testing.assert_allclose(((x0[0].permute(1, 2, 0) + 1) * 127.5).numpy(), np.asarray(source), atol=1e-3)
    torch.manual_seed(0)
    loss = FlowMatchSFTLoss(training, **shared, **posi)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0


def test_non_image_input_image_names_the_fix(pipe):
    with pytest.raises(TypeError, match=r"PIL.Image.open\(path\)"):
        pipe(PROMPT, input_image="photo.png", **FAST)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_inference_steps=0), ValueError, "num_inference_steps must be an integer >= 1, got 0"),
        (dict(num_images=0), ValueError, "num_images must be an integer >= 1"),
        (dict(height=0), ValueError, "height must be an integer >= 16, got 0"),
        (dict(height=15), ValueError, "height must be an integer >= 16, got 15"),
        (dict(width=64.0), ValueError, "width must be an integer, got 64.0"),
        (dict(cfg_scale=float("nan")), ValueError, "cfg_scale must be a finite number, got nan"),
        (dict(cfg_scale=float("inf")), ValueError, "cfg_scale must be a finite number, got inf"),
        (dict(cfg_scale=-1.0), ValueError, "cfg_scale must be >= 0, got -1"),
        (dict(sigma_shift=0.0), ValueError, "sigma_shift must be > 0, got 0"),
        (dict(sigma_shift=float("nan")), ValueError, "sigma_shift must be a finite number"),
        (dict(cfg_max_sigma=0.0), ValueError, "cfg_max_sigma must be > 0, got 0"),
        (dict(seed=-1), ValueError, r"seed must be an integer in 0..18446744073709551615, got -1"),
        (dict(seed=2**64 - 1, num_images=2), ValueError, r"seed must be an integer in 0..18446744073709551614"),
        (dict(denoising_strength=0.0), ValueError, r"denoising_strength must be in \(0, 1\]"),
        (dict(denoising_strength=0.5), ValueError, "only applies to img2img: pass input_image"),
        (dict(negative_prompt=None), TypeError, "negative_prompt must be a string"),
    ],
)
def test_bad_arguments_are_rejected(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe(PROMPT, **dict(FAST, **kwargs))


def test_default_sigma_shift_grows_with_image_area():
    assert default_sigma_shift(64, 64) == default_sigma_shift(1024, 1024) == 3.0
    assert default_sigma_shift(2048, 2048) == pytest.approx(3.75)
    assert default_sigma_shift(4096, 4096) == pytest.approx(4.5)


def load(files: dict, **kwargs) -> ZImageL2PPipeline:
    configs = [ModelConfig(path=files["dit"]), ModelConfig(path=files["text_encoder"])]
    return ZImageL2PPipeline.from_pretrained(
        torch_dtype=torch.float32,
        device=kwargs.pop("device", "cpu"),
        model_configs=kwargs.pop("model_configs", configs),
        tokenizer_config=kwargs.pop("tokenizer_config", ModelConfig(path=files["tokenizer"])),
        **kwargs,
    )


def test_missing_parts_raise_errors_that_name_the_fix(tiny_model_set, tmp_path, monkeypatch):
    files = tiny_model_set
    with pytest.raises(ValueError, match=r"No Z-Image text encoder loaded.*text_encoder"):
        load(files, model_configs=[ModelConfig(path=files["dit"])])
    with pytest.raises(ValueError, match=r"No L2P DiT loaded.*model-1k-merge.safetensors"):
        load(files, model_configs=[ModelConfig(path=files["text_encoder"])])
    with pytest.raises(ValueError, match=r"No tokenizer loaded"):
        load(files, tokenizer_config=None)
    with pytest.raises(FileNotFoundError, match=r"directory not found"):
        load(files, tokenizer_config=ModelConfig(path=str(tmp_path / "no-tokenizer")))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "True")
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(tmp_path))
    default_tokenizer = ModelConfig(model_id="Tongyi-MAI/Z-Image-Turbo", origin_file_pattern="tokenizer/")
    with pytest.raises(FileNotFoundError, match=r"Tongyi-MAI/Z-Image-Turbo.*DIFFSYNTH_SKIP_DOWNLOAD"):
        load(files, tokenizer_config=default_tokenizer)


def test_latent_z_image_dit_is_rejected_with_convert_hint(tiny_model_set, tmp_path):
    path = tmp_path / "latent.safetensors"
    save_file(tiny_latent_state_dict(), str(path))
    entry = {
        "model_hash": hash_model_file(str(path)),
        "model_name": "z_image_dit",
        "model_class": "diffsynth.models.z_image_dit.ZImageDiT",
    }
    MODEL_CONFIGS.append(entry)
    try:
        with pytest.raises(ValueError, match=r"latent Z-Image DiT checkpoint.*`l2p convert`"):
            load(
                tiny_model_set,
                model_configs=[ModelConfig(path=str(path)), ModelConfig(path=tiny_model_set["text_encoder"])],
            )
        with pytest.raises(ValueError, match=r"exactly one L2P DiT.*l2p convert"):
            resolve_model_files([str(path), *tiny_model_set["text_encoder"], tiny_model_set["tokenizer"]])
    finally:
        MODEL_CONFIGS.remove(entry)


def test_text_encoder_of_another_width_is_rejected(tiny_model_set, tmp_path):
    config = dict(TINY_TEXT_ENCODER_CONFIG, hidden_size=32, head_dim=16)
    register_text_encoder(**config)
    path = tmp_path / "narrow.safetensors"
    save_file(Qwen3TextEncoder(**config).state_dict(), str(path))
    with pytest.raises(ValueError, match=r"text encoder's width 32 is not the DiT's caption width 64"):
        load(tiny_model_set, model_configs=[ModelConfig(path=tiny_model_set["dit"]), ModelConfig(path=str(path))])


def test_unknown_checkpoint_is_rejected_before_loading(tiny_model_set, tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError, match=r"not a checkpoint DiffSynth or diffsynth-l2p knows"):
        load(tiny_model_set, model_configs=[ModelConfig(path=str(path))])


CPU_OFFLOAD = dict(offload_device="cpu", offload_dtype=torch.float32, onload_device="cpu", onload_dtype=torch.float32)
DISK_OFFLOAD = dict(
    offload_device="disk",
    offload_dtype="disk",
    onload_device="disk",
    onload_dtype="disk",
    preparing_device="cpu",
    preparing_dtype=torch.float32,
)


@pytest.mark.parametrize("offload", [CPU_OFFLOAD, DISK_OFFLOAD], ids=["cpu-offload", "disk-offload"])
def test_vram_management_and_vram_limit_work_on_cpu(tiny_model_set, pipe, offload):
    configs = [
        ModelConfig(path=tiny_model_set["dit"], **offload),
        ModelConfig(path=tiny_model_set["text_encoder"], **offload),
    ]
    with pytest.warns(UserWarning, match="vram_limit is ignored on cpu"):
        managed = load(tiny_model_set, model_configs=configs, vram_limit=1.0)
    assert managed.vram_management_enabled
    assert managed(PROMPT, seed=5, **FAST).tobytes() == pipe(PROMPT, seed=5, **FAST).tobytes()


def test_resolve_model_files_reads_directories_and_explicit_paths(tiny_model_set, tmp_path):
    directory = str(tmp_path.parent / "does-not-exist")
    with pytest.raises(FileNotFoundError):
        resolve_model_files([directory])
    model_dir = str(tiny_model_set["tokenizer"]).rsplit("/", 1)[0]
    assert resolve_model_files(model_dir) == resolve_model_files([model_dir]) == tiny_model_set
    paths = [tiny_model_set["tokenizer"], *tiny_model_set["text_encoder"], tiny_model_set["dit"]]
    assert resolve_model_files(paths) == tiny_model_set


def test_import_contract_in_a_fresh_interpreter(tmp_path):
    code = "from diffsynth.pipelines.z_image_L2P import ZImagePipeline, ModelConfig; print(ZImagePipeline.__module__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "diffsynth_l2p.pipelines.z_image_l2p"


def test_meta_path_alias_builds_the_module_without_the_stub_file():
    spec = PipelineAliasFinder().find_spec(ALIAS)
    module = spec.loader.create_module(spec) or __import__("types").ModuleType(ALIAS)
    spec.loader.exec_module(module)
    assert module.ZImagePipeline is ZImageL2PPipeline and module.ModelConfig is ModelConfig
    assert PipelineAliasFinder().find_spec("diffsynth.pipelines.z_image") is None


def test_bf16_pipeline_keeps_pixels_and_noise_in_fp32(tiny_model_set, monkeypatch):
    """As in the release: fp32 noise and fp32 Euler steps; only the DiT computes in the pipeline dtype."""
    pipe = load_pipeline(tiny_model_set, torch_dtype=torch.bfloat16)
    seen = []
    original = pipe.model_fn

    def recording_model_fn(**kwargs):
        seen.append(kwargs["latents"].dtype)
        velocity = original(**kwargs)
        seen.append(velocity.dtype)
        return velocity

    monkeypatch.setattr(pipe, "model_fn", recording_model_fn)
    samples = FinalSamples(pipe, monkeypatch)
    pipe(PROMPT, seed=3, num_images=2, cfg_scale=1.0, **FAST)
    assert seen == [torch.float32, torch.bfloat16] * FAST["num_inference_steps"]
    assert samples.samples[0].dtype == torch.float32

    noise = pipe.units[2].process(pipe, height=64, width=64, seed=3, rand_device="cpu", num_images=2)["noise"]
    expected = [torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    assert noise.dtype == torch.float32 and torch.equal(noise, torch.cat(expected))


def test_pixels_are_rounded_to_uint8_like_the_release(pipe, monkeypatch):
    # (x + 1) / 2, clamped, * 255, rounded: worked out by hand for each value.
    values = [-1.0, 1.0, -0.5, 0.2, 0.9, -0.99, 2.0, -3.0]
    expected = [0, 255, 64, 153, 242, 1, 255, 0]  # truncation would give 63 for -0.5 and 152 for 0.2
    image = pipe.vae_output_to_image(torch.tensor(values).reshape(1, 1, 8).expand(3, 1, 8), pattern="C H W")
    assert np.asarray(image)[0, :, 0].tolist() == expected

    recorder = FinalSamples(pipe, monkeypatch)
    generated = np.asarray(pipe(PROMPT, **FAST)).astype(int)
    unit = ((recorder.samples[0].float() + 1) / 2).clamp(0, 1) * 255
    assert (generated == unit.round().permute(1, 2, 0).numpy()).all()
    assert (generated != unit.floor().permute(1, 2, 0).numpy()).any()  # the check tells rounding from truncation


def test_missing_devices_are_refused_before_loading(tiny_model_set, monkeypatch):
    monkeypatch.setattr(ZImageL2PPipeline, "download_and_load_models", lambda *a: pytest.fail("models were loaded"))
    with pytest.raises(ValueError, match="Unknown device 'bogus'"):
        load(tiny_model_set, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            load(tiny_model_set, device="cuda")
