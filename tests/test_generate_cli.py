"""`l2p generate` and `l2p tiny-init`, and the file helpers behind them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffsynth_l2p.cli import main
from diffsynth_l2p.generate import output_paths, read_png_parameters, save_png

FAST = ["--steps", "2", "--height", "32", "--width", "48"]


def model_args(files: dict) -> list:
    return ["--model", files["dit"], *files["text_encoder"], files["tokenizer"]]


def test_fresh_command_line_writes_an_image_with_its_parameters(tmp_path):
    """The README command, as a user runs it: the default model (the shipped tiny-world student), defaults."""
    env = dict(os.environ, OMP_NUM_THREADS="1", DIFFSYNTH_SKIP_DOWNLOAD="True")
    l2p = Path(sys.executable).with_name("l2p")
    command = [str(l2p), "generate", "--prompt", "a red circle left of a blue square", "--out", "x.png"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "x.png"  # stdout carries only the written paths
    image = Image.open(tmp_path / "x.png")
    assert image.size == (64, 64) and image.mode == "RGB"  # the tiny model's native size
    parameters = read_png_parameters(tmp_path / "x.png")
    assert parameters["prompt"] == "a red circle left of a blue square"
    # The tiny configuration's own CFG default (the 1K release's would be 2.0).
    assert (parameters["seed"], parameters["num_inference_steps"], parameters["cfg_scale"]) == (42, 30, 4.0)
    assert parameters["sigma_shift"] == 3.0 and parameters["model"].endswith("l2p-dit.safetensors")
    assert parameters["cfg_max_sigma"] == 0.8  # the tiny models guide only below sigma 0.8


def test_prompts_file_and_num_images_number_the_outputs(tiny_model_set, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    records = [{"prompt": "a red circle"}, {"prompt": "a blue square", "seed": 7, "negative_prompt": "green"}]
    prompts.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "images"
    argv = ["generate", "--prompts", str(prompts), "--num-images", "2", "--out", str(out), "--seed", "3"]
    assert main([*argv, *FAST, *model_args(tiny_model_set)]) == 0
    paths = capsys.readouterr().out.split()
    assert [Path(p).name for p in paths] == ["000-a-red-circle.png", "001-a-red-circle.png"] + [
        "002-a-blue-square.png",
        "003-a-blue-square.png",
    ]
    seen = [read_png_parameters(p) for p in paths]
    assert [(p["prompt"], p["seed"], p["negative_prompt"]) for p in seen] == [
        ("a red circle", 3, ""),
        ("a red circle", 4, ""),
        ("a blue square", 7, "green"),
        ("a blue square", 8, "green"),
    ]
    assert all((p["height"], p["width"], p["num_inference_steps"]) == (32, 48, 2) for p in seen)


def test_generate_cli_matches_the_pipeline(tiny_model_set, tmp_path):
    from diffsynth_l2p.pipelines.loading import load_pipeline

    out = tmp_path / "one.png"
    assert (
        main(["generate", "--prompt", "a dot", "--out", str(out), "--cfg", "1.5", *FAST, *model_args(tiny_model_set)])
        == 0
    )
    expected = load_pipeline(tiny_model_set)("a dot", cfg_scale=1.5, num_inference_steps=2, height=32, width=48)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(expected))


def test_bad_prompts_file_exits_with_a_message(tiny_model_set, tmp_path, capsys):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"text": "no prompt key"}\n')
    assert main(["generate", "--prompts", str(prompts), *model_args(tiny_model_set)]) == 2
    assert "line 1: 'prompt' must be a non-empty string, got null" in capsys.readouterr().err


def test_tiny_init_writes_a_loadable_set_and_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "tiny"
    assert main(["tiny-init", str(target), "--seed", "5"]) == 0
    assert "dit:" in capsys.readouterr().out
    assert (target / "l2p-dit.safetensors").is_file() and (target / "tokenizer").is_dir()
    assert main(["tiny-init", str(target)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_output_paths():
    assert output_paths("x.png", ["a"]) == [Path("x.png")]
    assert output_paths("d/x.png", ["a", "b"]) == [Path("d/x-000.png"), Path("d/x-001.png")]
    assert output_paths("d", ["A Red, circle!", "?"]) == [Path("d/000-a-red-circle.png"), Path("d/001-image.png")]


def test_save_png_is_atomic_and_round_trips_parameters(tmp_path):
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    target = tmp_path / "sub" / "img.png"
    save_png(image, target, {"prompt": "é", "seed": 1})
    assert read_png_parameters(target) == {"prompt": "é", "seed": 1}
    assert np.array_equal(np.asarray(Image.open(target)), np.asarray(image))
    assert [p.name for p in target.parent.iterdir()] == ["img.png"]

    class Broken:
        def save(self, *args, **kwargs):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_png(Broken(), target, {})
    assert [p.name for p in target.parent.iterdir()] == ["img.png"] and read_png_parameters(target)["seed"] == 1
