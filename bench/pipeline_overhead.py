"""Overhead of ``ZImageL2PPipeline.__call__`` over the DiT forwards it runs, and the cost of its prompt encoding.

For each (model, size) row one call (N steps, CFG on) is timed with the DiT's ``forward`` and the prompt unit's
``process`` wrapped in timers; the forwards' inputs are recorded and replayed afterwards as a bare loop of the
same forwards. Overhead = (call - prompt encoding - forwards) / forwards, per call and then the median over calls,
against both the forwards timed inside the call and the bare loop (goal: at most 2 %). Prompt encoding (positive +
negative) is reported per call. Models: the shipped tiny model (``tiny``) and, unless --wide-scale is 0, the same
pipeline with a randomly initialised DiT --wide-scale times wider (``wide``, as in cfg_batching.py). Medians over
--repeats after a warm-up call; the 1-minute load average is read before and after. Writes <out> (JSON, atomically).
Run: .venv/bin/python bench/pipeline_overhead.py [--threads 2] [--repeats 5] [--sizes 64 256] [--steps 10]
"""

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
from bench_io import write_results
from cfg_batching import NEGATIVE, PROMPT, tiny_pipeline_and_dits
from diffsynth.pipelines.z_image import ZImageUnit_PromptEmbedder

from diffsynth_l2p.pipelines.z_image_l2p import ZImageL2PPipeline

OUT = Path(__file__).resolve().parent / "results" / "pipeline_overhead.json"


class Timed:
    """A callable that runs ``fn`` and records each call's seconds (and, if ``keep_inputs``, its arguments)."""

    def __init__(self, fn: Callable[..., Any], keep_inputs: bool = False) -> None:
        self.fn, self.keep_inputs = fn, keep_inputs
        self.seconds: List[float] = []
        self.inputs: List[Tuple[tuple, dict]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = self.fn(*args, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        if self.keep_inputs:
            self.inputs.append((args, kwargs))
        return result


@contextlib.contextmanager
def timed_attribute(owner: object, name: str, keep_inputs: bool = False) -> Iterator[Timed]:
    """Replace ``owner.name`` by a ``Timed`` wrapper of it for the duration of the block."""
    had_own = name in vars(owner)
    timer = Timed(getattr(owner, name), keep_inputs)
    setattr(owner, name, timer)
    try:
        yield timer
    finally:
        if had_own:
            setattr(owner, name, timer.fn)
        else:
            delattr(owner, name)


def prompt_unit(pipe: ZImageL2PPipeline) -> ZImageUnit_PromptEmbedder:
    return next(unit for unit in pipe.units if isinstance(unit, ZImageUnit_PromptEmbedder))


def measure_call(pipe: ZImageL2PPipeline, call: Dict[str, Any]) -> Dict[str, Any]:
    """One timed ``pipe(**call)``: total, prompt-encoding and DiT-forward seconds, then a bare replay of those."""
    with timed_attribute(pipe.dit, "forward", keep_inputs=True) as forwards, \
            timed_attribute(prompt_unit(pipe), "process") as encoding:
        start = time.perf_counter()
        pipe(**call)
        total = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for args, kwargs in forwards.inputs:
            pipe.dit(*args, **kwargs)
    bare = time.perf_counter() - start
    return dict(total=total, encoding=sum(encoding.seconds), encoder_calls=len(encoding.seconds),
                forwards=sum(forwards.seconds), forward_calls=len(forwards.seconds), bare=bare)


def overhead_row(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians over the repeats of each time and of each call's overhead fractions."""
    median = {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}
    overhead = [(sample["total"] - sample["encoding"]) / sample["forwards"] - 1 for sample in samples]
    overhead_vs_bare = [(sample["total"] - sample["encoding"]) / sample["bare"] - 1 for sample in samples]
    return dict(median, overhead=statistics.median(overhead), overhead_vs_bare=statistics.median(overhead_vs_bare))


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Time every (model, size) row, print the table and the load average, write the JSON; return its payload."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (default %(default)s)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], help="image sides, multiples of 16")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per call (default %(default)s)")
    parser.add_argument("--cfg-scale", type=float, default=4.0, help="CFG scale (default %(default)s)")
    parser.add_argument("--two-pass", action="store_true", help="CFG as two forwards per step (batch_cfg=False)")
    parser.add_argument("--wide-scale", type=int, default=4, help="width factor of the wide DiT; 0 skips it")
    parser.add_argument("--out", type=Path, default=OUT, help="output JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    pipe, models = tiny_pipeline_and_dits(args.wide_scale)
    rows = []
    print(f"{'model':>5} {'width':>6} {'size':>5} {'call':>10} {'prompts':>9} {'forwards':>10} {'bare loop':>10} "
          f"{'overhead':>9} {'vs bare':>8}")
    for name, dit in models.items():
        pipe.dit = dit
        for size in args.sizes:
            # cfg_max_sigma=1: guidance at every step, as the releases sample (the tiny models' default skips some)
            call = dict(prompt=PROMPT, negative_prompt=NEGATIVE, cfg_scale=args.cfg_scale, height=size, width=size,
                        num_inference_steps=args.steps, batch_cfg=not args.two_pass, cfg_max_sigma=1.0,
                        progress_bar_cmd=lambda s: s)
            samples = [measure_call(pipe, call) for _ in range(args.repeats + 1)][1:]  # the first is the warm-up
            row = dict(model=name, width=dit.dim, size=size, **overhead_row(samples), samples=samples)
            rows.append(row)
            print(f"{name:>5} {dit.dim:>6} {size:>5} {row['total'] * 1e3:>8.1f}ms {row['encoding'] * 1e3:>7.1f}ms "
                  f"{row['forwards'] * 1e3:>8.1f}ms {row['bare'] * 1e3:>8.1f}ms {row['overhead']:>8.1%} "
                  f"{row['overhead_vs_bare']:>7.1%}")
    load_after = os.getloadavg()[0]
    passes = 2 if args.two_pass and args.cfg_scale != 1 else 1
    print(f"Median of {args.repeats} calls after a warm-up; {args.steps} steps x {passes} DiT forward(s); "
          f"{args.threads} torch threads; 1-minute load average {load_before:.2f} before, {load_after:.2f} after. "
          "overhead = (call - prompts - forwards) / forwards; goal <= 2 %.")
    payload = dict(threads=args.threads, repeats=args.repeats, steps=args.steps, cfg_scale=args.cfg_scale,
                   batch_cfg=not args.two_pass, load_average_1min=dict(before=load_before, after=load_after),
                   cpu_count=os.cpu_count(), torch=torch.__version__, rows=rows)
    write_results(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
