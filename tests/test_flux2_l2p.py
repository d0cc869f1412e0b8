"""FLUX.2 L2P: real-size layouts and hashes on meta, the DiT pinned to DiffSynth's FLUX.2 model function, forward
invariances, the family's fields and the tiny model set through ``Flux2L2PPipeline``."""

import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffsynth.configs import MODEL_CONFIGS, VRAM_MANAGEMENT_MODULE_MAPS
from diffsynth.core import ModelConfig, hash_model_file
from diffsynth.diffusion import FlowMatchScheduler
from diffsynth.models.flux2_dit import Flux2DiT
from diffsynth.pipelines.flux2_image import Flux2Unit_ImageIDs, Flux2Unit_Qwen3PromptEmbedder, model_fn_flux2
from safetensors import safe_open
from safetensors.torch import save_file

from diffsynth_l2p.families import get_family
from diffsynth_l2p.families.flux2 import (
    CONFIGS,
    DIT_HASHES,
    FAMILY,
    LATENT_KWARGS,
    TEXT_ENCODER_CLASS,
    TEXT_ENCODER_MODEL_NAME,
    TINY_BACKBONE,
    TINY_TEXT_ENCODER,
    TINY_TEXT_ENCODER_HASH,
    build_tiny_flux2,
)
from diffsynth_l2p.models import text_encoder
from diffsynth_l2p.models.flux2_l2p_dit import Flux2L2PDiT
from diffsynth_l2p.models.text_encoder import Qwen3TextEncoder
from diffsynth_l2p.pipelines.flux2_l2p import Flux2L2PPipeline, shift_sigmas
from diffsynth_l2p.registry import meta_hash, meta_model, register_text_encoder
from diffsynth_l2p.tiny import init_weights, write_tiny_latent

REAL_SIZES = ("klein-4b", "klein-9b", "dev")
# DiffSynth's registry hashes of the stock FLUX.2 transformers (configs/model_configs.py).
STOCK_HASHES = {
    "klein-4b": "3bde7b817fec8143028b6825a63180df",
    "klein-9b": "39c6fc48f07bebecedbbaa971ff466c8",
    "dev": "d38e1d5c5aec3b0a11e79327ac6e3b0f",
}
# Parameter counts (stock latent DiT, pixel DiT) measured on meta; the test also derives the pixel count.
COUNTS = {
    "klein-4b": (3_875_544_576, 3_867_934_979),
    "klein-9b": (9_078_581_248, 9_057_340_163),
    "dev": (32_223_281_152, 32_162_194_179),
}
PROMPT = "two red circles above a blue square"
FAST = dict(height=64, width=64, num_inference_steps=2, progress_bar_cmd=lambda steps: steps)


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def tiny_dit(seed: int = 0, **overrides) -> Flux2L2PDiT:
    model = Flux2L2PDiT(**{**CONFIGS["tiny"].kwargs, **overrides})
    init_weights(model, seed)
    return model.eval()


def random_inputs(batch: int, height: int = 64, width: int = 64, lengths=None, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, height, width, generator=generator)
    timestep = torch.rand(batch, generator=generator) * 1000
    width_text = TINY_BACKBONE["joint_attention_dim"]
    embeds = [torch.randn(length, width_text, generator=generator) for length in (lengths or [12] * batch)]
    return x, timestep, embeds


# ---- real sizes on meta -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL_SIZES)
def test_stock_meta_hash_is_diffsynths_registry_entry(name):
    assert meta_hash(Flux2DiT, **LATENT_KWARGS[name]) == STOCK_HASHES[name]
    entries = [entry for entry in MODEL_CONFIGS if entry["model_hash"] == STOCK_HASHES[name]]
    assert [(e["model_name"], e.get("extra_kwargs", {})) for e in entries] == [("flux2_dit", LATENT_KWARGS[name])]


@pytest.mark.parametrize("name", REAL_SIZES)
def test_pixel_layout_is_stock_minus_output_layers_with_pixel_embedder_and_head(name):
    stock = meta_model(Flux2DiT, **LATENT_KWARGS[name]).state_dict()
    pixel_model = meta_model(Flux2L2PDiT, **CONFIGS[name].kwargs)
    pixel = pixel_model.state_dict()
    width = pixel_model.inner_dim
    head = {key for key in pixel if key.startswith("local_decoder.")}
    outputs = {key for key in stock if key.startswith(("norm_out.", "proj_out."))}
    assert outputs == {"norm_out.linear.weight", "proj_out.weight"}
    assert set(pixel) == set(stock) - outputs | head
    assert tuple(stock["x_embedder.weight"].shape) == (width, 128)
    assert tuple(pixel["x_embedder.weight"].shape) == (width, 3 * 16 * 16)
    assert all(pixel[key].shape == stock[key].shape for key in pixel if key not in head and key != "x_embedder.weight")

    stock_count, pixel_count = COUNTS[name]
    assert param_count(meta_model(Flux2DiT, **LATENT_KWARGS[name])) == stock_count
    assert param_count(pixel_model) == pixel_count
    # The released 1K head has 10,085,123 parameters at width 3840; the bottleneck's 1x1 conv reads the DiT width.
    head_count = 10_085_123 + (width - 3840) * 512
    assert param_count(pixel_model.local_decoder) == head_count
    # Deleted: norm_out (Linear D -> 2D), proj_out (D -> 128), the latent x_embedder (128 -> D); new: 768 -> D, head.
    assert pixel_count == stock_count - 2 * width * width - 128 * width - 128 * width + 768 * width + head_count


def test_pixel_registry_hashes_and_entries_are_recomputed():
    for name, config in CONFIGS.items():
        assert meta_hash(Flux2L2PDiT, **config.kwargs) == DIT_HASHES[name], name
    assert meta_hash(Qwen3TextEncoder, **TINY_TEXT_ENCODER) == TINY_TEXT_ENCODER_HASH
    assert (TEXT_ENCODER_MODEL_NAME, TEXT_ENCODER_CLASS) == (
        text_encoder.TEXT_ENCODER_MODEL_NAME,
        text_encoder.TEXT_ENCODER_CLASS,
    )
    dits = [entry for entry in FAMILY.registry_entries if entry["model_name"] == FAMILY.dit_model_name]
    assert [(e["model_hash"], e["extra_kwargs"]) for e in dits] == [
        (DIT_HASHES[name], config.kwargs) for name, config in CONFIGS.items()
    ]
    assert {entry["model_class"] for entry in dits} == {f"{Flux2L2PDiT.__module__}.{Flux2L2PDiT.__qualname__}"}
    assert {
        entry["model_hash"] for entry in FAMILY.registry_entries if entry["model_name"] == TEXT_ENCODER_MODEL_NAME
    } == {TINY_TEXT_ENCODER_HASH}


def test_family_fields():
    assert get_family("flux2") is FAMILY
    assert FAMILY.latent_kwargs == LATENT_KWARGS and set(LATENT_KWARGS) == set(CONFIGS)
    for name, kwargs in LATENT_KWARGS.items():  # the pixel config is the latent one plus the head
        assert {k: v for k, v in CONFIGS[name].kwargs.items() if k != "head_channels"} == kwargs
    assert FAMILY.config_for_kwargs(dict(CONFIGS["tiny"].kwargs)) is CONFIGS["tiny"]
    assert VRAM_MANAGEMENT_MODULE_MAPS[FAMILY.dit_class] == {
        **VRAM_MANAGEMENT_MODULE_MAPS[FAMILY.latent_class],
        "torch.nn.Conv2d": "diffsynth.core.vram.layers.AutoWrappedModule",
    }
    model = meta_model(Flux2L2PDiT, **CONFIGS["klein-4b"].kwargs)
    names = [name for name, _ in model.named_parameters()]
    stock = meta_model(Flux2DiT, **LATENT_KWARGS["klein-4b"]).state_dict()
    for part in FAMILY.new_parts:  # no same-shaped counterpart in the latent checkpoint
        assert all(
            stock.get(k, torch.empty(0)).shape != v.shape
            for k, v in model.state_dict().items()
            if k.startswith(f"{part}.")
        )
    blocks = sorted({FAMILY.main_block(name) for name in names} - {None})
    assert blocks == [(0, i) for i in range(5)] + [(1, j) for j in range(20)]
    # The release preset's frozen middle: main blocks 4 .. 20 (double 4, single 0 .. 15); 42.9% stays trainable.
    ends = FAMILY.release_block_count(len(blocks))
    frozen = set(blocks[ends:-ends])
    assert min(frozen) == (0, 4) and max(frozen) == (1, 15)
    trainable = sum(p.numel() for name, p in model.named_parameters() if FAMILY.main_block(name) not in frozen)
    assert trainable == 1_659_629_315
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    adapted = [name for name in linears if re.fullmatch(FAMILY.lora_target, name)]
    per_double = [
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
        "attn.add_v_proj", "attn.to_add_out", "ff.linear_in", "ff.linear_out", "ff_context.linear_in",
        "ff_context.linear_out",
    ]  # fmt: skip
    assert sorted(adapted) == sorted(
        [f"transformer_blocks.{i}.{part}" for i in range(5) for part in per_double]
        + [f"single_transformer_blocks.{j}.attn.{part}" for j in range(20) for part in ("to_qkv_mlp_proj", "to_out")]
    )


# ---- the DiT ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("guidance_embeds", [False, True], ids=["klein-like", "dev-like"])
def test_features_are_what_diffsynths_model_fn_hands_to_the_output_layers(guidance_embeds):
    """The stock model function on a latent-style DiT with a 768-wide embedder, fed the 16x16 pixel patches."""
    stock = Flux2DiT(**{**TINY_BACKBONE, "in_channels": 768, "guidance_embeds": guidance_embeds})
    init_weights(stock, 3)
    pixel = tiny_dit(guidance_embeds=guidance_embeds)
    state = {k: v for k, v in stock.state_dict().items() if not k.startswith(("norm_out.", "proj_out."))}
    pixel.load_state_dict({**state, **pixel.local_decoder.state_dict(prefix="local_decoder.")})
    x, timestep, embeds = random_inputs(1, 48, 80)
    captured = {}
    stock.norm_out.register_forward_hook(lambda module, args, out: captured.update(tokens=args[0], temb=args[1]))
    patches = F.unfold(x, kernel_size=16, stride=16).transpose(1, 2)  # [1, 3*5, (c, p, q)], the VAE's packing order
    with torch.no_grad():
        stock_velocity = model_fn_flux2(
            stock,
            latents=patches,
            timestep=timestep,
            embedded_guidance=4.0,
            prompt_embeds=embeds[0][None],
            text_ids=Flux2Unit_Qwen3PromptEmbedder().prepare_text_ids(embeds[0][None]),
            image_ids=Flux2Unit_ImageIDs().prepare_latent_ids(3, 5),
        )
        features = pixel.forward_features(x, timestep, embeds)
        stock_inputs = dict(captured)
        tokens = features.flatten(2).transpose(1, 2)  # [1, 15, 64]
        # ...and through the stock output layers they give the stock latent velocity.
        relatent = stock.proj_out(stock.norm_out(tokens, stock_inputs["temb"]))
    assert features.shape == (1, 64, 3, 5)
    torch.testing.assert_close(tokens, stock_inputs["tokens"], rtol=0, atol=1e-5)
    torch.testing.assert_close(relatent, stock_velocity, rtol=0, atol=1e-5)
    if guidance_embeds:  # the embedded guidance reaches the time embedding
        pixel.embedded_guidance = 1.0
        with torch.no_grad():
            assert not torch.allclose(pixel.forward_features(x, timestep, embeds), features, atol=1e-3)


def test_forward_is_the_negated_head_and_batches_equal_single_samples():
    model = tiny_dit()
    x, timestep, embeds = random_inputs(3)
    with torch.no_grad():
        batched = model(x, timestep, embeds)
        singles = torch.cat([model(x[i : i + 1], timestep[i : i + 1], embeds[i : i + 1]) for i in range(3)])
        head = model.local_decoder(x, model.forward_features(x, timestep, embeds))
    assert batched.shape == (3, 3, 64, 64)
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched, -head, rtol=0, atol=0)
    with torch.no_grad():  # the prompt matters
        assert not torch.allclose(model(x[:1], timestep[:1], embeds[1:2]), batched[:1], atol=1e-4)


def test_prompts_of_different_lengths_in_one_batch_equal_separate_calls():
    model = tiny_dit()
    x, timestep, embeds = random_inputs(3, lengths=[7, 12, 7])
    with torch.no_grad():
        batched = model(x, timestep, embeds)
        singles = torch.cat([model(x[i : i + 1], timestep[i : i + 1], embeds[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-5)


def test_odd_token_grid_bf16_and_input_errors():
    model = tiny_dit()
    x, timestep, embeds = random_inputs(2, 48, 80)
    with torch.no_grad():
        reference = model(x, timestep, embeds)
        assert reference.shape == (2, 3, 48, 80)
        model_bf16 = tiny_dit().to(torch.bfloat16)
        low = model_bf16(x.bfloat16(), timestep.bfloat16(), [e.bfloat16() for e in embeds])
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()
    with pytest.raises(ValueError, match=r"Image size 40x64 must be a multiple of the patch size 16"):
        model(torch.zeros(1, 3, 40, 64), timestep[:1], embeds[:1])
    with pytest.raises(ValueError, match=r"Got 1 caption feature tensors for a batch of 2 images"):
        model(x, timestep, embeds[:1])


def test_gradient_checkpointing_gives_the_same_values_and_gradients():
    results = []
    for checkpointing in (False, True):
        model = tiny_dit().train()
        x, timestep, embeds = random_inputs(2, lengths=[5, 9])
        out = model(x, timestep, embeds, use_gradient_checkpointing=checkpointing)
        out.square().mean().backward()
        assert [name for name, p in model.named_parameters() if p.grad is None] == []  # no_gradient is empty
        results.append((out.detach(), model.x_embedder.weight.grad, model.transformer_blocks[0].attn.to_q.weight.grad))
    for plain, checkpointed in zip(*results, strict=True):
        torch.testing.assert_close(plain, checkpointed, rtol=0, atol=1e-6)


# ---- tiny model set and pipeline ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_flux2_set(tmp_path_factory) -> dict:
    return build_tiny_flux2(tmp_path_factory.mktemp("tiny-flux2"), seed=0)


def load(files: dict, **kwargs) -> Flux2L2PPipeline:
    configs = [ModelConfig(path=files["dit"]), ModelConfig(path=files["text_encoder"])]
    return Flux2L2PPipeline.from_pretrained(
        torch_dtype=torch.float32,
        device="cpu",
        model_configs=kwargs.pop("model_configs", configs),
        tokenizer_config=ModelConfig(path=files["tokenizer"]),
        **kwargs,
    )


@pytest.fixture(scope="module")
def pipe(tiny_flux2_set) -> Flux2L2PPipeline:
    return load(tiny_flux2_set)


def test_tiny_set_files_are_the_registered_layouts(tiny_flux2_set, tmp_path):
    assert hash_model_file(tiny_flux2_set["dit"]) == DIT_HASHES["tiny"]
    assert hash_model_file(tiny_flux2_set["text_encoder"]) == TINY_TEXT_ENCODER_HASH
    latent = tmp_path / "latent.safetensors"
    write_tiny_latent(FAMILY, latent, seed=0)
    assert hash_model_file(str(latent)) == meta_hash(Flux2DiT, **LATENT_KWARGS["tiny"])
    with safe_open(str(latent), "pt") as latent_file, safe_open(tiny_flux2_set["dit"], "pt") as pixel_file:
        latent_keys, pixel_keys = set(latent_file.keys()), set(pixel_file.keys())
        assert latent_keys - pixel_keys == {"norm_out.linear.weight", "proj_out.weight"}
        assert {key.split(".")[0] for key in pixel_keys - latent_keys} == {"local_decoder"}
        reshaped = {
            k
            for k in latent_keys & pixel_keys
            if latent_file.get_slice(k).get_shape() != pixel_file.get_slice(k).get_shape()
        }
        assert reshaped == {"x_embedder.weight"}


def test_pipeline_loads_the_tiny_config_and_encodes_prompts_with_the_stock_unit(pipe):
    assert isinstance(pipe.dit, Flux2L2PDiT) and pipe.config is CONFIGS["tiny"]
    assert pipe.height_division_factor == 16
    embeds = pipe.encode_prompts([PROMPT, "a dot"])
    assert [tuple(e.shape) for e in embeds] == [(512, 96), (512, 96)]
    stock = Flux2Unit_Qwen3PromptEmbedder().get_qwen3_prompt_embeds(
        pipe.text_encoder, pipe.tokenizer, [PROMPT], dtype=torch.float32, device="cpu"
    )
    torch.testing.assert_close(embeds[0], stock[0])
    assert not torch.allclose(embeds[0], embeds[1])


def test_schedule_is_diffsynths_flux2_one_and_a_sigma_shift_replaces_its_shift(pipe):
    stock = FlowMatchScheduler("FLUX.2")
    stock.set_timesteps(7, denoising_strength=0.8, dynamic_shift_len=(48 // 16) * (80 // 16))
    pipe.set_inference_timesteps(7, 0.8, None, 48, 80)
    torch.testing.assert_close(pipe.scheduler.timesteps, stock.timesteps, rtol=0, atol=0)
    mu = FlowMatchScheduler.compute_empirical_mu(15, 7)
    pipe.set_inference_timesteps(7, 0.8, math.exp(mu), 48, 80)  # the same shift, given explicitly
    torch.testing.assert_close(pipe.scheduler.sigmas, stock.sigmas, rtol=0, atol=1e-6)
    torch.testing.assert_close(pipe.scheduler.timesteps, stock.timesteps, rtol=0, atol=1e-3)
    pipe.set_inference_timesteps(7, 1.0, 3.0, 64, 64)
    linear = torch.linspace(1.0, 1 / 7, 7)
    torch.testing.assert_close(pipe.scheduler.sigmas, shift_sigmas(linear, 3.0), rtol=0, atol=1e-6)


def test_images_batches_and_odd_sizes(pipe):
    image = pipe(PROMPT, seed=3, **FAST)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.asarray(image).std() > 0
    batch = pipe(PROMPT, seed=3, num_images=2, **FAST)
    second = pipe(PROMPT, seed=4, **FAST)
    differences = [
        np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()
        for a, b in zip(batch, [image, second], strict=True)
    ]
    assert max(differences) <= 1  # batch rounding only
    guided = [pipe(PROMPT, negative_prompt="a dot", cfg_scale=3.0, seed=3, batch_cfg=b, **FAST) for b in (True, False)]
    assert np.abs(np.asarray(guided[0], np.int16) - np.asarray(guided[1], np.int16)).max() <= 1
    odd = pipe(PROMPT, seed=3, **{**FAST, "height": 48, "width": 80})
    assert odd.size == (80, 48)


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
def test_vram_managed_pipeline_gives_the_same_image(tiny_flux2_set, pipe, offload):
    configs = [ModelConfig(path=tiny_flux2_set[part], **offload) for part in ("dit", "text_encoder")]
    with pytest.warns(UserWarning, match="vram_limit is ignored on cpu"):
        managed = load(tiny_flux2_set, model_configs=configs, vram_limit=1.0)
    assert managed.dit.vram_management_enabled  # through the family's VRAM map: linears and the head's convs
    assert type(managed.dit.x_embedder).__name__ == "AutoWrappedLinear"
    assert type(managed.dit.local_decoder.out_conv).__name__ == "AutoWrappedModule"
    assert managed(PROMPT, seed=5, **FAST).tobytes() == pipe(PROMPT, seed=5, **FAST).tobytes()


def test_wrong_parts_raise_errors_that_name_the_fix(tiny_flux2_set, tiny_model_set, tmp_path):
    with pytest.raises(ValueError, match=r"No Qwen3 text encoder loaded.*FLUX.2-klein-4B.*Mistral"):
        load(tiny_flux2_set, model_configs=[ModelConfig(path=tiny_flux2_set["dit"])])
    with pytest.raises(ValueError, match=r"No L2P FLUX.2 DiT loaded.*l2p convert --family flux2"):
        load(tiny_flux2_set, model_configs=[ModelConfig(path=tiny_flux2_set["text_encoder"])])
    # The tiny Z-Image text encoder: 3 layers, width 64.
    with pytest.raises(ValueError, match=r"text encoder has 3 layers.*\(9, 18, 27\)"):
        configs = [ModelConfig(path=tiny_flux2_set["dit"]), ModelConfig(path=tiny_model_set["text_encoder"])]
        load(tiny_flux2_set, model_configs=configs)
    # An L2P Z-Image DiT is refused by the FLUX.2 pipeline.
    with pytest.raises(ValueError, match=r"is an L2P Z-Image DiT; load it with ZImageL2PPipeline"):
        load(tiny_flux2_set, model_configs=[ModelConfig(path=tiny_model_set["dit"])])
    latent = tmp_path / "latent.safetensors"
    write_tiny_latent(FAMILY, latent)
    entry = dict(model_hash=hash_model_file(str(latent)), model_name="flux2_dit", model_class=FAMILY.latent_class)
    MODEL_CONFIGS.append(entry)
    try:
        with pytest.raises(ValueError, match=r"latent FLUX.2 DiT checkpoint.*l2p convert --family flux2"):
            load(tiny_flux2_set, model_configs=[ModelConfig(path=str(latent))])
    finally:
        MODEL_CONFIGS.remove(entry)


def test_text_encoder_of_another_width_is_rejected(tiny_flux2_set, tmp_path):
    config = dict(TINY_TEXT_ENCODER, hidden_size=16, head_dim=8)
    register_text_encoder(**config)
    path = tmp_path / "narrow.safetensors"
    save_file(Qwen3TextEncoder(**config).state_dict(), str(path))
    with pytest.raises(ValueError, match=r"3 hidden states of the text encoder's width 16 do not make .* 96.*Mistral"):
        load(tiny_flux2_set, model_configs=[ModelConfig(path=tiny_flux2_set["dit"]), ModelConfig(path=str(path))])


def test_import_stub_exports_the_pipeline():
    stub = Path(__file__).resolve().parents[1] / "diffsynth" / "pipelines" / "flux2_image_L2P.py"
    spec = importlib.util.spec_from_file_location("flux2_image_L2P_stub", stub)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.Flux2ImagePipeline is Flux2L2PPipeline and module.ModelConfig is ModelConfig
