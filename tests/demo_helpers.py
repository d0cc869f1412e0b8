"""Shared by the demo tests: loopback-only networking, free ports, model arguments, /generate calls, held workers."""

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

TIMEOUT = 120
LOOPBACK = ("127.0.0.1", "localhost", "::1")
PROMPT = "a red circle left of a blue square"


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Nothing leaves the machine: the Hub client is offline (no agent registry, no telemetry), other hosts fail."""
    import huggingface_hub.constants as hub

    resolve = socket.getaddrinfo

    def resolve_loopback(host, *args, **kwargs):
        if host not in LOOPBACK:
            raise OSError(f"the demo tests stay on loopback; refused to resolve {host!r}")
        return resolve(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub, "HF_HUB_OFFLINE", True)
        patch.setattr(hub, "HF_HUB_DISABLE_TELEMETRY", True)
        patch.setattr(socket, "getaddrinfo", resolve_loopback)
        yield


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def model_args(files: dict) -> list:
    """``--model`` with the explicit files of a model set (``tiny_model_set``)."""
    return ["--model", files["dit"], *files["text_encoder"], files["tokenizer"]]


def generate_args(seed=0, randomize=False, width=64, height=64, steps=2, cfg=2.0, num_images=1) -> list:
    """The /generate inputs: prompt, negative prompt, steps, cfg, width, height, seed, random seed, number of images."""
    return [PROMPT, "", steps, cfg, width, height, seed, randomize, num_images]


def submit_generate(client, seed: int, randomize: bool = False, width: int = 64, height: int = 64, steps: int = 2):
    """One /generate call through ``gradio_client``."""
    return client.submit(*generate_args(seed, randomize, width, height, steps), api_name="/generate")


def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def submit_in_order(client, seeds: Sequence[int]) -> list:
    """One /generate job per seed, each submitted once the server has taken the previous one (queued or running)."""
    from gradio_client.utils import Status

    jobs = []
    for seed in seeds:
        jobs.append(submit_generate(client, seed))
        wait_until(lambda: jobs[-1].status().code not in (Status.STARTING, Status.JOINING_QUEUE))
    return jobs


def call_raw(url: str, data: list) -> tuple[str, object]:
    """POST ``data`` to /generate as raw JSON (NaN and Infinity allowed), return the first event and its payload."""
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        body = json.dumps({"data": data})
        response = http.post("gradio_api/call/generate", content=body, headers={"content-type": "application/json"})
        response.raise_for_status()
        lines = http.get(f"gradio_api/call/generate/{response.json()['event_id']}").text.splitlines()
    event = next(line.removeprefix("event: ") for line in lines if line.startswith("event: "))
    payload = next(line.removeprefix("data: ") for line in lines if line.startswith("data: "))
    return event, json.loads(payload)


class HeldWorkers:
    """Holds every request at the start of sampling until `release`, recording ``(worker, seed)`` as each starts."""

    def __init__(self, workers: Sequence):
        self.started: list[tuple[str, int]] = []
        self._released = threading.Event()
        self._workers = {worker: worker.pipe for worker in workers}
        for worker, pipe in self._workers.items():
            worker.pipe = self._held(worker.name, pipe)

    def _held(self, name: str, pipe: Any) -> SimpleNamespace:
        """A stand-in for ``pipe`` whose ``generate_images`` (what a worker calls) waits for ``release``; the shift
        the worker records still comes from ``pipe``."""

        def generate_images(**kwargs):
            self.started.append((name, kwargs["seed"]))
            assert self._released.wait(TIMEOUT)
            return pipe.generate_images(**kwargs)

        return SimpleNamespace(generate_images=generate_images, sigma_shift_for=pipe.sigma_shift_for)

    def release(self) -> None:
        self._released.set()

    def restore(self) -> None:
        """Release the held requests and give the workers their own pipelines back."""
        self.release()
        for worker, pipe in self._workers.items():
            worker.pipe = pipe


@contextlib.contextmanager
def held_workers(workers: Sequence) -> Iterator[HeldWorkers]:
    held = HeldWorkers(workers)
    try:
        yield held
    finally:
        held.restore()


def pixels(result) -> np.ndarray:
    """The first gallery image of a /generate result."""
    with Image.open(result[0][0]["image"]) as image:
        return np.asarray(image.convert("RGB"))
