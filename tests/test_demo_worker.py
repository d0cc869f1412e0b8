"""Demo workers: the tiny pipeline turned into PNG files, the pool that lends them out, and output pruning."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from diffsynth_l2p.demo.request import GenerationRequest
from diffsynth_l2p.demo.worker import PipelineWorker, WorkerPool, png_parameters, prune_outputs
from diffsynth_l2p.generate import read_png_parameters


@pytest.fixture(scope="module")
def worker(tiny_model_set, tmp_path_factory):
    import torch

    output_dir = tmp_path_factory.mktemp("outputs")
    return PipelineWorker.load("cpu#0", tiny_model_set, "tiny", "cpu", torch.float32, output_dir)


def test_batch_images_each_reproduce_alone_with_their_seed(worker):
    batch = worker.generate(GenerationRequest("a red circle", steps=2, width=64, height=48, seed=9, num_images=2))
    assert [image.request.seed for image in batch] == [9, 10]
    for image in batch:
        (alone,) = worker.generate(image.request)
        assert read_png_parameters(image.path) == image.parameters == png_parameters(image.request, "tiny", 3.0)
        with Image.open(image.path) as first, Image.open(alone.path) as second:
            assert first.size == (64, 48)
            # A batched and a single CPU forward may round one value differently: at most one level apart.
            difference = np.abs(np.asarray(first, np.int16) - np.asarray(second, np.int16))
            assert difference.max() <= 1


def test_png_parameters_match_what_l2p_generate_writes():
    request = GenerationRequest("a red circle", "blurry", steps=12, cfg_scale=3.5, width=2048, height=1024, seed=7)
    assert png_parameters(request, "m", 3.375) == dict(
        prompt="a red circle", negative_prompt="blurry", cfg_scale=3.5, height=1024, width=2048, seed=7,
        num_inference_steps=12, sigma_shift=3.375, model="m",
    )  # fmt: skip


def test_progress_bar_command_sees_every_step(worker):
    seen = []

    def progress(timesteps):
        for timestep in timesteps:
            seen.append(float(timestep))
            yield timestep

    worker.generate(GenerationRequest("a red circle", steps=3, width=64, height=64), progress_bar_cmd=progress)
    assert len(seen) == 3 and seen == sorted(seen, reverse=True)


def test_the_pool_lends_each_worker_to_one_request_at_a_time_first_idle_first():
    pool = WorkerPool(["cpu#0", "cpu#1"])  # the pool only hands its workers around

    def take_one() -> str:
        with pool.take() as worker:
            return worker

    with ThreadPoolExecutor(1) as executor, pool.take() as first:
        with pool.take() as second:
            assert (first, second) == ("cpu#0", "cpu#1")
            waiting = executor.submit(take_one)
            time.sleep(0.2)
            assert not waiting.done(), "no worker is idle: the third request must wait"
        assert waiting.result(timeout=30) == "cpu#1"
    with pool.take() as worker:  # idle in the order they came back: cpu#1, then cpu#0
        assert worker == "cpu#1"


def test_a_worker_whose_request_failed_goes_back_to_the_pool():
    pool = WorkerPool(["cpu#0"])
    with pytest.raises(RuntimeError, match="device lost"), pool.take():
        raise RuntimeError("device lost")
    with pool.take() as worker:
        assert worker == "cpu#0"
    with pytest.raises(ValueError, match="at least one worker"):
        WorkerPool([])


def test_prune_removes_only_old_pngs(tmp_path):
    old, new, other = tmp_path / "old.png", tmp_path / "new.png", tmp_path / "notes.txt"
    for path in (old, new, other):
        path.write_bytes(b"x")
    an_hour_ago = time.time() - 7200
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(other, (an_hour_ago, an_hour_ago))
    assert prune_outputs(tmp_path, max_age_seconds=3600) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.png", "notes.txt"]
