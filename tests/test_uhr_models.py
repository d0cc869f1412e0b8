"""The UHR (4K, 8K, 10K) L2P layouts: published hashes, head layer lists, forward semantics on small versions."""

import pytest
import torch
import torch.nn.functional as F
from diffsynth.core import hash_state_dict_keys

from diffsynth_l2p.models import DetailerHead, ZImageL2PDiT
from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.registry import find_registered
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
SMALL_BACKBONE = dict(
    dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
    axes_dims=(4, 6, 6), axes_lens=(64, 16, 16),
)
SMALL_HEADS = {
    "4k": dict(head_channels=(2, 4, 4, 8, 8, 8)),
    "8k": dict(head_channels=(3, 2, 4, 4, 8, 8, 8), head_decoder_channels=(2, 2, 4, 4, 8, 8, 8)),
    "10k": dict(
        head_channels=(3, 2, 4, 4, 8, 8), head_decoder_channels=(2, 2, 4, 4, 8, 8), head_bottleneck_channels=16
    ),
}
SMALL_SIZES = {"4k": (128, 192), "8k": (256, 128), "10k": (320, 640)}


def small_uhr(name: str, seed: int = 0) -> ZImageL2PDiT:
    released = L2P_CONFIGS[name].kwargs
    kwargs = {**SMALL_BACKBONE, **SMALL_HEADS[name]}
    kwargs.update(all_patch_size=released["all_patch_size"], head_stage_names=released["head_stage_names"])
    model = ZImageL2PDiT(**kwargs)
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
