"""bench/pipeline_overhead.py: the timers see every DiT forward and prompt encoding of a call, and are removed after."""

import importlib.util
import sys
from pathlib import Path

import pytest

from diffsynth_l2p.pipelines.loading import load_pipeline

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the script imports its prompts and wide DiT from cfg_batching.py
spec = importlib.util.spec_from_file_location("bench_pipeline_overhead", BENCH / "pipeline_overhead.py")
overhead = importlib.util.module_from_spec(spec)
spec.loader.exec_module(overhead)


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


@pytest.mark.parametrize("batch_cfg, passes", [(True, 1), (False, 2)])
def test_forward_count_is_steps_times_passes_and_prompts_are_encoded_twice(pipe, batch_cfg, passes):
    steps = 3
    call = dict(prompt=overhead.PROMPT, negative_prompt=overhead.NEGATIVE, cfg_scale=4.0, height=32, width=32,
                num_inference_steps=steps, batch_cfg=batch_cfg, cfg_max_sigma=1.0, progress_bar_cmd=lambda s: s)
    sample = overhead.measure_call(pipe, call)
    assert sample["forward_calls"] == steps * passes
    assert sample["encoder_calls"] == 2  # positive + negative
    assert sample["total"] > sample["forwards"] + sample["encoding"] > 0 and sample["bare"] > 0
    assert "forward" not in vars(pipe.dit)  # the timer is gone: the class's forward is back


def test_overhead_row_takes_medians():
    samples = [dict(total=t, encoding=1.0, forwards=9.0, bare=9.0) for t in (10.1, 10.09, 20.0)]
    row = overhead.overhead_row(samples)
    assert row["total"] == 10.1
    assert row["overhead"] == pytest.approx(0.1 / 9.0)
