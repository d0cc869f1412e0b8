"""A demo worker: the tiny pipeline turned into PNG files, one request at a time, and output pruning."""

import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from diffsynth_l2p.demo.request import GenerationRequest
from diffsynth_l2p.demo.worker import PipelineWorker, png_parameters, prune_outputs
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
        assert read_png_parameters(image.path) == image.parameters == png_parameters(image.request, "tiny")
        with Image.open(image.path) as first, Image.open(alone.path) as second:
            assert first.size == (64, 48)
            np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_png_parameters_match_what_l2p_generate_writes():
    request = GenerationRequest("a red circle", "blurry", steps=12, cfg_scale=3.5, width=2048, height=1024, seed=7)
    assert png_parameters(request, "m") == dict(
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


def test_a_second_request_on_a_busy_worker_is_refused(worker):
    entered, release = threading.Event(), threading.Event()

    def slow_progress(timesteps):
        entered.set()
        assert release.wait(30)
        yield from timesteps

    request = GenerationRequest("a red circle", steps=1, width=64, height=64)
    thread = threading.Thread(target=worker.generate, args=(request, slow_progress))
    thread.start()
    try:
        assert entered.wait(30)
        with pytest.raises(RuntimeError, match="already generating"):
            worker.generate(request)
    finally:
        release.set()
        thread.join(30)


def test_prune_removes_only_old_pngs(tmp_path):
    old, new, other = tmp_path / "old.png", tmp_path / "new.png", tmp_path / "notes.txt"
    for path in (old, new, other):
        path.write_bytes(b"x")
    an_hour_ago = time.time() - 7200
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(other, (an_hour_ago, an_hour_ago))
    assert prune_outputs(tmp_path, max_age_seconds=3600) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.png", "notes.txt"]
