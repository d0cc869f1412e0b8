"""Qwen-Image L2P: real-size layouts on meta, orchestration pinned to DiffSynth, forward, tiny model set, pipeline."""

import filecmp
import fnmatch
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffsynth.configs import MODEL_CONFIGS, VRAM_MANAGEMENT_MODULE_MAPS
from diffsynth.core import ModelConfig, hash_model_file, hash_state_dict_keys
from diffsynth.diffusion import FlowMatchScheduler
from diffsynth.models.qwen_image_dit import QwenImageDiT
from diffsynth.pipelines.qwen_image import model_fn_qwen_image
from einops import rearrange
from safetensors.torch import load_file

from diffsynth_l2p.families.qwen_image import (
    CONFIGS,
    DIT_CLASS,
    DIT_HASHES,
    FAMILY,
    LATENT_CLASS,
    LATENT_KWARGS,
    TINY_BACKBONE,
    TINY_TEXT_ENCODER,
    TINY_TEXT_ENCODER_CLASS,
    TINY_TEXT_ENCODER_HASH,
    build_tiny_qwen_image,
)
from diffsynth_l2p.model_set import DEFAULT_MODEL_DIR, TOKENIZER_DIR
from diffsynth_l2p.models.detailer_head import DetailerHead
from diffsynth_l2p.models.qwen_image_l2p_dit import QwenImageL2PDiT, QwenImageLatentDiT, image_token_features
from diffsynth_l2p.models.text_encoder import QwenVLTextEncoder
from diffsynth_l2p.registry import meta_hash, meta_model, meta_state_shapes, register_all
from diffsynth_l2p.tiny import VOCABULARY, build_tokenizer, init_weights, save_tokenizer, write_tiny_latent

LAYERED = dict(use_layer3d_rope=True, use_additional_t_cond=True)  # Qwen-Image-Layered's registry kwargs
STOCK_HASHES = {"default": "0319a1cb19835fb510907dd3367c95ff", "layered": "8dc8cda05de16c73afa755e2c1ce2839"}
VARIANTS = {"default": {}, "layered": LAYERED}
TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)  # DiffSynth's QwenImageUnit_PromptEmbedder template; it drops the first 34 tokens
DROP = 34
FAST = dict(num_inference_steps=3, progress_bar_cmd=lambda steps: steps)


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def numel(shapes: dict) -> int:
    return sum(math.prod(shape) for shape in shapes.values())


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded weights with non-zero biases, so every path (biases, modulation shifts) is exercised."""
    init_weights(model, seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def expand_last(patterns, names) -> list:
    """``FAMILY.no_gradient`` with ``{last}`` replaced by the last main block's index among ``names``."""
    last = max(FAMILY.main_block(name)[1] for name in names if FAMILY.main_block(name))
    return [pattern.format(last=last) for pattern in patterns]


# --- real-size layouts on the meta device -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_latent_stand_in_is_the_registered_stock_layout(variant):
    kwargs = VARIANTS[variant]
    stock = meta_state_shapes(QwenImageDiT, **kwargs)
    assert meta_state_shapes(QwenImageLatentDiT, **kwargs) == stock
    registered = [
        entry["model_hash"]
        for entry in MODEL_CONFIGS
        if entry["model_name"] == "qwen_image_dit"
        and entry["model_class"] == class_path(QwenImageDiT)
        and entry.get("extra_kwargs", {}) == kwargs
    ]
    assert registered == [STOCK_HASHES[variant]]
    assert meta_hash(QwenImageDiT, **kwargs) == meta_hash(QwenImageLatentDiT, **kwargs) == STOCK_HASHES[variant]


@pytest.mark.parametrize("variant", VARIANTS)
def test_pixel_layout_is_stock_minus_outputs_plus_pixel_embedder_and_head(variant):
    kwargs = VARIANTS[variant]
    stock = meta_state_shapes(QwenImageDiT, **kwargs)
    pixel = meta_state_shapes(QwenImageL2PDiT, **kwargs)
    head = meta_state_shapes(DetailerHead, feature_dim=3072)
    outputs = {key: shape for key, shape in stock.items() if key.startswith(("norm_out.", "proj_out."))}
    expected = {key: shape for key, shape in stock.items() if key not in outputs}
    assert expected["img_in.weight"] == (3072, 64)
    expected["img_in.weight"] = (3072, 3 * 16 * 16)
    expected.update({f"local_decoder.{key}": shape for key, shape in head.items()})
    assert pixel == expected
    # Parameters: stock - norm_out (3072 -> 2 x 3072) - proj_out (3072 -> 64) + 704 more img_in inputs + head.
    assert numel(outputs) == (3072 * 6144 + 6144) + (3072 * 64 + 64)
    assert numel(pixel) == numel(stock) - numel(outputs) + (768 - 64) * 3072 + numel(head)
    if variant == "default":
        assert numel(stock) == 20_430_401_088 and len(stock) == 1933
        assert numel(pixel) == 20_423_178_499 and len(pixel) == 1957
        assert numel(head) == 9_691_907


def test_pixel_and_tiny_registry_hashes_recompute_on_meta():
    for name, config in CONFIGS.items():
        assert meta_hash(QwenImageL2PDiT, **config.kwargs) == DIT_HASHES[name]
    assert meta_hash(QwenVLTextEncoder, **TINY_TEXT_ENCODER) == TINY_TEXT_ENCODER_HASH
    entries = {entry["model_hash"]: entry for entry in FAMILY.registry_entries}
    assert set(entries) == {*DIT_HASHES.values(), TINY_TEXT_ENCODER_HASH}
    assert entries[DIT_HASHES["tiny"]]["extra_kwargs"] == CONFIGS["tiny"].kwargs
    assert entries[TINY_TEXT_ENCODER_HASH]["model_name"] == "qwen_image_text_encoder"
    assert (DIT_CLASS, LATENT_CLASS, TINY_TEXT_ENCODER_CLASS) == tuple(
        map(class_path, (QwenImageL2PDiT, QwenImageLatentDiT, QwenVLTextEncoder))
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_converts_from_its_latent_layout(name):
    """What ``l2p convert`` relies on: same keys and shapes but the outputs, ``img_in``'s inputs and the head."""
    latent = meta_state_shapes(QwenImageLatentDiT, **LATENT_KWARGS[name])
    pixel = meta_state_shapes(QwenImageL2PDiT, **CONFIGS[name].kwargs)
    shared = {key for key in pixel if key.split(".")[0] not in FAMILY.new_parts}
    assert shared == {key for key in latent if key.split(".")[0] not in ("norm_out", "proj_out", "img_in")}
    assert all(latent[key] == pixel[key] for key in shared)
    assert latent["img_in.weight"][1] == 64 and pixel["img_in.weight"][1] == 768


def test_family_fields():
    assert [name for name in CONFIGS] == ["20b", "tiny"]
    assert (CONFIGS["20b"].default_height, CONFIGS["20b"].default_steps, CONFIGS["20b"].default_cfg_scale) == (
        1328, 30, 4.0
    )  # fmt: skip
    assert (CONFIGS["tiny"].default_height, CONFIGS["tiny"].default_width) == (64, 64)
    register_all()  # resolves the family's VRAM maps into DiffSynth's
    assert {name: VRAM_MANAGEMENT_MODULE_MAPS[name] for name in FAMILY.vram_maps} == {
        DIT_CLASS: {
            **VRAM_MANAGEMENT_MODULE_MAPS[class_path(QwenImageDiT)],
            "torch.nn.Conv2d": "diffsynth.core.vram.layers.AutoWrappedModule",
        },
        TINY_TEXT_ENCODER_CLASS: VRAM_MANAGEMENT_MODULE_MAPS[
            "diffsynth.models.qwen_image_text_encoder.QwenImageTextEncoder"
        ],
    }
    assert FAMILY.main_block("transformer_blocks.59.attn.to_q.weight") == (0, 59)
    assert FAMILY.main_block("txt_in.weight") is None
    # LoRA: the 12 attention and MLP linears of every block, nothing else.
    model = meta_model(QwenImageL2PDiT, **CONFIGS["tiny"].kwargs)
    target = re.compile(FAMILY.lora_target)
    adapted = [name for name, _ in model.named_modules() if target.fullmatch(name)]
    assert all(isinstance(model.get_submodule(name), torch.nn.Linear) for name in adapted)
    assert len(adapted) == 12 * TINY_BACKBONE["num_layers"]
    assert {name.split(".", 2)[2] for name in adapted} == {
        *(f"attn.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")),
        "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
    }  # fmt: skip


def test_family_module_imports_no_torch():
    code = "import sys, diffsynth_l2p.families.qwen_image; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_no_gradient_patterns_name_the_last_blocks_text_outputs_at_real_size():
    names = list(meta_state_shapes(QwenImageL2PDiT))
    patterns = expand_last(FAMILY.no_gradient, names)
    matched = {name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    assert matched == {
        f"transformer_blocks.59.{part}.{kind}"
        for part in ("attn.to_add_out", "attn.add_q_proj", "txt_mlp.net.0.proj", "txt_mlp.net.2")
        for kind in ("weight", "bias")
    } | {"transformer_blocks.59.attn.norm_added_q.weight"}


def test_release_preset_at_real_size():
    """First and last 10 of 60 blocks plus everything outside them, less the unused last-block parameters."""
    from diffsynth_l2p.training.presets import resolve_trainable

    sizes = {name: p.numel() for name, p in meta_model(QwenImageL2PDiT).named_parameters()}
    trainable = resolve_trainable(sizes, "release", family=FAMILY).full_rank
    blocks = {FAMILY.main_block(name)[1] for name in trainable if FAMILY.main_block(name)}
    assert blocks == {*range(10), *range(50, 60)}
    assert all(name in trainable for name in sizes if not FAMILY.main_block(name))
    per_block = 339_831_296
    outside = 2_362_368 + 11_013_120 + 3_584 + 10_229_760 + 9_691_907  # img_in, txt_in, txt_norm, time, head
    unused = 2 * (3072 * 3072 + 3072) + 128 + 2 * 3072 * 12288 + 12288 + 3072  # add_q, to_add_out, norm_q, txt_mlp
    assert sum(sizes[name] for name in trainable) == 20 * per_block + outside - unused == 6_735_533_187


# --- the orchestration, pinned to DiffSynth's model function ------------------------------------------------------


def stock_velocity(dit: QwenImageLatentDiT, latents: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor):
    """DiffSynth's ``model_fn_qwen_image`` for one latent image ``[1, 16, H/8, W/8]``."""
    height, width = latents.shape[2] * 8, latents.shape[3] * 8
    mask = torch.ones(1, embeds.shape[1], dtype=torch.long)
    return model_fn_qwen_image(
        dit=dit, latents=latents, timestep=timestep, prompt_emb=embeds, prompt_emb_mask=mask, height=height, width=width
    )


def our_velocity(dit: QwenImageLatentDiT, latents: torch.Tensor, timestep: torch.Tensor, embeds: list):
    """``image_token_features`` on 2x2-packed latents (batched), then the stock ``norm_out`` and ``proj_out``."""
    grid = (latents.shape[2] // 2, latents.shape[3] // 2)
    tokens = rearrange(latents, "B C (H P) (W Q) -> B (H W) (C P Q)", P=2, Q=2)
    features, conditioning = image_token_features(dit, tokens, grid, timestep, embeds)
    packed = dit.proj_out(dit.norm_out(features, conditioning))
    return rearrange(packed, "B (H W) (C P Q) -> B C (H P) (W Q)", H=grid[0], W=grid[1], P=2, Q=2)


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_orchestration_reproduces_stock_model_function(variant):
    dit = randomized(QwenImageLatentDiT(**TINY_BACKBONE, **VARIANTS[variant]), seed=1)
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn(2, 16, 6, 10, generator=generator)  # 48x80 pixels: an odd 3x5 token grid
    embeds = [torch.randn(7, 48, generator=generator), torch.randn(12, 48, generator=generator)]
    timesteps = torch.tensor([700.0, 150.0])
    stock = torch.cat([stock_velocity(dit, latents[i : i + 1], timesteps[i : i + 1], embeds[i][None]) for i in (0, 1)])
    assert stock.abs().mean() > 0.1
    torch.testing.assert_close(our_velocity(dit, latents[:1], timesteps[:1], embeds[:1]), stock[:1], rtol=0, atol=0)
    # Batched with prompts of different lengths (padded and masked): as the stock function one at a time.
    torch.testing.assert_close(our_velocity(dit, latents, timesteps, embeds), stock, rtol=1e-5, atol=1e-5)


# --- the pixel DiT's forward --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dit() -> QwenImageL2PDiT:
    return randomized(QwenImageL2PDiT(**CONFIGS["tiny"].kwargs), seed=3)


def inputs(batch: int, height: int = 64, width: int = 64, lengths=(5, 11), seed: int = 4):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, height, width, generator=generator)
    embeds = [torch.randn(lengths[i % len(lengths)], 48, generator=generator) for i in range(batch)]
    timestep = torch.linspace(900.0, 100.0, batch)
    return x, timestep, embeds


@torch.no_grad()
def test_batch_with_prompts_of_different_lengths_equals_separate_calls(tiny_dit):
    x, timestep, embeds = inputs(2)
    batched = tiny_dit(x, timestep, embeds)
    assert batched.shape == (2, 3, 64, 64) and batched.abs().mean() > 0.1
    for i in range(2):
        single = tiny_dit(x[i : i + 1], timestep[i : i + 1], embeds[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-5, atol=1e-5)
    # The same sample twice in a batch (equal lengths: no mask) equals batch 1.
    twice = tiny_dit(torch.cat([x[:1], x[:1]]), timestep[:1].expand(2), [embeds[0], embeds[0]])
    torch.testing.assert_close(twice, torch.cat([batched[:1], batched[:1]]), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_odd_token_grid(tiny_dit):
    x, timestep, embeds = inputs(1, height=48, width=80)
    assert tiny_dit.forward_features(x, timestep, embeds).shape == (1, 64, 3, 5)
    velocity = tiny_dit(x, timestep, embeds)
    assert velocity.shape == (1, 3, 48, 80) and torch.isfinite(velocity).all()


@torch.no_grad()
def test_bf16_and_fp32_agree(tiny_dit):
    x, _, embeds = inputs(2)
    # Timesteps whose sigma = t/1000 is exact in bf16: as the stock model function, the DiT divides in the
    # timestep's dtype, and random time-embedding weights amplify a rounded sigma far more than trained ones.
    timestep = torch.tensor([500.0, 250.0])
    fp32 = tiny_dit(x, timestep, embeds)
    model = QwenImageL2PDiT(**CONFIGS["tiny"].kwargs)
    model.load_state_dict(tiny_dit.state_dict())
    bf16 = model.to(torch.bfloat16)(x.bfloat16(), timestep.bfloat16(), [e.bfloat16() for e in embeds])
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16).all()
    assert ((bf16.float() - fp32).norm() / fp32.norm()).item() < 0.03


def test_gradient_checkpointing_gives_same_values_and_gradients():
    model = randomized(QwenImageL2PDiT(**CONFIGS["tiny"].kwargs), seed=5).train()
    x, timestep, embeds = inputs(2, seed=6)
    results = []
    for flags in ((False, False), (True, False), (True, True)):
        model.zero_grad()
        output = model(x, timestep, embeds, *flags)
        output.square().mean().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((output.detach(), grads))
    for output, grads in results[1:]:
        torch.testing.assert_close(output, results[0][0], rtol=1e-5, atol=1e-6)
        assert grads.keys() == results[0][1].keys()
        for name in grads:
            torch.testing.assert_close(grads[name], results[0][1][name], rtol=1e-4, atol=1e-6)


def test_backward_gives_no_gradient_to_exactly_the_no_gradient_parameters():
    """Only the last block's image tokens reach the head: its text-stream outputs and text queries feed nothing."""
    model = randomized(QwenImageL2PDiT(**CONFIGS["tiny"].kwargs), seed=7).train()
    x, timestep, embeds = inputs(2, seed=8)
    model(x, timestep, embeds).square().mean().backward()
    names = [name for name, _ in model.named_parameters()]
    patterns = expand_last(FAMILY.no_gradient, names)
    listed = {name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    none = {name for name, p in model.named_parameters() if p.grad is None}
    zero = {name for name, p in model.named_parameters() if p.grad is not None and not p.grad.any()}
    assert none == {name for name in listed if ".to_add_out." in name or ".txt_mlp." in name}  # not in the graph
    assert zero == listed - none  # in the graph, but only through the text rows the block's output drops
    assert len(listed) == 9 and all(name.startswith("transformer_blocks.3.") for name in listed)
    # The last block's text modulation: only the attention's shift and scale (2 x dim rows) reach the image.
    grad = model.get_parameter("transformer_blocks.3.txt_mod.1.weight").grad
    assert grad[: 2 * 64].any(dim=1).all()
    assert not grad[2 * 64 :].any()


def test_bad_sizes_and_prompt_counts_are_rejected(tiny_dit):
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        tiny_dit(torch.zeros(1, 3, 40, 64), torch.tensor([1.0]), [torch.zeros(3, 48)])
    with pytest.raises(ValueError, match="2 caption feature tensors for a batch of 1"):
        tiny_dit(torch.zeros(1, 3, 32, 32), torch.tensor([1.0]), [torch.zeros(3, 48)] * 2)
    with pytest.raises(ValueError, match="axes_dim"):
        QwenImageL2PDiT(**{**CONFIGS["tiny"].kwargs, "axes_dim": (8, 12, 10)})
    with pytest.raises(ValueError, match="use 4 stages"):
        QwenImageL2PDiT(**{**CONFIGS["tiny"].kwargs, "head_channels": (16, 32, 64)})


# --- the tiny tokenizer, text encoder and model set ---------------------------------------------------------------


def test_default_tiny_tokenizer_is_unchanged(tmp_path):
    save_tokenizer(build_tokenizer(), tmp_path)
    shipped = DEFAULT_MODEL_DIR / TOKENIZER_DIR
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert filecmp.cmp(tmp_path / name, shipped / name, shallow=False), name


def test_newline_tokenizer_drops_exactly_the_template_prefix():
    tokenizer = build_tokenizer(newline_token=True)
    assert len(tokenizer) == len(VOCABULARY) + 1 == TINY_TEXT_ENCODER["vocab_size"]
    prefix = TEMPLATE.split("{}")[0]
    assert len(tokenizer(prefix).input_ids) == DROP
    for prompt in ("A red circle above two blue squares.", "three\nstars"):
        ids = tokenizer(TEMPLATE.format(prompt)).input_ids
        suffix = tokenizer("<|im_end|>\n<|im_start|>assistant\n").input_ids
        assert ids[DROP:] == tokenizer(prompt).input_ids + suffix
        assert "<unk>" not in tokenizer.convert_ids_to_tokens(ids[DROP:])


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> dict:
    return build_tiny_qwen_image(tmp_path_factory.mktemp("tiny-qwen-image") / "set", seed=0)


@pytest.fixture(scope="module")
def pipe(tiny_set):
    from diffsynth_l2p.pipelines.qwen_image_l2p import QwenImageL2PPipeline

    return QwenImageL2PPipeline.from_pretrained(
        torch_dtype=torch.float32,
        device="cpu",
        model_configs=[ModelConfig(path=tiny_set["dit"]), ModelConfig(path=tiny_set["text_encoder"])],
        tokenizer_config=ModelConfig(path=tiny_set["tokenizer"]),
    )


def test_tiny_set_files_reload_to_the_built_models(tiny_set):
    dit = QwenImageL2PDiT(**CONFIGS["tiny"].kwargs)
    init_weights(dit, 0)
    saved = load_file(tiny_set["dit"])
    assert saved.keys() == dit.state_dict().keys()
    assert all(torch.equal(saved[key], value) for key, value in dit.state_dict().items())
    assert hash_state_dict_keys(saved) == DIT_HASHES["tiny"]
    encoder = load_file(tiny_set["text_encoder"][0])
    assert hash_state_dict_keys(encoder) == TINY_TEXT_ENCODER_HASH


def test_tiny_latent_writer_writes_the_stock_layout_that_stock_code_runs(tmp_path):
    path = tmp_path / "latent.safetensors"
    write_tiny_latent(FAMILY, path, seed=9)
    saved = load_file(str(path))
    model = QwenImageLatentDiT(**TINY_BACKBONE)
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(saved)
    generator = torch.Generator().manual_seed(10)
    with torch.no_grad():
        velocity = stock_velocity(
            model, torch.randn(1, 16, 8, 8, generator=generator), torch.tensor([500.0]), torch.randn(1, 6, 48)
        )
    assert velocity.shape == (1, 16, 8, 8) and torch.isfinite(velocity).all()


def test_pipeline_loads_the_tiny_set(pipe):
    assert isinstance(pipe.dit, QwenImageL2PDiT) and isinstance(pipe.text_encoder, QwenVLTextEncoder)
    assert pipe.config is CONFIGS["tiny"]
    assert pipe.height_division_factor == pipe.width_division_factor == 16


def test_encode_prompts_keeps_exactly_the_prompts_tokens(pipe):
    prompts = ["a red circle", "two small blue squares on the left"]
    embeds = pipe.encode_prompts(prompts)
    suffix = 5  # <|im_end|> \n <|im_start|> assistant \n, kept by the stock encoding
    assert [tuple(e.shape) for e in embeds] == [(3 + suffix, 48), (7 + suffix, 48)]
    # The stock unit's hidden states of the full template, sliced after the drop, one prompt at a time.
    tokens = pipe.tokenizer(TEMPLATE.format(prompts[1]), return_tensors="pt")
    with torch.no_grad():
        full = pipe.text_encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[-1][0]
    torch.testing.assert_close(embeds[1], full[DROP:], rtol=1e-5, atol=1e-5)


def test_pipeline_images_batch_and_odd_size(pipe):
    image = pipe("a red circle", seed=1, **FAST)
    assert image.size == (64, 64) and np.asarray(image).std() > 5
    batch = pipe("a red circle", seed=1, num_images=2, **FAST)
    singles = [image, pipe("a red circle", seed=2, **FAST)]
    for batched, single in zip(batch, singles, strict=True):
        assert np.abs(np.asarray(batched, dtype=int) - np.asarray(single, dtype=int)).max() <= 1
    assert batch[0].tobytes() != batch[1].tobytes()
    assert pipe("two blue squares", seed=3, height=48, width=80, **FAST).size == (80, 48)


def test_schedule_is_the_stock_one(pipe):
    stock = FlowMatchScheduler("Qwen-Image")
    for height, width in ((1328, 1328), (48, 80)):
        pipe.set_inference_timesteps(30, 1.0, None, height, width)
        stock.set_timesteps(30, denoising_strength=1.0, dynamic_shift_len=(height // 16) * (width // 16))
        assert torch.equal(pipe.scheduler.sigmas, stock.sigmas)
    # A given shift s is the template's mu = log(s): sigma -> s*sigma / (1 + (s - 1)*sigma) before the terminal stretch.
    pipe.set_inference_timesteps(10, 1.0, 3.0, 64, 64)
    sigmas = torch.linspace(1, 0, 11)[:-1]
    shifted = 3 * sigmas / (1 + 2 * sigmas)
    stretched = 1 - (1 - shifted) / ((1 - shifted[-1]) / (1 - 0.02))
    torch.testing.assert_close(pipe.scheduler.sigmas, stretched)


def test_pipeline_rejects_mismatched_text_encoder_and_latent_checkpoints(pipe, tmp_path, monkeypatch):
    other = QwenVLTextEncoder(**{**TINY_TEXT_ENCODER, "hidden_size": 32})
    original, pipe.text_encoder = pipe.text_encoder, other
    try:
        with pytest.raises(ValueError, match="width 32 is not the DiT's text width 48"):
            pipe.check_models()
    finally:
        pipe.text_encoder = original
    from diffsynth_l2p import registry
    from diffsynth_l2p.pipelines.qwen_image_l2p import QwenImageL2PPipeline

    # The tiny latent file, known to DiffSynth's registry as a latent Qwen-Image DiT (the real one is 0319a1...).
    latent = tmp_path / "latent.safetensors"
    write_tiny_latent(FAMILY, latent)
    entry = dict(model_hash=hash_model_file(str(latent)), model_name="qwen_image_dit", model_class=LATENT_CLASS)
    monkeypatch.setattr(registry, "MODEL_CONFIGS", [*registry.MODEL_CONFIGS, entry])
    with pytest.raises(ValueError, match="latent Qwen-Image DiT.*l2p convert --family qwen-image"):
        QwenImageL2PPipeline.from_pretrained(device="cpu", model_configs=[ModelConfig(path=str(latent))])


def test_stock_text_encoder_fits_the_real_size_dit_on_meta(pipe):
    from diffsynth.models.qwen_image_text_encoder import QwenImageTextEncoder

    from diffsynth_l2p.pipelines.qwen_image_l2p import QwenImageL2PPipeline

    real = QwenImageL2PPipeline(device="cpu", torch_dtype=torch.float32)
    real.dit = meta_model(QwenImageL2PDiT)
    real.text_encoder = meta_model(QwenImageTextEncoder)  # Qwen2.5-VL-7B: width 3584, 152064 tokens
    real.tokenizer = pipe.tokenizer
    real.check_models()
    real.dit = pipe.dit
    with pytest.raises(ValueError, match="width 3584 is not the DiT's text width 48"):
        real.check_models()


def test_import_stub():
    from diffsynth.pipelines.qwen_image_L2P import ModelConfig as StubModelConfig
    from diffsynth.pipelines.qwen_image_L2P import QwenImagePipeline

    from diffsynth_l2p.pipelines.qwen_image_l2p import QwenImageL2PPipeline

    assert QwenImagePipeline is QwenImageL2PPipeline and StubModelConfig is ModelConfig
