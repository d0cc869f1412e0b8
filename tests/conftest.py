"""Shared fixtures: the tiny L2P model set, built once per test session."""

import os

import pytest
import torch

# No test may download weights: DiffSynth's ModelConfig then only looks at local files.
os.environ.setdefault("DIFFSYNTH_SKIP_DOWNLOAD", "True")
# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two threads per test
# process oversubscribe the cores (measured: a tiny DiT forward goes from ~10 ms to ~300 ms).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_set(tmp_path_factory) -> dict:
    """``build_tiny_l2p``'s dict ``{"dit": file, "text_encoder": [file], "tokenizer": dir}`` for a seed-0 set."""
    from diffsynth_l2p.tiny import build_tiny_l2p

    return build_tiny_l2p(tmp_path_factory.mktemp("tiny-l2p"), seed=0)
