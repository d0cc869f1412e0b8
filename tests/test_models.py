"""ZImageL2PDiT and DetailerHead: release layout on meta, stock-equivalent backbone, batching, dtypes."""

import math

import pytest
import torch
from diffsynth.core import hash_state_dict_keys
from diffsynth.models.z_image_dit import TimestepEmbedder, ZImageDiT

from diffsynth_l2p.models import DetailerHead, ZImageL2PDiT
from diffsynth_l2p.models.configs import L2P_CONFIGS

SMALL = dict(
    dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32,
    axes_dims=(8, 12, 12), axes_lens=(256, 64, 64), head_channels=(8, 16, 32, 64),
)


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def small_dit() -> ZImageL2PDiT:
    return randomized(ZImageL2PDiT(**SMALL))


def test_release_layout_on_meta():
    with torch.device("meta"):
        model = ZImageL2PDiT()
        stock = ZImageDiT()
    state = model.state_dict()
    assert len(state) == 545
    assert sum(p.numel() for p in model.parameters()) == 6_166_464_515
    assert sum(p.numel() for p in model.local_decoder.parameters()) == 10_085_123
    assert not any(key.startswith("all_final_layer") for key in state)
    assert state["all_x_embedder.16-1.weight"].shape == (3840, 768)
    assert hash_state_dict_keys(state) == "577b2d3e0acea1fb784ca600f966805e"
    assert hash_state_dict_keys(stock.state_dict()) == "fc3a8a1247fe185ce116ccbe0e426c28"
    assert L2P_CONFIGS["1k"].published_hash == hash_state_dict_keys(state)


def test_head_matches_release_layer_list():
    def conv(name, cin, cout, k):
        return {f"{name}.weight": (cout, cin, k, k), f"{name}.bias": (cout,)}

    expected = {}
    for name, cin, cout in [("enc1.0", 3, 64), ("enc2.0", 64, 128), ("enc3.0", 128, 256), ("enc4.0", 256, 512)]:
        expected |= conv(name, cin, cout, 3)
    expected |= conv("bottleneck.0", 512 + 3840, 512, 1)
    for stage, width, dec_in, dec_out in [(4, 512, 1024, 256), (3, 256, 512, 128), (2, 128, 256, 64), (1, 64, 128, 64)]:
        expected |= conv(f"up{stage}.1", width, width, 3)
        expected |= conv(f"dec{stage}.0", dec_in, dec_out, 3)
    expected |= conv("out_conv", 64, 3, 1)
    with torch.device("meta"):
        head = DetailerHead()
    actual = {key: tuple(value.shape) for key, value in head.state_dict().items()}
    assert actual == expected
    assert len(actual) == 28


def stock_order_features(dit: ZImageL2PDiT, x: torch.Tensor, timestep: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """Image-token features computed by calling DiffSynth's submodules in model_fn_z_image_turbo's order (batch 1)."""
    p = dit.patch_size
    t_freq = TimestepEmbedder.timestep_embedding(1000 - timestep, dit.t_embedder.frequency_embedding_size)
    adaln = dit.t_embedder.mlp(t_freq)
    tokens, caps, meta = dit.patchify_and_embed([x[0].unsqueeze(1)], [cap], p, 1)
    img = dit.all_x_embedder[f"{p}-1"](tokens[0])
    img[torch.cat(meta["x_pad_mask"])] = dit.x_pad_token
    img_freqs = dit.rope_embedder(torch.cat(meta["x_pos_ids"]))[None]
    img = img[None]
    for layer in dit.noise_refiner:
        img = layer(img, attn_mask=None, freqs_cis=img_freqs, adaln_input=adaln)
    cap_tokens = dit.cap_embedder(caps[0])
    cap_tokens[torch.cat(meta["cap_pad_mask"])] = dit.cap_pad_token
    cap_freqs = dit.rope_embedder(torch.cat(meta["cap_pos_ids"]))[None]
    cap_tokens = cap_tokens[None]
    for layer in dit.context_refiner:
        cap_tokens = layer(cap_tokens, attn_mask=None, freqs_cis=cap_freqs)
    unified = torch.cat([img, cap_tokens], dim=1)
    freqs = torch.cat([img_freqs, cap_freqs], dim=1)
    for layer in dit.layers:
        unified = layer(unified, attn_mask=None, freqs_cis=freqs, adaln_input=adaln)
    h, w = x.shape[-2] // p, x.shape[-1] // p
    return unified[0, : h * w].T.reshape(1, dit.dim, h, w)


@pytest.mark.parametrize("size", [(64, 64), (112, 112), (48, 80)])
def test_backbone_equals_stock_submodules(small_dit, size):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, *size, generator=generator)
    cap = torch.randn(11, 32, generator=generator)
    timestep = torch.tensor([640.0])
    with torch.no_grad():
        ours = small_dit.forward_features(x, timestep, [cap])
        reference = stock_order_features(small_dit, x, timestep, cap)
        velocity = small_dit(x, timestep, [cap])
        head = small_dit.local_decoder(x, reference)
    assert ours.shape == (1, 64, size[0] // 16, size[1] // 16)
    assert (ours - reference).abs().max().item() <= 1e-5
    # The returned velocity is the negated head output (noise - x0), never negated twice.
    assert (velocity + head).abs().max().item() <= 1e-5


def test_time_embedding_matches_stock_in_bf16(small_dit):
    t = torch.tensor([0.0, 250.0, 999.0])
    t_embedder = small_dit.t_embedder.to(torch.bfloat16)
    try:
        stock = t_embedder(t)
        ours = small_dit.embed_timestep(t, torch.bfloat16)
    finally:
        small_dit.t_embedder.float()
    assert torch.equal(stock, ours)


def test_time_embedder_sees_t_scale_times_one_minus_sigma(small_dit):
    """The scheduler's sigma*1000 reaches the embedder as t_scale*(1 - sigma): 1000 - timestep at the stock 1000."""
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(1, 3, 32, 32, generator=generator)
    cap = [torch.randn(4, 32, generator=generator)]
    rescaled = ZImageL2PDiT(**{**SMALL, "t_scale": 1.0})
    rescaled.load_state_dict(small_dit.state_dict())
    seen = {}
    for name, model in (("stock", small_dit), ("rescaled", rescaled)):
        handle = model.t_embedder.mlp.register_forward_pre_hook(lambda _, args, n=name: seen.setdefault(n, args[0]))
        with torch.no_grad():
            model.forward_features(x, torch.tensor([250.0]), cap)
        handle.remove()
    expected = {name: TimestepEmbedder.timestep_embedding(torch.tensor([t]), 256) for name, t in
                (("stock", 750.0), ("rescaled", 0.75))}
    for name in seen:
        torch.testing.assert_close(seen[name], expected[name])


def test_batch_equals_single_calls_with_different_caption_lengths(small_dit):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 112, 112, generator=generator)  # 7x7 = 49 tokens, not a multiple of 32
    caps = [torch.randn(n, 32, generator=generator) for n in (5, 40, 77)]
    timestep = torch.tensor([900.0, 500.0, 20.0])
    with torch.no_grad():
        batched = small_dit(x, timestep, caps)
        singles = [small_dit(x[i : i + 1], timestep[i : i + 1], caps[i : i + 1]) for i in range(3)]
    for i in range(3):
        assert (batched[i] - singles[i][0]).abs().max().item() <= 1e-5


def test_bf16_forward_and_fp32_forward_agree(small_dit):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 64, 64, generator=generator)
    cap = [torch.randn(9, 32, generator=generator)]
    timestep = torch.tensor([300.0])
    model = ZImageL2PDiT(**SMALL)
    model.load_state_dict(small_dit.state_dict())
    with torch.no_grad():
        fp32 = model(x, timestep, cap)
        bf16 = model.to(torch.bfloat16)(x.bfloat16(), timestep, [c.bfloat16() for c in cap])
    assert fp32.dtype == torch.float32 and bf16.dtype == torch.bfloat16
    assert torch.isfinite(bf16).all()
    relative = (bf16.float() - fp32).norm() / fp32.norm()
    assert relative.item() < 0.05


def test_gradient_checkpointing_gives_same_gradients():
    model = randomized(ZImageL2PDiT(**SMALL), seed=4).train()
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    caps = [torch.randn(6, 32, generator=generator), torch.randn(13, 32, generator=generator)]
    timestep = torch.tensor([100.0, 800.0])
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model(x, timestep, caps, use_gradient_checkpointing=checkpointing).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(name.startswith("local_decoder.enc1") for name in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_head_resizes_features_to_its_bottleneck():
    head = randomized(DetailerHead(feature_dim=8, channels=(4, 8)))
    image = torch.randn(1, 3, 16, 24)
    features = torch.randn(1, 8, 2, 3)
    upsampled = torch.nn.functional.interpolate(features, size=(4, 6), mode="nearest")
    with torch.no_grad():
        assert torch.equal(head(image, features), head(image, upsampled))


def test_invalid_sizes_and_configs_are_rejected(small_dit):
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        small_dit(torch.zeros(1, 3, 40, 64), torch.tensor([1.0]), [torch.zeros(3, 32)])
    with pytest.raises(ValueError, match="caption feature tensors"):
        small_dit(torch.zeros(2, 3, 32, 32), torch.tensor([1.0, 2.0]), [torch.zeros(3, 32)])
    with pytest.raises(ValueError, match="use 4 stages"):
        ZImageL2PDiT(**{**SMALL, "head_channels": (8, 16, 32)})
    assert math.log2(L2P_CONFIGS["tiny"].kwargs.get("all_patch_size", (16,))[0]) == len(
        L2P_CONFIGS["tiny"].kwargs["head_channels"]
    )
