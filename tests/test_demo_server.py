"""The demo server live on loopback: the tiny model on 2 CPU workers behind Gradio's queue, called as a client would."""

import collections
import logging
import math
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from diffsynth_l2p.demo.request import MAX_SEED, Limits, validate_request
from diffsynth_l2p.demo.server import DemoServer, build_parser
from diffsynth_l2p.generate import read_png_parameters
from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.models.z_image_l2p_dit import ZImageL2PDiT
from diffsynth_l2p.registry import register_l2p_dit
from diffsynth_l2p.tiny import init_weights
from tests.demo_helpers import (
    TIMEOUT,
    call_raw,
    free_port,
    generate_args,
    held_workers,
    loopback_only,
    model_args,
    pixels,
    submit_generate,
    submit_in_order,
    wait_until,
)

gradio_client = pytest.importorskip("gradio_client")
AppError = gradio_client.exceptions.AppError
QueueError = gradio_client.utils.QueueError


@pytest.fixture(scope="module", autouse=True)
def _loopback():
    with loopback_only():
        yield


def start_server(tiny_model_set, *options: str) -> DemoServer:
    args = [*model_args(tiny_model_set), "--devices", "cpu", "--port", str(free_port()), *options]
    server = DemoServer(build_parser().parse_args(args))
    server.start()
    return server


@pytest.fixture(scope="module")
def live_server(tiny_model_set):
    server = start_server(tiny_model_set, "--workers-per-device", "2")
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(live_server):
    return gradio_client.Client(live_server.url, verbose=False)


def test_16_concurrent_requests_are_all_served_in_arrival_order_on_both_workers(live_server, client):
    seeds = list(range(100, 116))
    with held_workers(live_server.pool.workers) as held:
        jobs = submit_in_order(client, seeds)
        wait_until(lambda: len(held.started) == 2)
        statuses = collections.Counter(job.status().code.name for job in jobs)
        assert statuses["IN_QUEUE"] == 14, statuses  # one request per worker runs, the others wait
        assert {worker for worker, _ in held.started} == {"cpu#0", "cpu#1"}
        held.release()
        records = [job.result(timeout=TIMEOUT)[1][0] for job in jobs]
    assert [record["seed"] for record in records] == seeds
    assert {record["worker"] for record in records} == {"cpu#0", "cpu#1"}
    assert sorted(held.started) == sorted((record["worker"], record["seed"]) for record in records)
    # First in, first out: a request starts after every earlier one, up to the race of two workers starting at once.
    started = [seed for _, seed in held.started]
    assert all(abs(started.index(seed) - arrival) <= 1 for arrival, seed in enumerate(seeds)), started


def test_random_seeds_differ_are_shown_and_reproduce(client):
    first = [job.result(timeout=TIMEOUT) for job in [submit_generate(client, seed=0, randomize=True) for _ in range(3)]]
    seeds = [result[1][0]["seed"] for result in first]
    assert len(set(seeds)) == 3 and all(0 <= seed <= MAX_SEED for seed in seeds)
    assert [result[3] for result in first] == seeds, "the seed box shows the seed used"
    for original, seed in zip(first, seeds, strict=True):
        repeat = submit_generate(client, seed=seed).result(timeout=TIMEOUT)
        np.testing.assert_array_equal(pixels(repeat), pixels(original))
    assert pixels(first[0]).shape == (64, 64, 3) and not np.array_equal(pixels(first[0]), pixels(first[1]))


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
        (64, 64, 0, "steps 0 is out of range: it must be between 1 and 100"),
        (64, 64, 2.5, "steps must be a whole number, got 2.5"),
    ],
)
def test_client_gets_a_clear_error_for_out_of_range_values(client, width, height, steps, message):
    with pytest.raises(AppError, match=f"Invalid request: {message}"):
        submit_generate(client, seed=1, width=width, height=height, steps=steps).result(timeout=TIMEOUT)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 10**9}, "steps 1000000000 is out of range: it must be between 1 and 100."),
        ({"steps": 1e308}, "steps 1e+308 is out of range"),
        ({"cfg": 10**400}, f"CFG scale {10**400} is out of range"),
        ({"width": 10**6}, "width 1000000 is out of range"),
        ({"height": 2**63}, f"height {2**63} is out of range"),
        ({"num_images": 10**6}, "number of images 1000000 is out of range: it must be between 1 and 4."),
        ({"cfg": math.nan}, "CFG scale nan is out of range: it must be between 0.1 and 10.0."),
        ({"cfg": math.inf}, "CFG scale inf is out of range"),
        ({"cfg": -math.inf}, "CFG scale -inf is out of range"),
        ({"steps": math.inf}, "steps must be a whole number, got inf."),
        ({"seed": -1}, f"seed -1 is out of range: it must be between 0 and {MAX_SEED}."),
        ({"seed": 2**64}, f"seed {2**64} is out of range"),
        ({"seed": 10**40}, f"seed {10**40} is out of range"),
        ({"seed": "12abc"}, "seed must be a whole number, got '12abc'."),
        ({"seed": None}, "seed must be a whole number, got None."),
        ({"steps": None}, "steps must be a whole number, got None."),
        ({"cfg": None}, "CFG scale must be a number, got None."),
    ],
)
def test_absurd_api_values_get_a_clear_validation_error(live_server, changes, message):
    event, payload = call_raw(live_server.url, generate_args(**changes))
    assert event == "error" and payload["error"].startswith(f"Invalid request: {message}"), payload


def test_missing_fields_get_an_error_and_the_server_serves_on(live_server, client):
    event, payload = call_raw(live_server.url, generate_args()[:3])
    assert event == "error"
    assert payload["error"].startswith(
        "An event handler (generate) didn't receive enough input values (needed: 9, got: 3)"
    )
    with pytest.raises(TypeError, match="No value provided for required argument: negative_prompt"):
        client.predict(generate_args()[0], api_name="/generate")  # refused by gradio_client before sending
    event, payload = call_raw(live_server.url, [None] * 9)
    assert (event, payload["error"]) == ("error", "Invalid request: The prompt must be text, got NoneType.")
    assert submit_generate(client, seed=7).result(timeout=TIMEOUT)[1][0]["seed"] == 7


def test_a_failing_device_fails_its_own_requests_and_the_server_serves_on(live_server, client, monkeypatch):
    def device_lost(**kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(live_server.pool.workers[1], "pipe", SimpleNamespace(generate_images=device_lost))
    outcomes = collections.Counter()
    for seed in range(4):  # one at a time: the pool lends the first idle worker, so the two alternate
        try:
            outcomes[submit_generate(client, seed=seed).result(timeout=TIMEOUT)[1][0]["worker"]] += 1
        except AppError as error:
            outcomes[str(error)] += 1
    assert outcomes == {
        "cpu#0": 2,
        "Generation failed on worker cpu#1: CUDA error: an illegal memory access was encountered": 2,
    }


def test_a_full_queue_answers_busy_and_close_releases_the_port(tiny_model_set):
    server = start_server(tiny_model_set, "--max-queue", "1")
    port = server.args.port
    try:
        client = gradio_client.Client(server.url, verbose=False)
        with held_workers(server.pool.workers) as held:
            running, waiting = submit_in_order(client, [1, 2])
            with pytest.raises(QueueError, match="Queue is full! Please try again."):
                submit_generate(client, seed=3).result(timeout=TIMEOUT)
            held.release()
            assert [job.result(timeout=TIMEOUT)[1][0]["seed"] for job in (running, waiting)] == [1, 2]
        assert submit_generate(client, seed=4).result(timeout=TIMEOUT)[1][0]["seed"] == 4
        assert server.output_dir.is_dir()
    finally:
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
    server = DemoServer(build_parser().parse_args([*model_args(files), "--devices", "cpu", "--port", str(free_port())]))
    try:
        step = dit.size_multiple
        assert step == 320
        # smallest multiple >= 256 is one step, largest <= 1024 is three; the unknown checkpoint's native 1024 clamps
        assert server.settings.limits == Limits(min_size=step, max_size=3 * step, size_step=step)
        assert server.settings.default_size == 3 * step
        request = validate_request(server.settings.limits, "a red circle", "", 1, 2.0, step, 2 * step, 0, 1)
        with server.pool.take() as worker:
            (image,) = worker.generate(request)
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
