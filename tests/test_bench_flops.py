"""bench/flops.py: its FLOP counter against hand-computed values, and the L2P step's backbone/head split."""

import importlib.util
import json
from pathlib import Path

import torch

from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.registry import meta_model

BENCH = Path(__file__).resolve().parents[1] / "bench" / "flops.py"
spec = importlib.util.spec_from_file_location("bench_flops", BENCH)
flops = importlib.util.module_from_spec(spec)
spec.loader.exec_module(flops)


def test_linear_counts_two_flops_per_multiply_add_on_meta():
    tokens, fan_in, fan_out = 5, 8, 4
    linear = meta_model(torch.nn.Linear, in_features=fan_in, out_features=fan_out)
    x = torch.empty(tokens, fan_in, device="meta")
    count = flops.count_flops(lambda: linear(x))
    assert count.total == 2 * fan_in * fan_out * tokens
    assert count.by_module == {"Linear": 2 * fan_in * fan_out * tokens}


def test_l2p_step_is_backbone_plus_head_and_the_head_counts_the_same_alone():
    model = meta_model(**L2P_CONFIGS["tiny"].kwargs).eval()
    side, p = 64, model.patch_size
    x = torch.empty(1, 3, side, side, device="meta")
    timestep = torch.full((1,), 500.0, device="meta")
    caption = [torch.empty(32, L2P_CONFIGS["tiny"].kwargs["cap_feat_dim"], device="meta")]
    features = torch.empty(1, model.dim, side // p, side // p, device="meta")

    step = flops.count_flops(lambda: model(x, timestep, caption))
    backbone = flops.count_flops(lambda: model.forward_features(x, timestep, caption))
    head_alone = flops.count_flops(lambda: model.local_decoder(x, features))
    head = step.under(flops.HEAD)

    assert 0 < head < step.total
    assert head == head_alone.total
    assert backbone.total + head == step.total
    # The head's first conv (3 -> 16 channels, 3x3, full resolution) is inside its count.
    assert head > 2 * 3 * 16 * 9 * side * side


def test_main_writes_the_json_for_one_real_size(tmp_path):
    payload = flops.main(["--sizes", "1k", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "flops.json").read_text())
    assert written["sizes"] == payload["sizes"]
    row = written["sizes"][0]
    assert row["l2p"]["image_tokens"] == row["latent"]["image_tokens"] == 64 * 64
    assert row["l2p"]["head_flops"] == row["l2p"]["head_alone_flops"]
    assert 0.9 < row["latent_over_l2p"] < 1.1  # same token grid at 1K: only embedder/final layer vs head differ
