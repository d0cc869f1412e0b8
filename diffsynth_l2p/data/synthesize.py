"""Synthetic corpus builder: a prompt list -> images from the source latent model -> ``metadata.csv``.

L2P trains only on images its source latent model generates itself. Row ``i`` of the prompt list becomes
``images/{i:06d}.png`` with seed ``base_seed + i``, so any image can be regenerated bit-identically.

Crash safety: an image is written to a temporary file, fsynced and renamed into place; only then is its row
appended (flushed and fsynced) to the worker's shard ``shards/rank-{r}.csv``. A kill loses at most the image in
flight, a torn last line is dropped on the next start, and rerunning the same command skips finished rows.
Parallel runs go through accelerate: ``run_job`` is one worker, alone or one of those ``accelerate launch`` (or
``torchrun``) started; worker ``r`` of ``w`` takes the rows ``i % w == r`` and at the end the main worker's
``merge_shards`` unions the shards into ``metadata.csv``. ``launch_job`` runs one worker in-process or starts several
with ``accelerate launch``.
"""

import contextlib
import csv
import ctypes
import functools
import glob
import importlib
import inspect
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from tqdm import tqdm

from ..atomic import atomic_open
from ..validation import (
    DEFAULT_MAX_PIXELS,
    check_float,
    check_image_size,
    check_int,
    check_output_dir,
    check_seed,
    same_file,
)
from .prompts import Record, read_prompts, record_category

DEFAULT_PIPELINE_CLASS = "diffsynth.pipelines.z_image.ZImagePipeline"
Z_IMAGE_TURBO_ID = "Tongyi-MAI/Z-Image-Turbo"
# Z-Image-Turbo's repository layout: sub-folder -> weight files (DiffSynth's own example configs).
Z_IMAGE_TURBO_FILES = {
    "transformer": "transformer/*.safetensors",
    "text_encoder": "text_encoder/*.safetensors",
    "vae": "vae/diffusion_pytorch_model.safetensors",
}
METADATA_FILE = "metadata.csv"
SETTINGS_FILE = "synthesis.json"
IMAGES_DIR = "images"
SHARDS_DIR = "shards"
COLUMNS = ("image", "prompt", "seed")
CATEGORY_COLUMN = "category"
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_IMAGE_NAME = re.compile(r"^images/(\d{6,})\.png$")
WORKER_TIMEOUT = timedelta(days=7)  # how long a finished worker waits for the others


# --- rows ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One planned image: its index in the prompt list, file name, prompt, seed and optional category."""

    index: int
    prompt: str
    seed: int
    category: str = ""

    @property
    def image(self) -> str:
        return image_name(self.index)


def image_name(index: int) -> str:
    """Relative path of row ``index``'s image, as written in ``metadata.csv``."""
    return f"{IMAGES_DIR}/{index:06d}.png"


def plan_rows(records: Sequence[Record], base_seed: int) -> List[Row]:
    """One row per record: whitespace-collapsed prompt, seed ``base_seed + index``, category if any."""
    return [
        Row(index, " ".join(str(record["prompt"]).split()), base_seed + index, record_category(record) or "")
        for index, record in enumerate(records)
    ]


def rows_of_rank(rows: Sequence[Row], rank: int, world_size: int) -> List[Row]:
    """The disjoint share of worker ``rank`` out of ``world_size``: rows with ``index % world_size == rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return [row for row in rows if row.index % world_size == rank]


def read_finished_rows(path: str) -> List[Row]:
    """Rows already written to a synthesis metadata or shard CSV (for resuming); a torn or damaged row is skipped."""
    with open(path, encoding="utf-8", errors="replace", newline="") as file:
        text = file.read()
    lines = text.split("\n")[:-1]  # the part after the last newline is torn (or empty)
    if not lines:
        return []
    header = next(csv.reader([lines[0]]))
    rows = []
    for line in lines[1:]:
        try:
            values = dict(zip(header, next(csv.reader([line])), strict=True))
            match = _IMAGE_NAME.match(values["image"])
            if match:
                rows.append(Row(int(match.group(1)), values["prompt"], int(values["seed"]), values.get("category", "")))
        except (ValueError, KeyError, StopIteration, csv.Error):
            continue
    return rows


def _csv_line(values: Iterable[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def metadata_columns(with_category: bool) -> Tuple[str, ...]:
    """``image,prompt,seed``, plus ``category`` when the prompts have categories."""
    return COLUMNS + (CATEGORY_COLUMN,) if with_category else COLUMNS


def _row_line(row: Row, columns: Sequence[str]) -> str:
    values = {"image": row.image, "prompt": row.prompt, "seed": row.seed, CATEGORY_COLUMN: row.category}
    return _csv_line(values[column] for column in columns)


class ShardWriter:
    """Append-only CSV of finished rows, each flushed and fsynced; on open a torn last line is cut and an
    existing header is kept."""

    def __init__(self, path: str, columns: Sequence[str]) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.file = open(path, "a+b")
        self.file.seek(0)
        data = self.file.read()
        if not data.endswith(b"\n"):
            self.file.truncate(data.rfind(b"\n") + 1)  # a row torn by a crash (or nothing)
        self.file.seek(0, os.SEEK_END)
        if self.file.tell() == 0:
            self.columns = tuple(columns)
            self._write(_csv_line(self.columns))
        else:
            self.columns = tuple(next(csv.reader([data.split(b"\n", 1)[0].decode("utf-8")])))

    def _write(self, text: str) -> None:
        self.file.write(text.encode("utf-8"))
        self.file.flush()
        os.fsync(self.file.fileno())

    def append(self, row: Row) -> None:
        self._write(_row_line(row, self.columns))

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def shard_path(output_dir: str, rank: int) -> str:
    return os.path.join(output_dir, SHARDS_DIR, f"rank-{rank}.csv")


def _metadata_files(output_dir: str) -> List[str]:
    files = sorted(glob.glob(os.path.join(output_dir, SHARDS_DIR, "*.csv")))
    merged = os.path.join(output_dir, METADATA_FILE)
    return ([merged] if os.path.isfile(merged) else []) + files


def finished_rows(output_dir: str) -> Dict[int, Row]:
    """Rows recorded in ``metadata.csv`` or any shard whose image file exists, by index (conflicts raise)."""
    finished: Dict[int, Row] = {}
    for path in _metadata_files(output_dir):
        for row in read_finished_rows(path):
            if not os.path.isfile(os.path.join(output_dir, row.image)):
                continue
            if finished.setdefault(row.index, row) != row:
                raise ValueError(
                    f"{output_dir} records {row.image} twice with different prompt/seed ({path}); "
                    "the folder mixes two corpora: delete the wrong shard or start a new output directory."
                )
    return finished


def merge_shards(output_dir: str) -> int:
    """Write one consistent ``metadata.csv`` (sorted, each image once, images present); return its row count."""
    if not os.path.isdir(output_dir):
        raise FileNotFoundError(f"Output directory not found: {output_dir}")
    finished = finished_rows(output_dir)
    rows = [finished[index] for index in sorted(finished)]
    columns = metadata_columns(any(row.category for row in rows))
    with atomic_open(os.path.join(output_dir, METADATA_FILE)) as file:
        file.write(_csv_line(columns))
        file.writelines(_row_line(row, columns) for row in rows)
    return len(rows)


# --- settings and output directory -----------------------------------------------------------------------------


def _no_progress(iterable: Iterable) -> Iterable:
    return iterable


@dataclass(frozen=True)
class SynthesisSettings:
    """Generation settings shared by every row (Z-Image-Turbo defaults: 8 steps, CFG 1)."""

    height: int = 1024
    width: int = 1024
    num_inference_steps: int = 8
    cfg_scale: float = 1.0
    sigma_shift: Optional[float] = None
    negative_prompt: str = ""
    base_seed: int = 0
    rand_device: str = "cpu"

    def __post_init__(self) -> None:
        """Refuse settings that would fail on every row or write junk images (NaN CFG, zero steps, huge sizes)."""
        check_image_size(self.height, self.width, DEFAULT_MAX_PIXELS)
        check_int(self.num_inference_steps, "num_inference_steps")
        check_float(self.cfg_scale, "cfg_scale")
        if self.sigma_shift is not None:
            check_float(self.sigma_shift, "sigma_shift", inclusive=False)
        check_seed(self.base_seed, "base_seed")

    def call_kwargs(self, pipe: Any, prompt: str, seed: int) -> Dict[str, Any]:
        """Keyword arguments of ``pipe(...)`` for one image, restricted to what ``pipe.__call__`` accepts."""
        kwargs = dict(
            prompt=prompt,
            negative_prompt=self.negative_prompt,
            cfg_scale=self.cfg_scale,
            height=self.height,
            width=self.width,
            seed=seed,
            rand_device=self.rand_device,
            num_inference_steps=self.num_inference_steps,
            sigma_shift=self.sigma_shift,
            progress_bar_cmd=_no_progress,
        )
        parameters = inspect.signature(pipe.__call__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return kwargs
        required = {"prompt", "seed", "height", "width", "num_inference_steps"}
        if self.sigma_shift is not None:
            required.add("sigma_shift")
        if self.negative_prompt:
            required.add("negative_prompt")
        missing = sorted(required - set(parameters))
        if missing:
            raise ValueError(
                f"{type(pipe).__name__}.__call__ has no {', '.join(missing)} argument(s); "
                "`l2p synthesize` needs a DiffSynth text-to-image pipeline (drop the unsupported options)."
            )
        return {key: value for key, value in kwargs.items() if key in parameters}


def prepare_output_dir(output_dir: str) -> None:
    """Create ``output_dir/images`` and check it is writable, with an error that names the fix."""
    try:
        os.makedirs(os.path.join(output_dir, IMAGES_DIR), exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=os.path.join(output_dir, IMAGES_DIR))
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise PermissionError(
            f"Cannot write to output directory {output_dir} ({error.strerror or error}); "
            "choose a writable --output_dir."
        ) from None


def record_settings(output_dir: str, settings: SynthesisSettings, num_prompts: int) -> None:
    """Save the settings in ``synthesis.json``, or check that a resumed run uses the same ones."""
    path = os.path.join(output_dir, SETTINGS_FILE)
    wanted = {"settings": asdict(settings), "num_prompts": num_prompts}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as file:
            previous = json.load(file)
        if previous.get("settings") != wanted["settings"]:
            changed = {
                key: (value, wanted["settings"][key])
                for key, value in previous.get("settings", {}).items()
                if wanted["settings"].get(key) != value
            }
            raise ValueError(
                f"{output_dir} was synthesized with other settings (was -> now: {changed}); "
                "resume with the same settings or choose a new --output_dir."
            )
    with atomic_open(path) as file:
        json.dump(wanted, file, indent=2)


def check_resume(finished: Dict[int, Row], planned: Sequence[Row], output_dir: str) -> None:
    """Refuse to resume a folder whose finished rows disagree with the planned prompts/seeds."""
    for index, row in finished.items():
        if index >= len(planned) or planned[index] != row:
            raise ValueError(
                f"{output_dir}/{row.image} was made from another prompt list or --seed "
                f"(recorded prompt {row.prompt[:60]!r}, seed {row.seed}); resume with the same prompt file and "
                "--seed, or choose a new --output_dir."
            )


def _remove_stale_temp_files(output_dir: str, rank: int, world_size: int) -> None:
    """Delete this worker's temporary images left by a killed run (``images/.NNNNNN.png.*.tmp``)."""
    for path in glob.glob(os.path.join(output_dir, IMAGES_DIR, ".*.png.*.tmp")):
        match = re.match(r"\.(\d+)\.png\.", os.path.basename(path))
        if match and int(match.group(1)) % world_size == rank:
            os.remove(path)


def write_image(image: Any, path: str) -> None:
    """Save a PNG atomically and durably: temporary file, fsync, rename."""
    with atomic_open(path, "wb") as file:
        image.save(file, format="PNG")


# --- source pipeline -------------------------------------------------------------------------------------------


def import_object(path: str) -> Any:
    """``module:attr`` or ``module.attr`` -> the object."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{path!r} is not an import path; write it as module.Class or module:function")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Cannot import {path!r}: {error}") from None


def check_latent_pipeline(pipe: Any) -> None:
    """Raise a ``ValueError`` naming the fix unless ``pipe`` is a callable latent pipeline with a VAE decoder."""
    from ..pipelines.pixel_pipeline import L2PPixelPipeline

    name = type(pipe).__name__
    if isinstance(pipe, L2PPixelPipeline):
        raise ValueError(
            f"{name} is a pixel-space L2P pipeline; `l2p synthesize` needs the latent source model the L2P "
            "model was converted from (default: DiffSynth's ZImagePipeline with Z-Image-Turbo; for Qwen-Image or "
            "FLUX.2, --pipeline_class diffsynth.pipelines.qwen_image.QwenImagePipeline or "
            "diffsynth.pipelines.flux2_image.Flux2ImagePipeline)."
        )
    has_decoder_slot = hasattr(pipe, "vae_decoder") or hasattr(pipe, "vae")
    decoder = getattr(pipe, "vae_decoder", None) or getattr(pipe, "vae", None)
    if not callable(pipe) or not has_decoder_slot:
        raise ValueError(
            f"{name} is not a latent image pipeline (no vae_decoder/vae); `l2p synthesize` needs a DiffSynth "
            "latent text-to-image pipeline such as diffsynth.pipelines.z_image.ZImagePipeline."
        )
    if decoder is None:
        raise ValueError(
            f"{name} has no VAE decoder loaded; add the source model's VAE file (e.g. Z-Image-Turbo's "
            "vae/diffusion_pytorch_model.safetensors) to --source_model."
        )
    if getattr(pipe, "dit", True) is None:
        raise ValueError(f"{name} has no DiT loaded; add the source model's transformer files to --source_model.")


def source_model_configs(source_model: Sequence[str], tokenizer: Optional[str] = None) -> Tuple[list, Any]:
    """DiffSynth ``ModelConfig``s for ``--source_model`` (none: Z-Image-Turbo from the hub) and the tokenizer."""
    from diffsynth.core import ModelConfig

    if not source_model:
        configs = [ModelConfig(model_id=Z_IMAGE_TURBO_ID, origin_file_pattern=p) for p in Z_IMAGE_TURBO_FILES.values()]
        tokenizer_config = ModelConfig(path=tokenizer) if tokenizer else None
        return configs, tokenizer_config or ModelConfig(model_id=Z_IMAGE_TURBO_ID, origin_file_pattern="tokenizer/")
    configs = []
    for path in source_model:
        if not os.path.exists(path):
            raise FileNotFoundError(f"Source model path not found: {path}")
        if os.path.isdir(path) and os.path.isdir(os.path.join(path, "transformer")):  # a Z-Image-Turbo folder
            for pattern in Z_IMAGE_TURBO_FILES.values():
                files = sorted(glob.glob(os.path.join(path, pattern)))
                if not files:
                    raise FileNotFoundError(
                        f"{path} has no {pattern}; a Z-Image-Turbo folder needs all of "
                        f"{', '.join(Z_IMAGE_TURBO_FILES.values())} and tokenizer/"
                    )
                configs.append(ModelConfig(path=files))
            tokenizer = tokenizer or os.path.join(path, "tokenizer")
        elif os.path.isdir(path):
            files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
            if not files:
                raise FileNotFoundError(f"No .safetensors files in source model folder {path}")
            configs.append(ModelConfig(path=files))
        else:
            configs.append(ModelConfig(path=path))
    return configs, ModelConfig(path=tokenizer) if tokenizer else None


def check_hub_reachable() -> None:
    """Fail at once, not after the hub client's retries, when the download host's name does not resolve (offline).

    Nothing is checked when ``DIFFSYNTH_SKIP_DOWNLOAD=True`` (DiffSynth then only looks at local files).
    """
    if os.environ.get("DIFFSYNTH_SKIP_DOWNLOAD", "").lower() == "true":
        return
    if os.environ.get("DIFFSYNTH_DOWNLOAD_SOURCE", "").lower() == "huggingface":
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    else:
        endpoint = os.environ.get("MODELSCOPE_ENDPOINT") or os.environ.get("MODELSCOPE_DOMAIN") or "modelscope.cn"
    host = urllib.parse.urlsplit(endpoint if "//" in endpoint else f"//{endpoint}").hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:
        raise ConnectionError(
            f"The model hub {host} is unreachable ({error}); this machine looks offline. Set "
            "DIFFSYNTH_SKIP_DOWNLOAD=True to use files already under $DIFFSYNTH_MODEL_BASE_PATH (default ./models)."
        ) from None


def resolve_source_files(model_configs: Sequence[Any], tokenizer_config: Any) -> None:
    """Download or find every source file before the pipeline is built; offline, name the files to fetch.

    With ``DIFFSYNTH_SKIP_DOWNLOAD=True`` a missing file fails at once instead of after the hub's timeouts.
    """
    from ..pipelines.pixel_pipeline import resolve_files

    try:
        if any(config.path is None for config in [*model_configs, tokenizer_config] if config is not None):
            check_hub_reachable()
        with contextlib.redirect_stdout(io.StringIO()):  # DiffSynth's download-source banner; errors say it all
            for config in model_configs:
                resolve_files(config)
            if tokenizer_config is not None:
                resolve_files(tokenizer_config, is_dir=True)
    except (OSError, RuntimeError) as error:
        raise FileNotFoundError(
            f"{error} For `l2p synthesize`, fetch Z-Image-Turbo (transformer/, text_encoder/, vae/, tokenizer/) "
            "and pass its folder with --source_model."
        ) from None


@dataclass(frozen=True)
class SourceSpec:
    """How to build the source latent pipeline: a factory ``module:function``, or a class + model files."""

    source_model: Tuple[str, ...] = ()
    pipeline_class: str = DEFAULT_PIPELINE_CLASS
    factory: Optional[str] = None
    tokenizer: Optional[str] = None
    device: str = "cpu"
    torch_dtype: str = "bfloat16"

    def load(self) -> Any:
        """Build the pipeline and check that it is a latent image pipeline.

        A factory is called as ``factory(source_model=[...], device=..., torch_dtype=...)``; otherwise
        ``pipeline_class.from_pretrained(torch_dtype, device, model_configs, tokenizer_config)`` is used.
        """
        import torch
        from diffsynth.models.z_image_dit import ZImageDiT

        from ..models.backbone import run_time_embedder_in_weight_dtype

        torch_dtype = getattr(torch, self.torch_dtype)
        if self.factory:
            pipe = import_object(self.factory)(
                source_model=list(self.source_model), device=self.device, torch_dtype=torch_dtype
            )
        else:
            pipeline_class = import_object(self.pipeline_class)
            model_configs, tokenizer_config = source_model_configs(self.source_model, self.tokenizer)
            resolve_source_files(model_configs, tokenizer_config)
            kwargs = dict(torch_dtype=torch_dtype, device=self.device, model_configs=model_configs)
            if tokenizer_config is not None:
                kwargs["tokenizer_config"] = tokenizer_config
            pipe = pipeline_class.from_pretrained(**kwargs)
        check_latent_pipeline(pipe)
        if isinstance(getattr(pipe, "dit", None), ZImageDiT):
            run_time_embedder_in_weight_dtype(pipe.dit)  # stock Z-Image hard-casts to bf16; fp32 runs on CPUs
        return pipe


# --- synthesis -------------------------------------------------------------------------------------------------


@dataclass
class SynthesisSummary:
    """What one run did: images written, rows skipped as already finished, failed rows with reasons."""

    written: int = 0
    skipped: int = 0
    failed: Dict[int, str] = field(default_factory=dict)

    def __add__(self, other: "SynthesisSummary") -> "SynthesisSummary":
        return SynthesisSummary(
            self.written + other.written, self.skipped + other.skipped, {**self.failed, **other.failed}
        )

    def summary(self) -> str:
        lines = [f"written {self.written}, skipped {self.skipped} (already done), failed {len(self.failed)}"]
        for reason, count in Counter(self.failed.values()).most_common():
            rows = sorted(index for index, why in self.failed.items() if why == reason)
            shown = ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")
            lines.append(f"  {count} x {reason} (rows {shown})")
        return "\n".join(lines)


class SourcePipelineError(ValueError):
    """The source pipeline cannot make corpus images at all: a setup problem that stops the run, not a bad row."""


def generate_image(pipe: Any, prompt: str, seed: int, settings: SynthesisSettings) -> Any:
    """One image of the source pipeline; also how to regenerate any corpus image from its row."""
    from PIL import Image

    image = pipe(**settings.call_kwargs(pipe, prompt, seed))
    if not isinstance(image, Image.Image):
        raise SourcePipelineError(
            f"{type(pipe).__name__} returned {type(image).__name__}, not a PIL image; `l2p synthesize` needs a "
            "latent image pipeline that decodes to one image per call."
        )
    return image


def synthesize(
    pipe: Any,
    records: Sequence[Record],
    output_dir: str,
    settings: SynthesisSettings = SynthesisSettings(),
    rank: int = 0,
    world_size: int = 1,
) -> SynthesisSummary:
    """Generate this worker's unfinished rows into ``output_dir`` (resumable); rows that raise are reported."""
    check_latent_pipeline(pipe)
    settings.call_kwargs(pipe, "", settings.base_seed)  # unsupported settings fail here, not on every row
    planned = plan_rows(records, settings.base_seed)
    prepare_output_dir(output_dir)
    record_settings(output_dir, settings, len(planned))
    finished = finished_rows(output_dir)
    check_resume(finished, planned, output_dir)
    _remove_stale_temp_files(output_dir, rank, world_size)

    mine = rows_of_rank(planned, rank, world_size)
    todo = [row for row in mine if row.index not in finished]
    summary = SynthesisSummary(skipped=len(mine) - len(todo))
    desc = "Synthesizing" if world_size == 1 else f"Synthesizing (rank {rank}/{world_size})"
    columns = metadata_columns(any(row.category for row in planned))
    with (
        ShardWriter(shard_path(output_dir, rank), columns) as shard,
        tqdm(total=len(todo), desc=desc, unit="img", position=rank, dynamic_ncols=True) as progress,
    ):
        for row in todo:
            try:
                image = generate_image(pipe, row.prompt, row.seed, settings)
            except SourcePipelineError:
                raise
            except Exception as error:  # one bad row must not stop hours of synthesis; it is reported
                summary.failed[row.index] = f"{type(error).__name__}: {error}"
            else:
                write_image(image, os.path.join(output_dir, row.image))
                shard.append(row)
                summary.written += 1
            progress.update(1)
            if summary.failed:
                progress.set_postfix(failed=len(summary.failed))
    return summary


@dataclass(frozen=True)
class SynthesisJob:
    """Everything a worker process needs: prompt file, output folder, source pipeline and settings."""

    prompt_file: str
    output_dir: str
    source: SourceSpec = SourceSpec()
    settings: SynthesisSettings = SynthesisSettings()

    def validate(self) -> List[Record]:
        """Cheap checks before any model is loaded: the prompt file and the output folder; return the records."""
        for name in (METADATA_FILE, SETTINGS_FILE):
            if same_file(self.prompt_file, os.path.join(self.output_dir, name)):
                raise ValueError(f"The prompt file {self.prompt_file} is the corpus' {name}; pass a prompt list.")
        records = read_prompts(self.prompt_file)
        check_seed(self.settings.base_seed, "base seed", count=len(records))
        check_output_dir(self.output_dir, "--output_dir")  # created only once the source pipeline has loaded
        return records


def launched() -> bool:
    """Whether a launcher (``accelerate launch``, ``torchrun``) started this process as one of several workers."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def die_with_parent(parent_pid: int) -> None:
    """Make this process receive SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``), so no orphan keeps writing.

    Elsewhere only a parent already gone at start is noticed. A process whose parent died before the call exits.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:
        os._exit(1)


def _use_core_share(num_processes: int) -> None:
    """Give torch this worker's share of the machine's cores (torchrun sets 1 thread per worker)."""
    import torch

    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_processes))


def run_job(job: SynthesisJob) -> Optional[SynthesisSummary]:
    """This process's rows of ``job``, as one of the workers a launcher started or alone without one.

    Worker ``r`` of ``w`` (accelerate's ``process_index`` and ``num_processes``) takes rows ``i % w == r``; a ``cuda``
    source gets one GPU per worker. At the end the main process merges the shards into ``metadata.csv`` and returns
    the summary of all workers; the others return ``None``.
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object, parse_flag_from_env

    records = job.validate()
    # Launched workers of a CPU source talk over gloo, those of a cuda one get a GPU each (NCCL); a process on its own
    # gets the state a later Accelerator() in it would make. The process group only serves the final gather; on a
    # resume ranks may have very different amounts of work left, so no 30-minute default timeout.
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (launched() and not job.source.device.startswith("cuda"))
    if launched():
        die_with_parent(os.getppid())  # before the rendezvous: no orphan waits for the others or keeps writing
    state = PartialState(cpu=cpu, timeout=WORKER_TIMEOUT)
    if state.num_processes > 1:
        _use_core_share(state.num_processes)
    source = job.source
    if source.device == "cuda" and state.device.type == "cuda":
        source = replace(source, device=str(state.device))
    pipe = source.load()
    summary = synthesize(pipe, records, job.output_dir, job.settings, state.process_index, state.num_processes)
    parts = gather_object([summary])  # every shard is complete once all workers are here
    if state.is_main_process:
        merge_shards(job.output_dir)
    state.wait_for_everyone()  # no worker exits (which a launcher may take as the end) before the merge is written
    return sum(parts, SynthesisSummary()) if state.is_main_process else None


def job_arguments(job: SynthesisJob) -> List[str]:
    """The ``l2p synthesize`` options that describe ``job``: what each launched worker parses back into it."""
    source, settings = job.source, job.settings
    if settings.rand_device != SynthesisSettings.rand_device:
        raise ValueError(
            f"rand_device={settings.rand_device!r} has no `l2p synthesize` option; launch several workers only with "
            f"the default {SynthesisSettings.rand_device!r}, or run one (num_processes=1)."
        )
    arguments = [f"--prompts={job.prompt_file}", f"--output_dir={job.output_dir}"]
    if source.source_model:
        arguments += ["--source_model", *source.source_model]
    if source.factory:
        arguments.append(f"--source_factory={source.factory}")
    else:
        arguments.append(f"--pipeline_class={source.pipeline_class}")
    if source.tokenizer:
        arguments.append(f"--tokenizer={source.tokenizer}")
    arguments += [
        f"--device={source.device}",
        f"--dtype={source.torch_dtype}",
        f"--height={settings.height}",
        f"--width={settings.width}",
        f"--num_inference_steps={settings.num_inference_steps}",
        f"--cfg_scale={float(settings.cfg_scale)!r}",
        f"--seed={settings.base_seed}",
    ]
    if settings.sigma_shift is not None:
        arguments.append(f"--sigma_shift={float(settings.sigma_shift)!r}")
    if settings.negative_prompt:
        arguments.append(f"--negative_prompt={settings.negative_prompt}")
    return arguments


def _launch_workers(job: SynthesisJob, num_processes: int) -> int:
    """``accelerate launch`` of ``num_processes`` ``l2p synthesize`` workers in a child that dies with this process."""
    # --main_process_port 0: accelerate picks a free port for the rendezvous.
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--quiet",
        "--main_process_port", "0", "-m", "diffsynth_l2p.cli", "synthesize", *job_arguments(job),
    ]  # fmt: skip
    env = dict(os.environ)
    if not job.source.device.startswith("cuda"):
        env["ACCELERATE_USE_CPU"] = "true"  # gloo workers on the CPU (accelerate's --cpu alone starts one process)
    sys.stdout.flush()  # what this process printed comes before the workers' output
    process = subprocess.run(command, env=env, preexec_fn=functools.partial(die_with_parent, os.getpid()))
    return process.returncode if process.returncode >= 0 else 128 - process.returncode


def launch_job(job: SynthesisJob, num_processes: int = 1) -> int:
    """Synthesize ``job`` with ``num_processes`` workers on this machine; the main one prints the summary.

    One worker runs in this process, as does a process a launcher started; several are started through
    ``accelerate launch`` (see ``run_job``). Returns the exit status: 0 when every row is done, non-zero when rows
    failed (1) or a launched worker stopped with an error; the summary or the error is printed.
    """
    import torch

    if num_processes < 1:
        raise ValueError(f"num_processes must be at least 1, got {num_processes}")
    if num_processes > 1:
        if launched():
            raise ValueError(
                f"--num_processes {num_processes} inside a launcher that already started {os.environ['WORLD_SIZE']} "
                "workers; drop --num_processes (the launcher's --num_processes / --nproc_per_node sets them)."
            )
        if job.source.device == "cuda" and num_processes > torch.cuda.device_count():
            raise ValueError(
                f"--num_processes {num_processes} with --device cuda needs a GPU per worker, but "
                f"{torch.cuda.device_count()} are visible; lower --num_processes."
            )
        job.validate()
        return _launch_workers(job, num_processes)
    with contextlib.redirect_stdout(sys.stderr):  # DiffSynth's loader reports on stdout; keep it for the summary
        summary = run_job(job)
    if summary is None:
        return 0
    print(summary.summary())
    print(f"metadata.csv written to {job.output_dir}")
    return 1 if summary.failed else 0
