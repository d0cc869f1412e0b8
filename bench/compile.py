"""Eager vs ``torch.compile``d DiT forward of the L2P pipeline, side by side, with the compile time on its own.

Model: the shipped tiny model in fp32. Variants, each on a fresh copy of the DiT: ``blocks`` is DiffSynth's own
``BasePipeline.compile_pipeline`` (regional compilation of the repeated transformer blocks); ``blocks+head`` is
``ZImageL2PPipeline.compile_pipeline``, which also compiles the detailer head (``local_decoder``), most of an L2P
step at pixel sizes.
For each (variant, size): the first compiled call's time minus an eager call is the compile time; then eager and
compiled calls alternate and the medians give the speed-up. The largest absolute difference from the eager output
is reported (the compiled kernels reorder float sums). On CPU, inductor needs a C++ compiler.
Writes <out> (JSON, atomically).
Run: .venv/bin/python bench/compile.py [--sizes 256] [--repeats 5] [--threads 2]
"""

import argparse
import copy
import functools
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
from bench_io import write_results
from diffsynth.diffusion.base_pipeline import BasePipeline

from diffsynth_l2p.pipelines.loading import load_pipeline
from diffsynth_l2p.pipelines.pixel_pipeline import model_fn_l2p
from diffsynth_l2p.tiny_world.sampling import encode_prompts

OUT = Path(__file__).resolve().parent / "results" / "compile.json"
PROMPT = "a red circle left of a blue triangle"
VARIANTS = ("blocks", "blocks+head")


def timed(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compile_variant(pipe: Any, variant: str) -> None:
    """Compile ``pipe.dit`` as DiffSynth's base pipeline does (``blocks``) or as ours does (``blocks+head``)."""
    if variant == "blocks":
        BasePipeline.compile_pipeline(pipe)
    else:
        pipe.compile_pipeline()


def time_size(eager_dit: Any, compiled_dit: Any, cap: List[torch.Tensor], size: int, repeats: int) -> Dict[str, float]:
    """Compile time, median eager and compiled forward times and their largest difference at one image size."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    t = torch.tensor([500.0])
    eager, compiled = (
        functools.partial(model_fn_l2p, dit, x, t, cap, computation_dtype=torch.float32)
        for dit in (eager_dit, compiled_dit)
    )
    first_eager = timed(eager)
    compile_s = timed(compiled) - first_eager
    eager_times, compiled_times = [], []
    for _ in range(repeats):  # alternate, so a change in machine load hits both
        eager_times.append(timed(eager))
        compiled_times.append(timed(compiled))
    t_eager, t_compiled = statistics.median(eager_times), statistics.median(compiled_times)
    return {
        "compile_s": compile_s, "eager_s": t_eager, "compiled_s": t_compiled, "speedup": t_eager / t_compiled,
        "max_abs_difference": (eager() - compiled()).abs().max().item(),
    }


def run_variant(pipe: Any, variant: str, sizes: List[int], repeats: int) -> List[Dict[str, Any]]:
    eager_dit = pipe.dit
    pipe.dit = copy.deepcopy(eager_dit)
    compile_variant(pipe, variant)
    cap = encode_prompts(pipe, [PROMPT])
    rows = []
    with torch.no_grad():
        for size in sizes:
            row = {"variant": variant, "size": size, **time_size(eager_dit, pipe.dit, cap, size, repeats)}
            rows.append(row)
            print(f"{variant:>12} {size:>5} {row['compile_s']:>9.1f}s {row['eager_s'] * 1e3:>9.1f}ms "
                  f"{row['compiled_s'] * 1e3:>10.1f}ms {row['speedup']:>8.2f}x {row['max_abs_difference']:>10.2e}")
    pipe.dit = eager_dit
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(None, torch_dtype=torch.float32)
    load = os.getloadavg()[0]
    print(f"fp32, {args.threads} torch threads, 1-minute load {load:.2f}; torch {torch.__version__}")
    print(f"{'variant':>12} {'size':>5} {'compile':>10} {'eager':>11} {'compiled':>12} {'speedup':>9} {'max diff':>10}")
    rows = [row for variant in VARIANTS for row in run_variant(pipe, variant, args.sizes, args.repeats)]
    write_results(args.out, {"dtype": "float32", "threads": args.threads, "load_1min_start": load,
                             "load_1min_end": os.getloadavg()[0], "rows": rows})


if __name__ == "__main__":
    main()
