"""Trainable-set presets and the --dry-run memory table, checked at the real 1K config on the meta device."""

import pytest
import torch

from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.models.z_image_l2p_dit import ZImageL2PDiT
from diffsynth_l2p.training.memory import dry_run, memory_report
from diffsynth_l2p.training.presets import resolve_trainable

# Facts from DESIGN A1 / anatomy §2.3: released L2P DiT size and one main block's size.
TOTAL_1K = 6_166_464_515
BLOCK_1K = 180_910_336
RELEASE_TRAINABLE = TOTAL_1K - 20 * BLOCK_1K  # layers.5 .. layers.24 frozen


def meta_model(config: str) -> ZImageL2PDiT:
    with torch.device("meta"):
        return ZImageL2PDiT(**L2P_CONFIGS[config].kwargs)


@pytest.fixture(scope="module")
def real():
    model = meta_model("1k")
    return model, {name: p.numel() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def tiny_names():
    return [name for name, _ in meta_model("tiny").named_parameters()]


def test_release_preset_at_real_config(real):
    _, sizes = real
    trainable = resolve_trainable(sizes, "release")
    frozen = set(sizes) - trainable.full_rank
    assert frozen == {n for n in sizes if n.split(".")[0] == "layers" and 5 <= int(n.split(".")[1]) <= 24}
    assert sum(sizes[n] for n in trainable.full_rank) == RELEASE_TRAINABLE == 2_548_257_795
    assert resolve_trainable(sizes, "shallow:5").full_rank == trainable.full_rank


def test_shallow_preset_on_tiny(tiny_names):
    trainable = resolve_trainable(tiny_names, "shallow:1").full_rank
    assert set(tiny_names) - trainable == {n for n in tiny_names if n.startswith(("layers.1.", "layers.2."))}
    for part in ("noise_refiner.0.", "context_refiner.0.", "t_embedder.", "cap_embedder.", "local_decoder."):
        assert any(n.startswith(part) for n in trainable)
    assert {"x_pad_token", "cap_pad_token", "all_x_embedder.16-1.weight"} <= trainable
    # The tiny model has 4 blocks, so the release recipe (5 shallow blocks per side) trains all of it.
    assert resolve_trainable(tiny_names, "release").full_rank == set(tiny_names)
    assert resolve_trainable(tiny_names, "full").full_rank == set(tiny_names)


def test_lora_preset_names(tiny_names):
    trainable = resolve_trainable(tiny_names, "lora:4")
    assert trainable.lora_rank == 4
    assert trainable.full_rank == {n for n in tiny_names if n.startswith(("all_x_embedder.", "local_decoder."))}
    linears = ["attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0"]
    linears += ["feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]
    assert set(trainable.lora_modules) == {f"layers.{i}.{m}" for i in range(4) for m in linears}
    assert "layers.0.attention.to_q.lora_B.default.weight" in trainable.parameter_names()


def test_explicit_patterns(tiny_names):
    trainable = resolve_trainable(tiny_names, patterns=["dit.layers.0", "local_decoder.out_conv", "*_pad_token"])
    expected = {n for n in tiny_names if n.startswith(("layers.0.", "local_decoder.out_conv."))}
    assert trainable.full_rank == expected | {"x_pad_token", "cap_pad_token"}


@pytest.mark.parametrize(
    "preset, patterns, message",
    [
        ("medium", None, "Unknown preset 'medium'"),
        ("lora:0", None, "integer >= 1"),
        ("shallow:two", None, "integer >= 0"),
        (None, ["layers.0", "decoder"], "'decoder' matches no parameter"),
        ("full", ["layers.0"], "either a preset or explicit"),
    ],
)
def test_bad_presets(tiny_names, preset, patterns, message):
    with pytest.raises(ValueError, match=message):
        resolve_trainable(tiny_names, preset, patterns)


def test_memory_report_release_hand_computed(real):
    model, sizes = real
    report = memory_report(model, resolve_trainable(sizes, "release"))
    assert (report.trainable, report.frozen) == (2_548_257_795, 3_618_206_720)
    bf16, fp32 = report.rows
    assert (bf16.weights, bf16.gradients, bf16.optimizer) == (12_332_929_030, 5_096_515_590, 10_193_031_180)
    assert (fp32.weights, fp32.gradients, fp32.optimizer) == (24_665_858_060, 10_193_031_180, 20_386_062_360)
    assert bf16.gpu_total == 27_622_475_800 and bf16.gpu_total_optimizer_offload == 17_429_444_620


def test_memory_report_lora_hand_computed(real):
    model, sizes = real
    report = memory_report(model, resolve_trainable(sizes, "lora:32"))
    # Per block: 4 attention linears 32*(3840+3840) + 3 FFN linears 32*(3840+10240); 30 blocks.
    lora = 30 * (4 * 32 * 7680 + 3 * 32 * 14080)
    new_parts = 2_952_960 + 10_085_123  # all_x_embedder.16-1 + local_decoder
    assert lora == 70_041_600
    assert report.trainable == lora + new_parts
    assert report.total == TOTAL_1K + lora


def test_dry_run_table_at_real_config():
    table = dry_run("1k", "release")
    assert "trainable 2,548,257,795 (2.55B, 41.3%)" in table
    assert "total 6,166,464,515 (6.17B)" in table
    # GiB columns: weights, grads, AdamW, GPU total, GPU with optimizer offload, CPU optimizer.
    assert "bf16       11.49      4.75      9.49       25.73                 16.23       9.49" in table
    assert "fp32       22.97      9.49     18.99       51.45                 32.46      18.99" in table
    assert "text encoder: 4,022,468,096 params, 7.49 GiB" in table
