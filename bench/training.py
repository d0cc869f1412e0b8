"""Training throughput of the tiny model (fp32, CPU) and the real-size optimizer + gradient memory per preset.

Throughput: the project's trainer pieces (``build_training_module``, ``make_optimizer``, ``training_dataset``,
``bucket_batches``, ``collate``) on a corpus of shapes-world renders written to a temporary folder in the
``l2p synthesize`` layout; each step is forward + backward + AdamW step, fp32 (``mixed_precision: no``), with the
trainer's defaults (gradient checkpointing on, seeded noise). Reports the median step time after --warmup steps,
samples/s and the peak RSS above the post-import baseline (the tiny run's weights, states and activations).
Memory: ``training/memory.py``'s per-setup bytes (weights, gradients, AdamW states) of the real-size 1K DiT for
each preset, as ``l2p train --dry-run`` prints them (activations excluded). Writes <out> (JSON, atomically).
Run: .venv/bin/python bench/training.py [--steps 10] [--batch-size 4] [--presets release lora:32 full]
"""

import argparse
import os
import resource
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from accelerate import Accelerator
from bench_io import write_results

from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.registry import meta_model
from diffsynth_l2p.tiny_world.student import render_corpus, training_records
from diffsynth_l2p.training.dataset import bucket_batches, collate
from diffsynth_l2p.training.memory import GIB, memory_report
from diffsynth_l2p.training.presets import resolve_trainable
from diffsynth_l2p.training.trainer import (
    TrainConfig,
    build_training_module,
    make_optimizer,
    resolve_defaults,
    training_dataset,
    training_precision,
)

OUT = Path(__file__).resolve().parent / "results" / "training.json"


def write_corpus(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` shapes-world renders with their captions and seeds in the ``l2p synthesize`` corpus layout."""
    render_corpus(training_records(count, seed), folder, seed)
    return folder


def throughput(corpus: Path, steps: int, warmup: int, batch_size: int, preset: str = "release") -> Dict[str, Any]:
    """Median seconds of a tiny-model training step (fp32, CPU) after ``warmup`` steps, and samples per second."""
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    accelerator = Accelerator(mixed_precision="no", cpu=True)
    with tempfile.TemporaryDirectory() as output:
        config = resolve_defaults(
            TrainConfig(dataset=str(corpus), output_path=output, preset=preset, batch_size=batch_size)
        )
        dataset = training_dataset(config)
        model = build_training_module(config, accelerator, dataset.prompts, training_precision(accelerator))
    optimizer = make_optimizer(accelerator, model, config)
    batches = [collate([dataset[i] for i in indices])
               for indices in bucket_batches(dataset.sizes, batch_size, config.seed, 0) if len(indices) == batch_size]
    model.train()
    seconds = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss = model(batches[step % len(batches)], torch.Generator().manual_seed(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - start)
    step_seconds = statistics.median(seconds[warmup:])
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) * 1024
    return dict(preset=preset, batch_size=batch_size, steps=steps, image_size=list(dataset.sizes[0]),
                trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                step_seconds=step_seconds, samples_per_second=batch_size / step_seconds, peak_rss_bytes=peak,
                final_loss=float(loss.detach()))


def preset_memory(presets: Sequence[str], config_name: str = "1k") -> List[Dict[str, Any]]:
    """``training/memory.py``'s report of the real-size config for each preset (meta device)."""
    model = meta_model(**L2P_CONFIGS[config_name].kwargs)
    names = [name for name, _ in model.named_parameters()]
    reports = [memory_report(model, resolve_trainable(names, preset)) for preset in presets]
    return [dict(preset=report.spec, trainable=report.trainable, frozen=report.frozen,
                 rows=[dict(asdict(row), gpu_total=row.gpu_total) for row in report.rows]) for report in reports]


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Time the tiny training step, tabulate the preset memories, write the JSON; return its payload."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per step (default %(default)s)")
    parser.add_argument("--images", type=int, default=32, help="corpus size (default %(default)s)")
    parser.add_argument("--presets", nargs="+", default=["release", "lora:32", "full"],
                        help="presets of the real-size memory table (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="output JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        speed = throughput(write_corpus(Path(folder) / "corpus", args.images), args.steps, args.warmup,
                           args.batch_size)
    load_after = os.getloadavg()[0]
    print(f"Tiny model, preset {speed['preset']}, fp32 CPU, {args.threads} threads, batch {speed['batch_size']} of "
          f"{speed['image_size'][1]}x{speed['image_size'][0]}: {speed['step_seconds'] * 1e3:.1f} ms/step (median of "
          f"{args.steps}), {speed['samples_per_second']:.1f} samples/s, peak RSS +{speed['peak_rss_bytes'] / 2**20:.0f}"
          f" MiB; 1-minute load average {load_before:.2f} before, {load_after:.2f} after.")
    memory = preset_memory(args.presets)
    print("Real-size 1K DiT, weights + gradients + optimizer states per GPU in GiB (activations excluded):")
    setups = [row["setup"] for row in memory[0]["rows"]]
    width = max(map(len, setups)) + 2
    print(f"  {'setup':<{width}}" + "".join(f"{entry['preset']:>10}" for entry in memory))
    for index, setup in enumerate(setups):
        print(f"  {setup:<{width}}" + "".join(f"{entry['rows'][index]['gpu_total'] / GIB:>10.2f}" for entry in memory))
    payload = dict(threads=args.threads, load_average_1min=dict(before=load_before, after=load_after),
                   torch=torch.__version__, throughput=speed, preset_memory=memory)
    write_results(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
