"""``l2p inspect``: header-only facts about real-size stand-ins and tiny checkpoints, key diffs, hints, CLI."""

import time

import pytest
import torch
from diffsynth.core import hash_model_file, hash_state_dict_keys
from diffsynth.models.z_image_dit import ZImageDiT
from safetensors.torch import save_file
from tiny_checkpoints import save_sharded, tiny_latent_state_dict, write_header_only

from diffsynth_l2p.cli import main
from diffsynth_l2p.inspection import LATENT_LAYOUT, infer_dit_dims, inspect_checkpoint
from diffsynth_l2p.models import ZImageL2PDiT
from diffsynth_l2p.models.configs import L2P_CONFIGS, Z_IMAGE_TURBO_DIT_HASH
from diffsynth_l2p.registry import L2P_DIT_CLASS, L2P_DIT_MODEL_NAME, meta_state_shapes

TINY = L2P_CONFIGS["tiny"].kwargs


def standin(path, shapes) -> str:
    _, allocated = write_header_only(path, shapes)
    if allocated > 100_000_000:
        pytest.skip("this filesystem has no sparse files")
    return str(path)


def tiny_l2p_state() -> dict:
    torch.manual_seed(0)
    return {key: value.detach().clone() for key, value in ZImageL2PDiT(**TINY).state_dict().items()}


def test_released_1k_layout_is_recognised_instantly_from_the_header(tmp_path):
    path = standin(tmp_path / "model-1k-merge.safetensors", meta_state_shapes())
    start = time.perf_counter()
    report = inspect_checkpoint(path)
    assert time.perf_counter() - start < 5  # 12 GB of (sparse) data is never read
    assert report.model_hash == "577b2d3e0acea1fb784ca600f966805e"
    assert [(e["model_name"], e["model_class"]) for e in report.registered] == [(L2P_DIT_MODEL_NAME, L2P_DIT_CLASS)]
    assert (report.num_tensors, report.num_params) == (545, 6_166_464_515)
    assert report.params_by_module["local_decoder"] == 10_085_123
    assert report.params_by_module["layers"] == 30 * 180_910_336
    assert report.params_by_dtype == {"BF16": 6_166_464_515}
    assert report.kind == "pixel" and report.layout.exact and report.layout.name == "L2P 1k"
    assert report.dims == {"dim": 3840, "n_layers": 30, "n_refiner_layers": 2, "n_heads": 30, "cap_feat_dim": 2560}
    assert report.hints == ()
    text = report.summary()
    assert "registered: z_image_l2p_dit" in text and "matches L2P 1k exactly" in text and "6,166,464,515" in text


def test_stock_latent_dit_is_recognised_and_sent_to_convert(tmp_path):
    report = inspect_checkpoint(standin(tmp_path / "turbo.safetensors", meta_state_shapes(ZImageDiT)))
    assert report.model_hash == Z_IMAGE_TURBO_DIT_HASH
    assert [entry["model_name"] for entry in report.registered] == ["z_image_dit"]
    assert report.kind == "latent" and report.layout.name == LATENT_LAYOUT and report.layout.exact
    assert report.num_params == 6_154_908_736
    assert "convert it to an L2P pixel init with `l2p convert`" in report.summary()


def test_sharded_tiny_latent_checkpoint(tmp_path):
    state = tiny_latent_state_dict()
    shards = save_sharded(state, tmp_path)
    report = inspect_checkpoint(shards)
    assert report.model_hash == hash_model_file(shards) == hash_state_dict_keys(state)
    # Its layout is the tiny-world teacher's: known to DiffSynth once the tiny world registers it, under its own name.
    from diffsynth_l2p.tiny_world.teacher import DIT_MODEL_NAME, register_teacher_models

    register_teacher_models()
    report = inspect_checkpoint(shards)
    assert [entry["model_name"] for entry in report.registered] == [DIT_MODEL_NAME]
    assert report.num_params == sum(value.numel() for value in state.values())
    assert report.params_by_module["all_final_layer"] == sum(
        value.numel() for key, value in state.items() if key.startswith("all_final_layer.")
    )
    assert report.kind == "latent" and "`l2p convert`" in report.hints[0]
    assert report.dims == infer_dit_dims({key: value.shape for key, value in state.items()})
    assert report.dims["dim"] == 128 and report.dims["n_layers"] == 4


def test_near_layout_lists_missing_unexpected_and_mismatched_keys(tmp_path):
    state = tiny_l2p_state()
    del state["local_decoder.out_conv.bias"]
    state["local_decoder.out_conv.weights"] = state.pop("local_decoder.out_conv.weight")
    state["cap_embedder.1.bias"] = torch.zeros(64)
    state["layers.0.attention_norm1.weight"] = state["layers.0.attention_norm1.weight"].to(torch.bfloat16)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    report = inspect_checkpoint(path)
    layout = report.layout
    assert layout.name == "L2P tiny" and not layout.exact
    assert layout.missing == ("local_decoder.out_conv.weight", "local_decoder.out_conv.bias")
    assert layout.unexpected == ("local_decoder.out_conv.weights",)
    assert layout.shape_mismatches == (("cap_embedder.1.bias", (64,), (128,)),)
    assert report.params_by_dtype["BF16"] == 128
    assert report.registered == ()
    text = report.summary()
    assert "2 missing, 1 unexpected, 1 shape-mismatched" in text
    assert "cap_embedder.1.bias is [64], expected [128]" in text


def test_partial_training_checkpoint_gets_the_merge_hint(tmp_path):
    state = {key: value for key, value in tiny_l2p_state().items() if key.startswith(("local_decoder.", "layers.3."))}
    path = tmp_path / "step-100.safetensors"
    save_file(state, str(path))
    report = inspect_checkpoint(path)
    assert report.kind == "pixel" and report.layout.name == "L2P tiny"
    assert not report.layout.unexpected and len(report.layout.missing) == 127 - len(state)
    assert "merge it onto a full one with `l2p merge`" in report.hints[0]


def test_unrelated_file_is_unknown(tmp_path):
    path = tmp_path / "vae.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3), "decoder.conv_out.bias": torch.zeros(3)}, str(path))
    report = inspect_checkpoint(path)
    assert report.kind is None and report.layout is None and report.dims is None and report.registered == ()
    assert report.params_by_module == {"encoder": 216, "decoder": 3}
    assert "not close to any known layout" in report.summary()


def test_cli_inspect_prints_report_and_exits_2_on_bad_files(tmp_path, capsys):
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_l2p_state(), str(path))
    assert main(["inspect", str(path)]) == 0
    assert hash_model_file(str(path)) in capsys.readouterr().out

    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    path.write_bytes(path.read_bytes()[:1000])
    assert main(["inspect", str(path)]) == 2
    assert "tiny.safetensors is corrupt or truncated" in capsys.readouterr().err
