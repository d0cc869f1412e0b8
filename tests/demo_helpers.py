"""Shared by the demo tests: loopback-only networking, free ports, model arguments and ``/generate`` calls."""

import contextlib
import socket
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

TIMEOUT = 120
LOOPBACK = ("127.0.0.1", "localhost", "::1")


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


def submit_generate(client, seed: int, randomize: bool = False, width: int = 64, height: int = 64, steps: int = 2):
    """One /generate call: prompt, negative, steps, cfg, width, height, seed, random seed, number of images."""
    return client.submit(
        "a red circle left of a blue square", "", steps, 2.0, width, height, seed, randomize, 1, api_name="/generate"
    )


def pixels(result) -> np.ndarray:
    """The first gallery image of a /generate result."""
    with Image.open(result[0][0]["image"]) as image:
        return np.asarray(image.convert("RGB"))
