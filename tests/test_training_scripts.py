"""The release-style launch scripts: their accelerate configs and the arguments they pass to train_L2P.py."""

import os
import subprocess
import sys

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from diffsynth_l2p.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script: str, tmp_path, deepspeed: bool = True) -> subprocess.CompletedProcess:
    """Run the script with a stand-in ``accelerate`` that records its arguments instead of launching, and a stand-in
    Python whose ``import deepspeed`` succeeds or fails."""
    fake = tmp_path / "accelerate"
    fake.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\necho "$PYTORCH_CUDA_ALLOC_CONF" > {tmp_path}/env\n'
    )
    fake.chmod(0o755)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexit {0 if deepspeed else 1}\n")
    python.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", PYTHON=str(python))
    command = ["bash", os.path.join(ROOT, script), "--resume", "latest"]
    return subprocess.run(command, env=env, capture_output=True, text=True)


def launched_arguments(script: str, tmp_path) -> list:
    assert run_script(script, tmp_path).returncode == 0
    return (tmp_path / "args").read_text().splitlines()


@pytest.mark.parametrize("script", ["train_run.sh", "train_run_low_VRAM.sh"])
def test_scripts_name_the_extra_when_deepspeed_is_missing(tmp_path, script):
    result = run_script(script, tmp_path, deepspeed=False)
    assert result.returncode == 1 and not (tmp_path / "args").exists()
    assert result.stderr == f'{script}: DeepSpeed is not installed; run: pip install -e ".[deepspeed]"\n'


@pytest.mark.parametrize(
    "script, config, processes, offload",
    [
        ("train_run.sh", "examples/z_image/accelerate_config_zero2.yaml", 8, "none"),
        ("train_run_low_VRAM.sh", "examples/z_image/accelerate_config_zero2_offload.yaml", 1, "cpu"),
    ],
)
def test_scripts_launch_the_release_recipe(tmp_path, script, config, processes, offload):
    args = launched_arguments(script, tmp_path)
    assert args[:4] == ["launch", "--config_file", config, "examples/z_image/train_L2P.py"]
    parsed = build_parser().parse_args(["train", *args[4:]])
    assert (parsed.learning_rate, parsed.weight_decay, parsed.max_pixels) == (5e-5, 0.01, 1048576)
    assert (parsed.save_steps, parsed.remove_prefix, parsed.preset, parsed.batch_size) == (
        5000,
        "pipe.dit.",
        "release",
        1,
    )
    assert parsed.resume == "latest" and parsed.use_gradient_checkpointing
    low_vram = script == "train_run_low_VRAM.sh"
    assert parsed.cache_text_embeddings == low_vram
    assert parsed.gradient_accumulation_steps == (8 if low_vram else 1)
    expected_env = "expandable_segments:True" if low_vram else ""
    assert (tmp_path / "env").read_text().strip() == expected_env

    accelerate = load_config_from_file(os.path.join(ROOT, config))
    assert accelerate.distributed_type == "DEEPSPEED" and accelerate.num_processes == processes
    assert accelerate.mixed_precision == "bf16"
    assert accelerate.deepspeed_config["zero_stage"] == 2
    assert accelerate.deepspeed_config["offload_optimizer_device"] == offload


def test_train_entry_point_dry_run():
    script = os.path.join(ROOT, "examples", "z_image", "train_L2P.py")
    result = subprocess.run([sys.executable, script, "--dry-run"], capture_output=True, text=True, check=True)
    assert "trainable 2,548,257,795 (2.55B, 41.3%)" in result.stdout
