"""Every verb's outputs honour the umask: 0644 files and 0755 folders under umask 022."""

import os
import stat
from pathlib import Path

import pytest
from test_synthesize import PROMPTS, SIZE, _args, source_dir  # noqa: F401 -- source_dir is a fixture
from tiny_checkpoints import save_sharded, tiny_latent_state_dict

from diffsynth_l2p.cli import main


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> dict:
    """``{relative path: permission bits}`` of everything under ``root``."""
    found = {}
    for directory, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def test_every_verb_writes_0644_files_and_0755_folders_under_umask_022(
    tmp_path, umask_022, source_dir, tiny_model_set  # noqa: F811
):
    out = tmp_path / "out"
    latent = save_sharded(tiny_latent_state_dict(), tmp_path, shards=1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    model = [tiny_model_set["dit"], *tiny_model_set["text_encoder"], tiny_model_set["tokenizer"]]
    commands = [
        ["tiny-init", str(out / "tiny")],
        ["generate", "--prompt", "a red circle", "--steps", "1", "--height", "32", "--width", "32",
         "--out", str(out / "generate" / "image.png")],
        ["prompts", "expand", "--per_sub_class", "1", "--out", str(out / "prompts" / "expanded.jsonl")],
        ["prompts", "filter", str(prompts), "--min_chars", "1", "--out", str(out / "prompts" / "kept.txt")],
        ["prompts", "stats", str(prompts), "--histogram", str(out / "prompts" / "lengths.png")],
        ["convert", "--latent_ckpt_files", *latent, "--output_path", str(out / "convert" / "init.safetensors")],
        ["merge", "--file_a", tiny_model_set["dit"], "--file_b", tiny_model_set["dit"],
         "--file_out", str(out / "merge" / "merged.safetensors")],
        _args(str(prompts), out / "corpus", source_dir),
        ["train", "--dataset", str(out / "corpus"), "--model", *model, "--output_path", str(out / "train"),
         "--max_steps", "1", "--save_steps", "1", "--max_pixels", str(SIZE * SIZE), "--no_gradient_checkpointing"],
    ]  # fmt: skip
    for command in commands:
        assert main(command) == 0, command
    found = modes(out)
    for verb in ("tiny/l2p-dit.safetensors", "generate/image.png", "prompts/kept.txt", "prompts/lengths.png",
                 "convert/init.safetensors", "merge/merged.safetensors", "corpus/metadata.csv",
                 "corpus/images/000000.png", "train/step-1.safetensors", "train/training_args.json"):  # fmt: skip
        assert verb in found
    wrong = {path: oct(mode) for path, mode in found.items() if mode != (0o755 if (out / path).is_dir() else 0o644)}
    assert not wrong
