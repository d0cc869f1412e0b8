"""Bad inputs through the real ``l2p`` entry point: each one gets one clear line, a non-zero exit, no traceback,
no output or partial file, and its inputs untouched.

Every case builds its inputs in a fresh folder, runs ``cli.main`` in-process and compares the folder before and
after, byte for byte and mode for mode. Cases are grouped by family; each family has at least three.
"""

import hashlib
import json
import os
import re
import shutil
import socket
import struct
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from tiny_checkpoints import failing_writer, save_sharded, tiny_latent_state_dict

from diffsynth_l2p import cli

# A place no one (root included) can write into: sysfs refuses new files.
READ_ONLY = Path("/sys/l2p-bad-inputs")


class Case(NamedTuple):
    build: Callable[["Inputs"], List[str]]  # writes the inputs, returns the l2p arguments
    message: str  # regular expression the one error line must match


class Inputs:
    """Helpers that write a case's inputs into ``root``."""

    def __init__(self, root: Path, tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root, self.tiny, self.monkeypatch = root, tiny, monkeypatch

    def path(self, name: str) -> str:
        return str(self.root / name)

    def text(self, name: str, content: str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        return str(path)

    def folder(self, name: str) -> str:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return self.path(name)

    def prompts(self) -> str:
        return self.text("prompts.txt", "a red circle left of a blue square\na small yellow star\n")

    def binary(self, name: str, content: bytes) -> str:
        (self.root / name).write_bytes(content)
        return self.path(name)

    def model(self, damage: str = "") -> str:
        """A copy of the tiny model set; ``damage`` names a file in it to truncate to half its size."""
        folder = self.root / "model"
        folder.mkdir()
        shutil.copy(self.tiny["dit"], folder / Path(self.tiny["dit"]).name)
        shutil.copytree(Path(self.tiny["text_encoder"][0]).parent, folder / "text_encoder")
        shutil.copytree(self.tiny["tokenizer"], folder / "tokenizer")
        if damage:
            target = folder / damage
            os.truncate(target, target.stat().st_size // 2)
        return str(folder)

    def dataset(self, metadata: str = "", name: str = "metadata.csv") -> str:
        """A one-image training folder; ``metadata`` replaces its metadata file's content."""
        folder = self.root / "data"
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "a.png")
        (folder / name).write_text(metadata or "image,prompt,seed\na.png,a red square,1\n", encoding="utf-8")
        return str(folder)

    def header(self, name: str, header: bytes, data: int) -> str:
        """A safetensors file with a raw ``header`` and ``data`` zero bytes after it."""
        path = self.root / name
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(data))
        return str(path)


def _generate(inputs: Inputs, *extra: str) -> List[str]:
    return ["generate", "--prompt", "a cat", "--steps", "1", "--out", inputs.path("out.png"), *extra]


def _synthesize(inputs: Inputs, *extra: str, prompts: str = "", output_dir: str = "", factory: bool = True) -> list:
    source = ["--source_factory", "test_synthesize:tiny_source_pipeline"] if factory else []
    output_dir = output_dir or inputs.path("corpus")
    return ["synthesize", "--prompts", prompts or inputs.prompts(), "--output_dir", output_dir, *source, *extra]


def _train(inputs: Inputs, *extra: str, dataset: str = "") -> List[str]:
    return ["train", "--dataset", dataset or inputs.folder("data"), "--output_path", inputs.path("run"),
            "--max_steps", "1", *extra]  # fmt: skip


def _symlinked_prompts(inputs: Inputs) -> List[str]:
    os.symlink(inputs.prompts(), inputs.path("link.txt"))
    return ["prompts", "filter", inputs.path("link.txt"), "--out", inputs.path("prompts.txt")]


def _lora_that_does_not_fit(inputs: Inputs) -> List[str]:
    key = "layers.0.attention.to_q"
    save_file({f"{key}.lora_A.weight": torch.zeros(4, 7), f"{key}.lora_B.weight": torch.zeros(128, 4)},
              inputs.path("lora.safetensors"))  # fmt: skip
    return ["merge", "--file_a", inputs.path("lora.safetensors"), "--file_b", inputs.tiny["dit"],
            "--file_out", inputs.path("fused.safetensors")]  # fmt: skip


def _full_disk_merge(inputs: Inputs) -> List[str]:
    inputs.monkeypatch.setattr("diffsynth_l2p.merge.write_safetensors", failing_writer())
    return ["merge", "--file_a", inputs.tiny["dit"], "--file_b", inputs.tiny["dit"],
            "--file_out", inputs.path("merged.safetensors")]  # fmt: skip


def _offline(inputs: Inputs, source: str = "") -> List[str]:
    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    inputs.monkeypatch.delenv("DIFFSYNTH_SKIP_DOWNLOAD", raising=False)
    if source:
        inputs.monkeypatch.setenv("DIFFSYNTH_DOWNLOAD_SOURCE", source)
    inputs.monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return _synthesize(inputs, "--device", "cpu", factory=False)


def _bomb(inputs: Inputs) -> List[str]:
    inputs.monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # the 32x32 image is now over twice the limit
    return _train(inputs, "--model", inputs.tiny["dit"], *inputs.tiny["text_encoder"], inputs.tiny["tokenizer"],
                  dataset=inputs.dataset())  # fmt: skip


OVERLAP = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()  # fmt: skip
NESTED = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")

CASES: Dict[str, Case] = {
    # The three severe cases of the issue.
    "prompts filter --out the input": Case(
        lambda i: ["prompts", "filter", i.prompts(), "--out", i.path("prompts.txt")], "is also an input"),
    "prompts filter --out the input through a link": Case(_symlinked_prompts, "is also an input"),
    "prompts filter --out the input spelt differently": Case(
        lambda i: ["prompts", "filter", i.prompts(), "--out", i.path("x/../prompts.txt")], "is also an input"),
    "synthesize 100000x100000": Case(
        lambda i: _synthesize(i, "--height", "100000", "--width", "100000"), r"over the cap of 16,777,216"),
    "train --shift nan": Case(lambda i: _train(i, "--shift", "nan"), "--shift must be a finite number, got nan"),
    # Settings that used to write garbage with exit 0.
    "generate --cfg nan": Case(lambda i: _generate(i, "--cfg", "nan"), "--cfg: must be a finite number"),
    "generate --cfg inf": Case(lambda i: _generate(i, "--cfg", "inf"), "--cfg: must be a finite number"),
    "generate --cfg -1": Case(lambda i: _generate(i, "--cfg", "-1"), "--cfg: must be >= 0"),
    "generate --shift 0": Case(lambda i: _generate(i, "--shift", "0"), "--shift: must be > 0"),
    "generate --shift -1": Case(lambda i: _generate(i, "--shift", "-1"), "--shift: must be > 0"),
    "generate --shift nan": Case(lambda i: _generate(i, "--shift", "nan"), "--shift: must be a finite number"),
    "generate --height 0": Case(lambda i: _generate(i, "--height", "0"), "--height: must be an integer >= 1"),
    "generate --steps 0": Case(lambda i: _generate(i, "--steps", "0"), "--steps: must be an integer >= 1"),
    "synthesize --steps 0": Case(lambda i: _synthesize(i, "--steps", "0"), "--num_inference_steps/--steps: must"),
    "tiny-world eval --steps 0": Case(lambda i: ["tiny-world", "eval", "--steps", "0"], "--steps: must be an integer"),
    "tiny-world eval --seeds 0": Case(lambda i: ["tiny-world", "eval", "--seeds", "0"], "--seeds: must be an integer"),
    "tiny-world eval --cfg nan": Case(lambda i: ["tiny-world", "eval", "--cfg", "nan"], "--cfg: must be a finite"),
    "tiny-world reproduce --threads 0": Case(
        lambda i: ["tiny-world", "reproduce", i.path("run"), "--threads", "0"], "--threads: must be an integer"
    ),
    "synthesize --cfg nan": Case(lambda i: _synthesize(i, "--cfg", "nan"), "--cfg_scale/--cfg: must be a finite"),
    # Outputs that cannot be written.
    "generate into a read-only place": Case(
        lambda i: _generate(i, "--out", str(READ_ONLY / "x.png")), r"Cannot write .* \(Permission denied\)"),
    "generate --out a folder named *.png": Case(
        lambda i: _generate(i, "--out", i.folder("dir.png")), "is a directory; give a file path"),
    "generate --out under a file": Case(
        lambda i: _generate(i, "--out", os.path.join(i.prompts(), "images")), "is a file, not a directory"),
    "merge --file_out a folder": Case(
        lambda i: ["merge", "--file_a", i.tiny["dit"], "--file_b", i.tiny["dit"], "--file_out",
                   i.folder("out.safetensors")], "is a directory"),  # fmt: skip
    "merge on a full disk": Case(_full_disk_merge, r"No space left on device"),
    "convert into a read-only place": Case(
        lambda i: ["convert", "--latent_ckpt_files", *save_sharded(tiny_latent_state_dict(), i.root, shards=1),
                   "--output_path", str(READ_ONLY / "init.safetensors")], "Cannot write"),  # fmt: skip
    "prompts expand --out under a file": Case(
        lambda i: ["prompts", "expand", "--out", os.path.join(i.prompts(), "p.jsonl")], "is a file, not a directory"),
    "prompts stats --histogram a folder": Case(
        lambda i: ["prompts", "stats", i.prompts(), "--histogram", i.folder("h.png")], "is a directory"),
    "tiny-init into a read-only place": Case(lambda i: ["tiny-init", str(READ_ONLY / "tiny")], "Cannot write"),
    "synthesize --output_dir a file": Case(
        lambda i: _synthesize(i, output_dir=i.text("corpus", "")), "is a file; give a directory"),
    "train --output_path under a file": Case(
        lambda i: _train(i, "--output_path", os.path.join(i.prompts(), "run")), "is a file, not a directory"),
    # Damaged inputs met through --model folders and malformed safetensors headers.
    "generate with a truncated DiT in the model folder": Case(
        lambda i: _generate(i, "--model", i.model("l2p-dit.safetensors")), "corrupt or truncated.*re-download"),
    "generate with a truncated text encoder in the model folder": Case(
        lambda i: _generate(i, "--model", i.model("text_encoder/model.safetensors")), "corrupt or truncated"),
    "train with a truncated DiT in the model folder": Case(
        lambda i: _train(i, "--model", i.model("l2p-dit.safetensors"), dataset=i.dataset()), "corrupt or truncated"),
    "inspect overlapping byte ranges": Case(
        lambda i: ["inspect", i.header("x.safetensors", OVERLAP, 12)], "invalid offset for tensor .b."),
    "inspect a deeply nested header": Case(
        lambda i: ["inspect", i.header("x.safetensors", NESTED, 0)], "corrupt or truncated.*(recursion|nest|depth)"),
    "merge a truncated checkpoint": Case(
        lambda i: ["merge", "--file_a", os.path.join(i.model("l2p-dit.safetensors"), "l2p-dit.safetensors"),
                   "--file_b", i.tiny["dit"], "--file_out", i.path("m.safetensors")],
        "corrupt or truncated"),  # fmt: skip
    # Devices that do not exist.
    "generate --device bogus": Case(lambda i: _generate(i, "--device", "bogus"), "Unknown device 'bogus'"),
    "generate --device cuda without a GPU": Case(lambda i: _generate(i, "--device", "cuda"), "no CUDA GPU"),
    "generate --device cuda:7 without a GPU": Case(lambda i: _generate(i, "--device", "cuda:7"), "no CUDA GPU"),
    "synthesize --device bogus": Case(lambda i: _synthesize(i, "--device", "bogus"), "Unknown device 'bogus'"),
    "prompts expand --device meta": Case(
        lambda i: ["prompts", "expand", "--out", i.path("p.jsonl"), "--llm", i.folder("llm"), "--device", "meta"],
        "Device 'meta' is not available"),
    # Prompt files and training metadata of the wrong shape.
    "generate --prompts with a null seed": Case(
        lambda i: ["generate", "--prompts", i.text("p.jsonl", '{"prompt": "a", "seed": null}\n')],
        r"p.jsonl has 1 malformed record\(s\): line 1: 'seed' must be an integer"),
    "generate --prompts with a seed as text": Case(
        lambda i: ["generate", "--prompts", i.text("p.jsonl", '{"prompt": "a"}\n{"prompt": "b", "seed": "3"}\n')],
        r"line 2: 'seed' must be .*write it without quotes"),
    "generate --prompts .json holding an object": Case(
        lambda i: ["generate", "--prompts", i.text("p.json", '{"prompt": "a"}')], "holds one JSON object"),
    "synthesize --prompts with a line that is a list": Case(
        lambda i: _synthesize(i, prompts=i.text("p.jsonl", '["a cat"]\n')), "line 1: expected an object"),
    "train metadata with a null seed": Case(
        lambda i: _train(i, dataset=i.dataset('{"image": "a.png", "prompt": "a", "seed": null}\n', "metadata.jsonl")),
        "Metadata row 1: 'seed' must be an integer, got null"),
    "train metadata with a number as the prompt": Case(
        lambda i: _train(i, dataset=i.dataset('[{"image": "a.png", "prompt": 5, "seed": 1}]', "metadata.json")),
        "Metadata row 1: 'prompt' must be text, got 5"),
    "train metadata .json holding an object": Case(
        lambda i: _train(i, dataset=i.dataset('{"image": "a.png"}', "metadata.json")), "must hold a JSON list"),
    "train metadata with a line that is a list": Case(
        lambda i: _train(i, dataset=i.dataset('["a.png", "a", 1]\n', "metadata.jsonl")), "line 1 must be an object"),
    "train metadata.csv with a missing field": Case(
        lambda i: _train(i, dataset=i.dataset("image,prompt,seed\na.png,a red square\n")),
        "metadata.csv line 2 has 2 fields but the header has 3"),
    "train on a decompression bomb": Case(_bomb, r"No usable image .*decompression bomb"),
    "prompts stats of a file that is not UTF-8": Case(
        lambda i: ["prompts", "stats", i.binary("p.txt", b"a cat\n\xff\xfe\n")], "is not UTF-8 text"),
    # Numbers at or past their limits.
    "train --max_pixels 0": Case(lambda i: _train(i, "--max_pixels", "0"), "--max_pixels must be an integer >= 256"),
    "train --max_pixels -5": Case(lambda i: _train(i, "--max_pixels", "-5"), "--max_pixels must be an integer >= 256"),
    "train --seed 2**32": Case(
        lambda i: _train(i, "--seed", str(2**32)), r"--seed must be an integer in 0..4294967295"),
    "prompts stats --bins 0": Case(lambda i: ["prompts", "stats", i.prompts(), "--bins", "0"], "--bins: must be"),
    "prompts stats --bins -3": Case(lambda i: ["prompts", "stats", i.prompts(), "--bins", "-3"], "--bins: must be"),
    "prompts filter --min_chars above --max_chars": Case(
        lambda i: ["prompts", "filter", i.prompts(), "--out", i.path("o.txt"), "--min_chars", "50", "--max_chars", "9"],
        "--min_chars .* is above --max_chars"),
    "prompts expand --per_sub_class 0": Case(
        lambda i: ["prompts", "expand", "--out", i.path("p.jsonl"), "--per_sub_class", "0"], "--per_sub_class"),
    "generate --seed 2**64": Case(lambda i: _generate(i, "--seed", str(2**64)), r"--seed: must be an integer in 0\.\."),
    "generate --seed 2**64-1 with two images": Case(
        lambda i: _generate(i, "--seed", str(2**64 - 1), "--num-images", "2"), r"in 0..18446744073709551614"),
    "convert --seed -1": Case(
        lambda i: ["convert", "--latent_ckpt_files", "x.safetensors", "--output_path", "y.safetensors", "--seed", "-1"],
        "--seed: must be an integer in 0"),
    "synthesize --num_processes 0": Case(lambda i: _synthesize(i, "--num_processes", "0"), "--num_processes"),
    "merge a LoRA whose shapes do not fit": Case(_lora_that_does_not_fit, r"B \[128, 4\] @ A \[4, 7\].*\[128, 128\]"),
    # More options that name what they need.
    "train --model_paths that is not JSON": Case(
        lambda i: _train(i, "--model_paths", "[model]", dataset=i.dataset()), "--model_paths is not valid JSON"),
    "train --model_paths holding an object": Case(
        lambda i: _train(i, "--model_paths", '{"dit": "x"}', dataset=i.dataset()), "must be a JSON list of paths"),
    "train --resume a missing state": Case(
        lambda i: _train(i, "--resume", i.path("state/step-9"), dataset=i.dataset()), "No training state at"),
    "synthesize --num_processes inside a launcher": Case(
        lambda i: (i.monkeypatch.setenv("WORLD_SIZE", "2"), _synthesize(i, "--num_processes", "2"))[1],
        r"inside a launcher that already started 2 workers; drop --num_processes"),
    "convert --config bogus": Case(
        lambda i: ["convert", "--latent_ckpt_files", *save_sharded(tiny_latent_state_dict(), i.root, shards=1),
                   "--output_path", i.path("o.safetensors"), "--config", "bogus"], "Unknown L2P config 'bogus'"),
    "merge a missing file": Case(
        lambda i: ["merge", "--file_a", i.path("nope.safetensors"), "--file_b", i.tiny["dit"],
                   "--file_out", i.path("m.safetensors")], "Checkpoint file not found"),  # fmt: skip
    # synthesize's default source (Z-Image-Turbo from the hub) offline.
    "synthesize offline": Case(_offline, "modelscope.cn is unreachable.*--source_model"),
    "synthesize offline from Hugging Face": Case(
        lambda i: _offline(i, "HuggingFace"), "huggingface.co is unreachable.*--source_model"),
    "synthesize with DIFFSYNTH_SKIP_DOWNLOAD and no local files": Case(
        lambda i: _synthesize(i, factory=False), r"Z-Image-Turbo.*file not found.*--source_model"),
}
MARKS = {name: NO_GPU for name in CASES if "without a GPU" in name}


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its mode and, for files, a hash of its bytes."""
    state = {}
    for path in sorted(root.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        state[str(path.relative_to(root))] = (path.lstat().st_mode, digest)
    return state


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=MARKS.get(name, ()), id=name.replace(" ", "-")) for name in CASES]
)
def test_bad_input_gets_one_line_and_changes_nothing(name, tmp_path, tiny_model_set, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative outputs (e.g. ./models of a hub download) would land here
    case = CASES[name]
    inputs = Inputs(tmp_path, tiny_model_set, monkeypatch)
    argv = case.build(inputs)
    before = snapshot(tmp_path)
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None) and "Traceback" not in err
    assert len(lines) == 1, err
    assert re.search(case.message, lines[0]), lines[0]
    assert lines[0].startswith("l2p ")
    assert snapshot(tmp_path) == before


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("L2P_DEBUG", "1")
    with pytest.raises(ValueError, match="Unknown device"):
        cli.main(["generate", "--prompt", "a", "--device", "bogus", "--out", str(tmp_path / "o.png")])
    monkeypatch.delenv("L2P_DEBUG")
    with pytest.raises(ValueError, match="Unknown device"):
        cli.main(["generate", "--prompt", "a", "--device", "bogus", "--out", str(tmp_path / "o.png"), "--debug"])
