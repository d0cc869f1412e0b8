"""bench/training.py: a few tiny training steps give a positive throughput; preset memory is training/memory.py's."""

import importlib.util
import sys
from pathlib import Path

from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.registry import meta_model
from diffsynth_l2p.training.memory import SETUPS, memory_row
from diffsynth_l2p.training.presets import resolve_trainable

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the script imports bench_io.py
spec = importlib.util.spec_from_file_location("bench_training", BENCH / "training.py")
training = importlib.util.module_from_spec(spec)
spec.loader.exec_module(training)


def test_throughput_of_a_tiny_run_is_positive(tmp_path):
    corpus = training.write_corpus(tmp_path / "corpus", 4)
    speed = training.throughput(corpus, steps=1, warmup=1, batch_size=2)
    assert speed["samples_per_second"] > 0 and speed["step_seconds"] > 0
    assert speed["trainable"] > 0 and speed["image_size"] == [64, 64]


def test_preset_memory_is_the_dry_run_arithmetic():
    model = meta_model(**L2P_CONFIGS["1k"].kwargs)
    names = [name for name, _ in model.named_parameters()]
    for entry in training.preset_memory(["release", "lora:8"]):
        report_rows = entry["rows"]
        trainable = resolve_trainable(names, entry["preset"])
        assert entry["trainable"] + entry["frozen"] >= sum(p.numel() for p in model.parameters())
        for setup, row in zip(SETUPS, report_rows, strict=True):
            expected = memory_row(setup, entry["trainable"], entry["frozen"])
            assert row["gpu_total"] == expected.gpu_total and row["cpu"] == expected.cpu
        assert trainable.spec == entry["preset"]
    release = training.preset_memory(["release"])[0]
    assert 2.5e9 < release["trainable"] < 2.6e9  # the released recipe: about 2.55B of 6.17B
