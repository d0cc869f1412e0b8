"""Overwrite-merge of a training checkpoint into a full L2P checkpoint: semantics, safety, CLI."""

import hashlib
import os
import runpy
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_checkpoints import failing_writer, is_mapped, needs_proc_maps, save_sharded, tiny_latent_state_dict

from diffsynth_l2p import merge
from diffsynth_l2p.cli import main
from diffsynth_l2p.merge import fuse_lora, merge_checkpoints, plan_merge
from diffsynth_l2p.models import ZImageL2PDiT
from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.registry import L2P_DIT_MODEL_NAME, meta_hash
from diffsynth_l2p.safetensors_io import TensorInfo, read_header, same_bits

MERGE_WEIGHTS = Path(__file__).resolve().parents[1] / "merge_weights.py"
TINY = L2P_CONFIGS["tiny"].kwargs
TRAINED = ("local_decoder.", "layers.0.", "all_x_embedder.")


@pytest.fixture
def files(tmp_path):
    """B: a full tiny L2P checkpoint (F32); A: a bf16 step checkpoint of some of its tensors, plus two odd ones."""
    torch.manual_seed(0)
    full = {key: value.detach().clone() for key, value in ZImageL2PDiT(**TINY).state_dict().items()}
    full["x_pad_token"] = torch.randn_like(full["x_pad_token"])
    full["cap_pad_token"] = torch.randn_like(full["cap_pad_token"])
    step = {key: torch.randn_like(value).to(torch.bfloat16) for key, value in full.items() if key.startswith(TRAINED)}
    step["layers.1.attention.to_q.weight"] = torch.randn(8, 8)  # same key, other shape
    step["lora.extra.weight"] = torch.randn(3)  # absent from B
    file_a, file_b = tmp_path / "step-10.safetensors", tmp_path / "pixel_init.safetensors"
    save_file(step, str(file_a))
    save_file(full, str(file_b))
    return file_a, file_b, step, full


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_plan_overwrites_same_shape_keys_only():
    header_a = {"w": TensorInfo("BF16", (2, 2)), "b": TensorInfo("F32", (3,)), "new": TensorInfo("F32", (1,))}
    header_b = {"w": TensorInfo("F32", (2, 2)), "b": TensorInfo("F32", (4,)), "c": TensorInfo("F32", (5,))}
    plan = plan_merge(header_a, header_b)
    assert plan.overwritten == ("w",)
    assert plan.shape_mismatches == (("b", (3,), (4,)),)
    assert plan.absent_from_b == ("new",)
    assert plan.output_layout == {"w": header_a["w"], "b": header_b["b"], "c": header_b["c"]}


def test_merge_overwrites_keeps_the_rest_and_reports(files, tmp_path):
    file_a, file_b, step, full = files
    before = digest(file_a), digest(file_b)
    out = tmp_path / "merged" / "merged.safetensors"
    mismatch = r"Skipped 1 tensors.*layers\.1\.attention\.to_q\.weight \[8, 8\] vs \[128, 128\]"
    with pytest.warns(UserWarning, match=mismatch):
        report = merge_checkpoints(file_a, file_b, out)
    merged = load_file(str(out))
    assert list(read_header(out)) == list(read_header(file_b))  # B's keys, B's order, nothing added
    overwritten = {key for key in full if key.startswith(TRAINED)}
    assert set(report.plan.overwritten) == overwritten
    for key, value in merged.items():
        assert same_bits(value, step[key] if key in overwritten else full[key]), key  # A's tensor and dtype kept
    assert report.plan.absent_from_b == ("lora.extra.weight",)
    assert [key for key, _, _ in report.plan.shape_mismatches] == ["layers.1.attention.to_q.weight"]
    assert report.output_hash == meta_hash(**TINY)
    assert [entry["model_name"] for entry in report.detected] == [L2P_DIT_MODEL_NAME]
    summary = report.summary()
    assert f"overwritten from A: {len(overwritten)} tensors" in summary and "absent from B (not added): 1" in summary
    assert report.output_hash in summary and L2P_DIT_MODEL_NAME in summary
    # Atomic: only the output in its directory, and the inputs are byte-for-byte unchanged.
    assert os.listdir(out.parent) == ["merged.safetensors"]
    assert (digest(file_a), digest(file_b)) == before


def test_merge_accepts_sharded_inputs(files, tmp_path):
    file_a, _, step, full = files
    shards = save_sharded(full, tmp_path, stem="pixel")
    out = tmp_path / "merged.safetensors"
    with pytest.warns(UserWarning):
        merge_checkpoints(file_a, shards, out)
    assert same_bits(load_file(str(out))["local_decoder.out_conv.weight"], step["local_decoder.out_conv.weight"])


LORA_TARGET = "layers.0.attention.to_q"


def write_lora(path: Path, full: dict, rank: int = 4) -> dict:
    """A DiffSynth-format LoRA on one linear of ``full``, plus one full-rank head tensor (as ``lora:R`` saves)."""
    generator = torch.Generator().manual_seed(1)
    out_features, in_features = full[f"{LORA_TARGET}.weight"].shape
    lora = {
        f"{LORA_TARGET}.lora_A.weight": torch.randn(rank, in_features, generator=generator),
        f"{LORA_TARGET}.lora_B.weight": torch.randn(out_features, rank, generator=generator),
        "local_decoder.out_conv.weight": torch.randn(full["local_decoder.out_conv.weight"].shape, generator=generator),
    }
    save_file(lora, str(path))
    return lora


def test_fuse_lora_adds_b_times_a_and_overwrites_full_rank_tensors(files, tmp_path):
    _, file_b, _, full = files
    lora = write_lora(tmp_path / "lora.safetensors", full)
    out = tmp_path / "fused.safetensors"
    report = fuse_lora(tmp_path / "lora.safetensors", file_b, out)
    fused = load_file(str(out))
    key = f"{LORA_TARGET}.weight"
    delta = lora[f"{LORA_TARGET}.lora_B.weight"].double() @ lora[f"{LORA_TARGET}.lora_A.weight"].double()
    torch.testing.assert_close(fused[key].double(), full[key].double() + delta, rtol=1e-5, atol=1e-5)
    assert same_bits(fused["local_decoder.out_conv.weight"], lora["local_decoder.out_conv.weight"])
    untouched = [k for k in full if k not in (key, "local_decoder.out_conv.weight")]
    assert all(same_bits(fused[k], full[k]) for k in untouched)
    assert report.output_hash == meta_hash(**TINY) and set(report.plan.overwritten) == {
        key,
        "local_decoder.out_conv.weight",
    }


@needs_proc_maps
@pytest.mark.parametrize("operation", ["merge", "fuse_lora"])
def test_a_failed_write_releases_the_inputs_while_the_error_is_alive(files, tmp_path, monkeypatch, operation):
    file_a, file_b, _, full = files
    if operation == "fuse_lora":
        file_a = tmp_path / "lora.safetensors"
        write_lora(file_a, full)
    monkeypatch.setattr(merge, "write_safetensors", failing_writer())
    out = tmp_path / "out.safetensors"
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OSError, match="No space left") as error, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shape-mismatch warning of `files`
        (merge_checkpoints if operation == "merge" else fuse_lora)(file_a, file_b, out)
    assert error.value.__traceback__ is not None  # its frames, and their locals, are still alive here
    assert not is_mapped(file_b)  # the full (19.6 GB at 1K) checkpoint
    # A step checkpoint is released too; a LoRA's own small tensors are still referenced by the failed frame.
    assert is_mapped(file_a) == (operation == "fuse_lora")
    assert sorted(os.listdir(tmp_path)) == before  # no output, no temporary file


def _latent_file(tmp_path) -> Path:
    path = tmp_path / "z_image_turbo.safetensors"
    save_file(tiny_latent_state_dict(), str(path))
    return path


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("latent B", ValueError, r"file_b .* is a latent Z-Image checkpoint.*convert it first with `l2p convert`"),
        ("latent A", ValueError, r"file_a .* is a latent Z-Image checkpoint"),
        ("truncated A", ValueError, r"step-10\.safetensors is corrupt or truncated"),
        ("missing B", FileNotFoundError, "pixel_init.safetensors"),
        ("output is B", ValueError, "is also an input"),
        ("unrelated files", ValueError, "No tensor of file_a matches file_b"),
    ],
)
def test_bad_inputs_raise_clear_errors_and_write_nothing(files, tmp_path, case, error, message):
    file_a, file_b, _, _ = files
    out = tmp_path / "merged.safetensors"
    if case == "latent B":
        file_b = _latent_file(tmp_path)
    elif case == "latent A":
        file_a = _latent_file(tmp_path)
    elif case == "truncated A":
        file_a.write_bytes(file_a.read_bytes()[:-100])
    elif case == "missing B":
        file_b.unlink()
    elif case == "output is B":
        out = file_b
    else:
        save_file({"something.else": torch.zeros(2)}, str(file_a))
    before = {name: digest(tmp_path / name) for name in os.listdir(tmp_path)}
    with pytest.raises(error, match=message):
        merge_checkpoints(file_a, file_b, out)
    assert {name: digest(tmp_path / name) for name in os.listdir(tmp_path)} == before


def test_merge_weights_script_prints_hash_and_model_and_exits_2_on_bad_input(files, tmp_path, monkeypatch, capsys):
    file_a, file_b, _, _ = files
    out = tmp_path / "merged.safetensors"
    argv = ["merge_weights.py", "--file_a", str(file_a), "--file_b", str(file_b), "--file_out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.warns(UserWarning), pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(MERGE_WEIGHTS), run_name="__main__")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert f"output hash: {meta_hash(**TINY)}" in printed and f"DiffSynth model: {L2P_DIT_MODEL_NAME}" in printed

    assert main(["merge", "--file_a", str(file_a), "--file_b", str(file_b), "--file_out", str(file_a)]) == 2
    assert "l2p merge: error: The output" in capsys.readouterr().err
