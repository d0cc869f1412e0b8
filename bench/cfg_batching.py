"""Per-image time of a CFG pipeline call: positive and negative in one batched forward vs two passes, side by side.

Models: the shipped tiny model (``tiny``, width 128) and, unless --wide-scale is 0, the same pipeline with a
randomly initialised DiT that is --wide-scale times wider (``wide``: width, heads and head channels scaled; the
text encoder and caption width are the tiny ones). Each (model, size) row times ``pipe(..., batch_cfg=True)``
and ``batch_cfg=False`` alternately (the order flips every repeat) after one warm-up call of each, and reports
the median seconds per image and the ratio two-pass / batched (above 1: batching is faster).
The 1-minute load average is read before and after: other processes on the machine distort the times.
Writes <out>/cfg_batching.json (atomically).
Run: .venv/bin/python bench/cfg_batching.py [--threads 2] [--repeats 5] [--sizes 64 256] [--wide-scale 4]
"""

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from bench_io import write_results

from diffsynth_l2p.model_set import DEFAULT_MODEL_DIR
from diffsynth_l2p.models import ZImageL2PDiT
from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.pipelines.loading import load_pipeline
from diffsynth_l2p.pipelines.z_image_l2p import ZImageL2PPipeline
from diffsynth_l2p.tiny import init_weights

PROMPT, NEGATIVE = "a red circle left of a blue triangle", "a green square"
OUT = Path(__file__).resolve().parent / "results"


def wide_dit(scale: int) -> ZImageL2PDiT:
    """The tiny DiT ``scale`` times wider (seeded random weights); the head dim and caption width stay."""
    kwargs = dict(L2P_CONFIGS["tiny"].kwargs)
    kwargs.update(
        dim=kwargs["dim"] * scale,
        n_heads=kwargs["n_heads"] * scale,
        n_kv_heads=kwargs["n_kv_heads"] * scale,
        head_channels=[channels * scale for channels in kwargs["head_channels"]],
    )
    dit = ZImageL2PDiT(**kwargs)
    init_weights(dit, seed=0)
    return dit.eval()


def tiny_pipeline_and_dits(wide_scale: int) -> Tuple[ZImageL2PPipeline, Dict[str, ZImageL2PDiT]]:
    """The shipped tiny pipeline and the DiTs to time in it: its own (``tiny``) and, unless 0, a wide one."""
    pipe = load_pipeline(DEFAULT_MODEL_DIR)
    models = {"tiny": pipe.dit}
    if wide_scale:
        models["wide"] = wide_dit(wide_scale)
    return pipe, models


def time_modes(pipe: ZImageL2PPipeline, call: Dict[str, Any], repeats: int) -> Dict[str, List[float]]:
    """Seconds per image of ``pipe(**call)`` with batched and two-pass CFG, alternating, after one warm-up each."""
    seconds: Dict[str, List[float]] = {"batched": [], "two_pass": []}
    for repeat in range(repeats + 1):
        modes = ["batched", "two_pass"] if repeat % 2 == 0 else ["two_pass", "batched"]
        for mode in modes:
            start = time.perf_counter()
            pipe(**call, batch_cfg=mode == "batched")
            if repeat > 0:  # repeat 0 is the warm-up
                seconds[mode].append((time.perf_counter() - start) / call["num_images"])
    return seconds


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Time every (model, size) row, print the table and the load average, write the JSON; return its payload."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per mode (default %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sides, multiples of 16")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per call (default %(default)s)")
    parser.add_argument("--num-images", type=int, default=1, help="images per call (default %(default)s)")
    parser.add_argument("--cfg-scale", type=float, default=4.0, help="CFG scale, not 1 (default %(default)s)")
    parser.add_argument("--wide-scale", type=int, default=4, help="width factor of the wide DiT; 0 skips it")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder for cfg_batching.json")
    args = parser.parse_args(argv)
    if args.cfg_scale == 1:
        parser.error("--cfg-scale 1 runs no negative pass: there is nothing to batch.")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    pipe, models = tiny_pipeline_and_dits(args.wide_scale)
    rows = []
    print(f"{'model':>5} {'width':>6} {'size':>5} {'batched':>10} {'two-pass':>10} {'two-pass/batched':>17}")
    for name, dit in models.items():
        pipe.dit = dit
        for size in args.sizes:
            # cfg_max_sigma=1: guidance at every step, as the releases sample (the tiny models' default skips some)
            call = dict(prompt=PROMPT, negative_prompt=NEGATIVE, cfg_scale=args.cfg_scale, height=size, width=size,
                        num_inference_steps=args.steps, num_images=args.num_images, cfg_max_sigma=1.0,
                        progress_bar_cmd=lambda s: s)
            seconds = time_modes(pipe, call, args.repeats)
            batched, two_pass = (statistics.median(seconds[mode]) for mode in ("batched", "two_pass"))
            rows.append(dict(model=name, width=dit.dim, size=size, batched_s=batched, two_pass_s=two_pass,
                             ratio=two_pass / batched, seconds=seconds))
            print(f"{name:>5} {dit.dim:>6} {size:>5} {batched * 1e3:>8.1f}ms {two_pass * 1e3:>8.1f}ms "
                  f"{two_pass / batched:>16.2f}x")
    load_after = os.getloadavg()[0]
    print(f"Median seconds per image over {args.repeats} repeats, {args.steps} steps, {args.threads} torch threads; "
          f"1-minute load average {load_before:.2f} before, {load_after:.2f} after.")
    payload = dict(
        unit="seconds per image (median)", threads=args.threads, repeats=args.repeats, steps=args.steps,
        num_images=args.num_images, cfg_scale=args.cfg_scale, load_average_1min=dict(before=load_before,
        after=load_after), cpu_count=os.cpu_count(), torch=torch.__version__, rows=rows,
    )
    write_results(args.out / "cfg_batching.json", payload)
    return payload


if __name__ == "__main__":
    main()
