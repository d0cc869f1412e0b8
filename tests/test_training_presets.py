"""Trainable-set presets and the --dry-run memory table, checked at the real 1K config on the meta device."""

import math

import pytest

from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.registry import meta_model
from diffsynth_l2p.training.memory import dry_run, memory_report
from diffsynth_l2p.training.presets import resolve_trainable

# Facts about the release: the released L2P DiT's size and one main block's size.
TOTAL_1K = 6_166_464_515
BLOCK_1K = 180_910_336
RELEASE_TRAINABLE = TOTAL_1K - 20 * BLOCK_1K  # layers.5 .. layers.24 frozen


@pytest.fixture(scope="module")
def real():
    model = meta_model(**L2P_CONFIGS["1k"].kwargs)
    return model, {name: p.numel() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def tiny_names():
    return [name for name, _ in meta_model(**L2P_CONFIGS["tiny"].kwargs).named_parameters()]


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
    trained, frozen = 2_548_257_795, 3_618_206_720
    assert (report.trainable, report.frozen) == (trained, frozen)
    total = trained + frozen
    # (weights, grads, optimizer on each GPU, host RAM) from the documented bytes per parameter:
    expected = [
        # fp32: 4-byte weights; fp32 grads; AdamW exp_avg + exp_avg_sq in fp32.
        (4 * total, 4 * trained, 8 * trained, 0),
        # bf16 autocast: frozen bf16, trainable fp32 with fp32 grads and AdamW states.
        (2 * frozen + 4 * trained, 4 * trained, 8 * trained, 0),
        # DeepSpeed ZeRO-2 bf16: bf16 weights and grads, fp32 master + m + v.
        (2 * total, 2 * trained, 12 * trained, 0),
        # ... on 8 GPUs each holds a 1/8 partition (elements rounded up) of the grads and optimizer states.
        (2 * total, 2 * math.ceil(trained / 8), 12 * math.ceil(trained / 8), 0),
        # ... with the optimizer on the CPU: master + m + v and an fp32 gradient copy in host RAM.
        (2 * total, 2 * trained, 0, 16 * trained),
    ]
    assert [(r.weights, r.gradients, r.optimizer, r.cpu) for r in report.rows] == expected
    low_vram = report.rows[-1]
    assert low_vram.gpu_total == 12_332_929_030 + 5_096_515_590 < 24 * 10**9


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
    # GiB: weights, grads, optimizer, GPU total, CPU RAM. ZeRO-2 bf16 on 1 GPU: 2 B/param of 6.17B = 11.49,
    # 2 B/trainable = 4.75, 12 B/trainable = 28.48; on 8 GPUs grads and optimizer are 1/8 of that.
    rows = {line.split("  ")[1].strip(): line.split()[-5:] for line in table.splitlines() if line.count(".") >= 5}
    assert rows["fp32, torch AdamW"] == ["22.97", "9.49", "18.99", "51.45", "0.00"]
    assert rows["bf16 autocast, fp32 trainable + AdamW"] == ["16.23", "9.49", "18.99", "44.71", "0.00"]
    assert rows["DeepSpeed ZeRO-2 bf16, 1 GPU"] == ["11.49", "4.75", "28.48", "44.71", "0.00"]
    assert rows["DeepSpeed ZeRO-2 bf16, 8 GPUs (train_run.sh)"] == ["11.49", "0.59", "3.56", "15.64", "0.00"]
    assert rows["ZeRO-2 bf16 + CPU optimizer, 1 GPU (low VRAM)"] == ["11.49", "4.75", "0.00", "16.23", "37.97"]
    assert "text encoder: 4,022,468,096 params, 7.49 GiB" in table
