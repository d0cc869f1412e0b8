"""Demo workers: a pipeline on one device that turns a `GenerationRequest` into PNG files, and the pool of idle ones."""

import contextlib
import logging
import queue
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..generate import save_png
from ..pipelines.loading import ModelFiles, load_pipeline
from .request import GenerationRequest

logger = logging.getLogger(__name__)

# Results stay downloadable this long; Gradio keeps its own copies in its cache (cleaned by `delete_cache`).
OUTPUT_TTL_SECONDS = 3600.0


@dataclass(frozen=True)
class GeneratedImage:
    path: Path
    request: GenerationRequest  # the single-image request that reproduces it
    parameters: dict  # as stored in the PNG: the pipeline call that reproduces it, and the model
    worker: str
    seconds: float


def png_parameters(request: GenerationRequest, model: str, sigma_shift: float) -> dict:
    """The PNG metadata of one image, in the layout `l2p generate` writes (pipeline arguments + model)."""
    kwargs = request.pipeline_kwargs()
    del kwargs["num_images"]
    return {**kwargs, "sigma_shift": sigma_shift, "model": model}


def prune_outputs(directory: Path, max_age_seconds: float = OUTPUT_TTL_SECONDS) -> int:
    """Delete PNGs older than ``max_age_seconds`` from ``directory`` so a long-running demo does not fill the disk."""
    cutoff = time.time() - max_age_seconds
    removed = 0
    for path in Path(directory).glob("*.png"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # pruned concurrently by another worker
            pass
    return removed


class PipelineWorker:
    """Owns one pipeline; `WorkerPool` lends it to one request at a time."""

    def __init__(self, name: str, pipe, model_label: str, output_dir: Path):
        self.name = name
        self.pipe = pipe
        self.model_label = model_label
        self.output_dir = Path(output_dir)

    @classmethod
    def load(
        cls, name: str, files: ModelFiles, model_label: str, device: str, torch_dtype: torch.dtype, output_dir: Path
    ) -> "PipelineWorker":
        """Load the pipeline of the model set ``files`` (see `resolve_model_files`) on ``device``."""
        start = time.perf_counter()
        pipe = load_pipeline(files, device=device, torch_dtype=torch_dtype)
        logger.info(
            "worker %s: loaded %s on %s (%s) in %.1f s",
            name,
            model_label,
            device,
            str(torch_dtype).removeprefix("torch."),
            time.perf_counter() - start,
        )
        return cls(name, pipe, model_label, output_dir)

    def generate(self, request: GenerationRequest, progress_bar_cmd: Callable = tqdm) -> list[GeneratedImage]:
        """Run the pipeline for ``request`` and save one PNG per image, its parameters in the metadata."""
        logger.info(
            "worker %s: seed %d, %d steps, %dx%d", self.name, request.seed, request.steps, request.width, request.height
        )
        start = time.perf_counter()
        images = self.pipe.generate_images(
            **request.pipeline_kwargs(), rand_device="cpu", progress_bar_cmd=progress_bar_cmd
        )
        seconds = time.perf_counter() - start
        prune_outputs(self.output_dir)
        results = []
        for index, image in enumerate(images):
            single = request.for_image(index)
            shift = self.pipe.sigma_shift_for(single.height, single.width)  # the model's default, used by the call
            parameters = png_parameters(single, self.model_label, shift)
            path = self.output_dir / f"l2p-{single.seed}-{uuid.uuid4().hex[:12]}.png"
            save_png(image, path, parameters)
            results.append(GeneratedImage(path, single, parameters, self.name, seconds))
        return results


class WorkerPool:
    """The idle workers, first idle first lent: Gradio's queue admits at most ``len(workers)`` requests at a time."""

    def __init__(self, workers: Sequence[PipelineWorker]):
        if not workers:
            raise ValueError("The demo needs at least one worker.")
        self.workers = list(workers)
        self._idle: queue.Queue[PipelineWorker] = queue.Queue()
        for worker in self.workers:
            self._idle.put(worker)

    @contextlib.contextmanager
    def take(self) -> Iterator[PipelineWorker]:
        """Lend an idle worker for one request (waiting if none is idle) and take it back afterwards, failed or not."""
        worker = self._idle.get()
        try:
            yield worker
        finally:
            self._idle.put(worker)
