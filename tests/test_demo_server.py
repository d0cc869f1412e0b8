"""The demo server live on loopback: the tiny model on 2 CPU workers, called through ``gradio_client``."""

import logging
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffsynth_l2p.demo.request import Limits, validate_request
from diffsynth_l2p.demo.server import DemoServer, build_parser
from diffsynth_l2p.generate import read_png_parameters
from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.models.z_image_l2p_dit import ZImageL2PDiT
from diffsynth_l2p.registry import register_l2p_dit
from diffsynth_l2p.tiny import init_weights
from tests.demo_helpers import TIMEOUT, free_port, loopback_only, model_args, pixels, submit_generate

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module", autouse=True)
def _loopback():
    with loopback_only():
        yield


@pytest.fixture(scope="module")
def live_server(tiny_model_set):
    args = build_parser().parse_args(
        [*model_args(tiny_model_set), "--devices", "cpu", "--workers-per-device", "2", "--port", str(free_port())]
    )
    server = DemoServer(args)
    url = server.start()
    yield server, url
    server.close()


@pytest.fixture(scope="module")
def client(live_server):
    return gradio_client.Client(live_server[1], verbose=False)


def test_serves_concurrent_requests_on_both_workers_reproducibly(live_server, client, caplog):
    server, _ = live_server
    with caplog.at_level(logging.INFO, logger="diffsynth_l2p.demo.dispatcher"):
        jobs = [submit_generate(client, seed=0, randomize=True) for _ in range(16)]
        first = [job.result(timeout=TIMEOUT) for job in jobs]
    records = [result[1][0] for result in first]
    assert len({record["seed"] for record in records}) == 16, "random seeds should differ"
    assert [result[3] for result in first] == [record["seed"] for record in records], "the seed box shows the seed"
    started = {line.split(" on ")[-1] for line in caplog.messages if ": started on " in line}
    assert started == {"cpu#0", "cpu#1"}, caplog.messages
    assert {record["worker"] for record in records} == {"cpu#0", "cpu#1"}
    assert [w.completed for w in server.dispatcher.status().workers] == [
        sum(record["worker"] == name for record in records) for name in ("cpu#0", "cpu#1")
    ]

    again = [submit_generate(client, seed=record["seed"]) for record in records]
    for original, job in zip(first, again, strict=True):
        repeat = job.result(timeout=TIMEOUT)
        assert repeat[1][0]["seed"] == original[1][0]["seed"]
        np.testing.assert_array_equal(pixels(repeat), pixels(original))
    images = [pixels(result) for result in first[:2]]
    assert images[0].shape == (64, 64, 3) and not np.array_equal(images[0], images[1])


def test_png_download_carries_the_parameters(client, tiny_model_set):
    result = submit_generate(client, seed=123).result(timeout=TIMEOUT)
    (png,) = result[2]
    stored = read_png_parameters(png)
    shown = {key: value for key, value in result[1][0].items() if key not in ("worker", "seconds")}
    assert stored == shown
    assert (stored["seed"], stored["num_inference_steps"], stored["width"], stored["height"]) == (123, 2, 64, 64)
    assert stored["model"] == Path(tiny_model_set["dit"]).name
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (64, 64)


@pytest.mark.parametrize(
    "width, height, steps, message",
    [
        (2048, 64, 2, "width 2048 is out of range: it must be between 64 and 1024 in steps of 16"),
        (64, 72, 2, "height 72 is out of range: it must be between 64 and 1024 in steps of 16"),
        (64, 48, 2, "height 48 is out of range"),
        (64, 64, 0, "steps 0 is out of range: it must be between 1 and 100"),
        (64, 64, 101, "steps 101 is out of range"),
        (64, 64, 2.5, "steps must be a whole number, got 2.5"),
    ],
)
def test_api_rejects_out_of_range_requests_with_clear_error(client, width, height, steps, message):
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        submit_generate(client, seed=1, width=width, height=height, steps=steps).result(timeout=TIMEOUT)


def test_request_errors_are_not_held_against_workers(live_server):
    assert torch.OutOfMemoryError in live_server[0].dispatcher.request_errors
    assert ValueError in live_server[0].dispatcher.request_errors


def test_status_line_lists_the_workers(live_server):
    from diffsynth_l2p.demo.ui import status_text

    text = status_text(live_server[0].dispatcher.status())
    assert text == "Workers 0/2 busy: `cpu#0` idle · `cpu#1` idle — queue 0/16"


def test_full_queue_answers_busy_and_close_releases_the_port(tiny_model_set):
    port = free_port()
    args = [*model_args(tiny_model_set), "--devices", "cpu", "--max-queue", "0", "--port", str(port)]
    server = DemoServer(build_parser().parse_args(args))
    release = threading.Event()
    try:
        client = gradio_client.Client(server.start(), verbose=False)
        holder = threading.Thread(target=server.dispatcher.run, args=(lambda worker: release.wait(TIMEOUT),))
        holder.start()  # occupies the only worker
        with pytest.raises(gradio_client.exceptions.AppError, match=r"busy.*queue is full.*try again"):
            submit_generate(client, seed=1).result(timeout=TIMEOUT)
        release.set()
        holder.join(TIMEOUT)
        assert submit_generate(client, seed=1).result(timeout=TIMEOUT)[1][0]["seed"] == 1
        assert server.output_dir.is_dir()
    finally:
        release.set()
        server.close()
    assert not server.output_dir.exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_default_sizes_fit_a_model_whose_size_step_is_320(tiny_model_set, tmp_path):
    """A 10K-shaped head (patch 160, 6 stages): sizes are multiples of 320, which 256 and 1024 are not."""
    kwargs = {**L2P_CONFIGS["tiny"].kwargs, "all_patch_size": (160,), "head_channels": (4, 8, 8, 16, 16, 32)}
    dit = ZImageL2PDiT(**kwargs)
    init_weights(dit, seed=0)
    register_l2p_dit(**kwargs)
    save_file({key: value.contiguous() for key, value in dit.state_dict().items()}, tmp_path / "dit.safetensors")
    files = {**tiny_model_set, "dit": str(tmp_path / "dit.safetensors")}
    server = DemoServer(build_parser().parse_args([*model_args(files), "--devices", "cpu"]))
    try:
        step = dit.size_multiple
        assert step == 320
        # smallest multiple >= 256 is one step, largest <= 1024 is three; the unknown checkpoint's native 1024 clamps
        assert server.settings.limits == Limits(min_size=step, max_size=3 * step, size_step=step)
        assert server.settings.default_size == 3 * step
        request = validate_request(server.settings.limits, "a red circle", "", 1, 2.0, step, 2 * step, 0, 1)
        (image,) = server.dispatcher.run(lambda worker: worker.generate(request))
        with Image.open(image.path) as png:
            assert png.size == (step, 2 * step)
    finally:
        server.close()


def test_explicit_sizes_off_the_grid_fail_before_the_other_workers_load(tiny_model_set, caplog):
    args = [*model_args(tiny_model_set), "--devices", "cpu", "--workers-per-device", "2", "--max-size", "1000"]
    with caplog.at_level(logging.INFO, logger="diffsynth_l2p.demo.worker"):
        with pytest.raises(ValueError, match="must be multiples of the model's size step 16"):
            DemoServer(build_parser().parse_args(args))
    assert [message.split(":")[0] for message in caplog.messages] == ["worker cpu#0"]
