"""The L2P training loop on ``accelerate``: batches > 1, gradient accumulation, exact resume, atomic checkpoints.

DiffSynth's ``launch_training_task`` runs batch size 1 and cannot resume the optimizer, so this is a small loop
of its own (same optimizer, same DiffSynth training module and loggers). Every random draw is a function of
``(seed, micro-batch index, rank)`` and the data order of ``(seed, epoch)``, and ``accelerator.save_state`` keeps
model, optimizer, LR scheduler and RNG state, so ``--resume`` continues a run exactly.
"""

import contextlib
import itertools
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType
from diffsynth.diffusion.logger import CSVLogger, TensorBoardLogger
from safetensors.torch import save_file
from tqdm import tqdm
from transformers import get_scheduler

from ..atomic import apply_umask, atomic_open
from ..families import DEFAULT_FAMILY, all_families, get_family
from ..safetensors_io import atomic_output, read_headers
from ..validation import check_float, check_int, check_not_an_input, check_output_dir
from .arguments import LOG_FORMATS, LR_SCHEDULERS, check_noise_mode
from .dataset import DIVISION_FACTOR, L2PImageDataset, bucket_batches, collate
from .precision import PrecisionPlan, cast_trainable, precision_plan
from .presets import TrainableSet, resolve_trainable

if TYPE_CHECKING:
    from ..pipelines.loading import ModelFiles
    from ..pipelines.pixel_pipeline import L2PPixelPipeline
    from .module import L2PTrainingModule

STATE_DIR = "state"
TEXT_CACHE_FILE = "text_embeddings.safetensors"


@dataclass
class TrainConfig:
    """Everything a run needs; the CLI, ``train_L2P.py`` and the tests build one of these."""

    dataset: str
    output_path: str
    model: Union[None, str, Sequence[str], Mapping[str, object]] = None  # as `l2p generate --model`; None = tiny
    preset: Optional[str] = None  # default "release" unless `trainable` patterns are given
    trainable: Optional[List[str]] = None
    learning_rate: float = 5e-5
    lr_scheduler: str = "constant"  # the releases' schedule; "linear" and "cosine" decay to zero at max_steps
    lr_warmup_steps: int = 0
    weight_decay: float = 0.01
    max_steps: Optional[int] = None  # None = one epoch
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    save_steps: int = 5000
    config: Optional[str] = None  # named L2P config whose training defaults apply; None = the DiT file's
    family: Optional[str] = None  # the DiT file's family ("z-image", "qwen-image", "flux2"); set by resolve_defaults
    max_pixels: Optional[int] = None  # None (like noise and num_timesteps) = the config's training default
    noise: Optional[str] = None
    shift: float = 3.0
    num_timesteps: Optional[int] = None
    seed: int = 0
    use_gradient_checkpointing: bool = True
    cache_text_embeddings: bool = False
    caption_dropout: float = 0.0  # fraction of images trained on the empty caption (CFG's branch); releases: 0
    resume: Optional[str] = None  # "latest" or a state directory written by a previous run
    log: Optional[str] = None
    remove_prefix: str = "pipe.dit."
    num_workers: int = 0
    mixed_precision: Optional[str] = None  # None = the accelerate config's; "bf16" also runs on CPUs with bf16 units


@dataclass
class TrainState:
    """Optimizer steps done and the recent losses; saved with ``accelerator.save_state`` for ``--resume``."""

    step: int = 0
    losses: List[float] = field(default_factory=list)

    def record(self, loss: float, keep: int = 100) -> None:
        self.step += 1
        self.losses = (self.losses + [loss])[-keep:]

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.losses = state["step"], list(state["losses"])


def check_config(config: TrainConfig) -> None:
    """Reject bad settings and an unwritable output folder before anything is loaded."""
    for name in ("batch_size", "gradient_accumulation_steps", "save_steps"):
        check_int(getattr(config, name), f"--{name}")
    for name in ("max_steps", "num_timesteps"):  # None: one epoch, the config's default
        if getattr(config, name) is not None:
            check_int(getattr(config, name), f"--{name}")
    if config.max_pixels is not None:
        check_int(config.max_pixels, "--max_pixels", minimum=DIVISION_FACTOR * DIVISION_FACTOR)
    if config.config is not None and not any(config.config in family.configs for family in all_families()):
        get_family(DEFAULT_FAMILY).config(config.config)  # the one-line error naming the choices
    check_int(config.num_workers, "--dataset_num_workers", minimum=0)
    check_float(config.learning_rate, "--learning_rate")
    if config.lr_scheduler not in LR_SCHEDULERS:
        raise ValueError(f"--lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {config.lr_scheduler!r}.")
    check_int(config.lr_warmup_steps, "--lr_warmup_steps", minimum=0)
    check_float(config.weight_decay, "--weight_decay")
    if check_float(config.caption_dropout, "--caption_dropout") >= 1:
        raise ValueError(f"--caption_dropout must be < 1 (a fraction of the images), got {config.caption_dropout:g}.")
    check_float(config.shift, "--shift", inclusive=False)
    # Per-step generators are seeded with (seed << 32) + micro-batch, which must stay below 2**64.
    check_int(config.seed, "--seed", minimum=0, maximum=2**32 - 1)
    if config.noise is not None:
        check_noise_mode(config.noise)
    if config.log is not None and config.log not in LOG_FORMATS:
        raise ValueError(f"--log must be one of {', '.join(LOG_FORMATS)}, got {config.log!r}.")
    if config.log == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError as error:
            raise ValueError("--log tensorboard needs the tensorboard package: pip install tensorboard.") from error
    check_output_dir(config.output_path, "--output_path folder")
    check_not_an_input(config.output_path, [config.dataset], "--output_path folder")


def resolve_defaults(config: TrainConfig) -> TrainConfig:
    """``config`` with its L2P config name (given, else the DiT file's) and that config's unset training defaults.

    A named config must have the DiT file's head layout; explicit noise, schedule length and pixel limit win.
    """
    from ..pipelines.loading import resolve_model_files
    from ..pipelines.pixel_pipeline import family_and_config

    dit = resolve_model_files(config.model)["dit"]
    family, native = family_and_config(dit)
    if config.family is not None and config.family != family.name:
        raise ValueError(f"family {config.family!r} was given, but {dit} is an L2P {family.title} DiT.")
    named = native if config.config is None else family.config(config.config)
    if named.layout() != native.layout():
        raise ValueError(
            f"--config {config.config} does not fit the DiT file, whose head has the {family.config_name(native)} "
            f"layout; drop --config or pass --config {family.config_name(native)}."
        )
    settings = named.training_settings(config.noise, config.num_timesteps, config.max_pixels)
    smallest = named.train_size_multiple**2
    if settings["max_pixels"] < smallest:
        raise ValueError(
            f"--max_pixels must be at least {smallest} for config {family.config_name(named)} (image sides are "
            f"multiples of {named.train_size_multiple}), got {settings['max_pixels']}."
        )
    return replace(config, config=family.config_name(named), family=family.name, **settings)


def training_dataset(config: TrainConfig) -> L2PImageDataset:
    """The run's images, sized by its resolved config (``resolve_defaults``)."""
    size_multiple = get_family(config.family or DEFAULT_FAMILY).config(config.config).train_size_multiple
    return L2PImageDataset(config.dataset, config.max_pixels, config.noise == "seed", size_multiple)


def find_state(output_path: str, resume: str) -> str:
    """The state directory to resume from: ``resume`` itself, or the newest one under the run's output folder."""
    if resume != "latest":
        if not os.path.isdir(resume):
            raise FileNotFoundError(f"No training state at {resume!r}; pass a {STATE_DIR}/step-N folder or 'latest'.")
        return resume
    root = os.path.join(output_path, STATE_DIR)
    steps = (
        [int(m.group(1)) for name in os.listdir(root) if (m := re.fullmatch(r"step-(\d+)", name))]
        if (os.path.isdir(root))
        else []
    )
    if not steps:
        raise FileNotFoundError(f"Nothing to resume in {root!r}: no step-N training state was saved there yet.")
    return os.path.join(root, f"step-{max(steps)}")


def micro_batches(
    sizes: Sequence[tuple], batch_size: int, seed: int, start: int, rank: int, world: int
) -> Iterator[List[int]]:
    """This rank's micro-batches from its ``start``-th on: micro-batch ``m`` is global batch ``m * world + rank``."""
    per_epoch = len(bucket_batches(sizes, batch_size, seed, 0))  # the same in every epoch
    epoch, batches = -1, []
    for index in itertools.count(start):
        batch_epoch, position = divmod(index * world + rank, per_epoch)
        if batch_epoch != epoch:
            epoch, batches = batch_epoch, bucket_batches(sizes, batch_size, seed, batch_epoch)
        yield batches[position]


def save_trainable(accelerator: Accelerator, model: torch.nn.Module, path: str, remove_prefix: str) -> int:
    """Write only the trainable parameters (prefix stripped; LoRA keys in DiffSynth's format) atomically."""
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return 0
    module = accelerator.unwrap_model(model)
    state_dict = module.export_trainable_state_dict(state_dict, remove_prefix=remove_prefix)
    state_dict = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    broken = [key for key, value in state_dict.items() if value.is_floating_point() and not value.isfinite().all()]
    if broken:
        raise FloatingPointError(
            f"Not saving {path}: {len(broken)} tensors hold NaN or inf (e.g. {broken[0]}); the run diverged."
        )
    with atomic_output(path) as temp_path:
        save_file(state_dict, temp_path, metadata={"format": "pt", "trainable": module.trainable.spec})
    return len(state_dict)


def save_training_state(accelerator: Accelerator, output_path: str, step: int) -> None:
    """``accelerator.save_state`` into ``state/step-N`` via a temporary folder; older states are removed."""
    root = os.path.join(output_path, STATE_DIR)
    final, temp = os.path.join(root, f"step-{step}"), os.path.join(root, f".step-{step}.tmp")
    accelerator.save_state(temp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        apply_umask(temp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temp, final)
        for name in os.listdir(root):
            if name != f"step-{step}":
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    accelerator.wait_for_everyone()


def trainable_checksum(model: torch.nn.Module) -> torch.Tensor:
    """Sum of every trainable weight in float64: ranks in lockstep hold identical weights, so identical sums."""
    return torch.stack([p.detach().double().sum() for p in model.parameters() if p.requires_grad]).sum()


def make_optimizer(accelerator: Accelerator, model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; DeepSpeed's CPU AdamW when its config offloads the optimizer."""
    params, options = list(model.trainable_modules()), dict(lr=config.learning_rate, weight_decay=config.weight_decay)
    deepspeed = getattr(accelerator.state, "deepspeed_plugin", None)
    if deepspeed is None:
        return torch.optim.AdamW(params, **options)
    # No dataloader goes through prepare(), so DeepSpeed is told the batch layout here (its own value would win).
    deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    deepspeed.deepspeed_config["gradient_accumulation_steps"] = config.gradient_accumulation_steps
    offload = deepspeed.deepspeed_config.get("zero_optimization", {}).get("offload_optimizer", {})
    if offload.get("device") == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **options)
    return torch.optim.AdamW(params, **options)


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, max_steps: int, world: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """``config``'s schedule over ``max_steps`` optimizer steps (warm-up first, then constant or a decay to zero).

    accelerate steps a prepared scheduler once per process for every optimizer step, so lengths count ``world``
    times as many scheduler steps.
    """
    name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    return get_scheduler(
        name, optimizer, num_warmup_steps=config.lr_warmup_steps * world, num_training_steps=max_steps * world
    )


def load_training_pipeline(
    config: TrainConfig, device: torch.device, dtype: torch.dtype
) -> Tuple["L2PPixelPipeline", TrainableSet, "ModelFiles"]:
    """The pipeline in ``dtype`` on ``device``, the resolved trainable set and the model files.

    ``config`` is :func:`resolve_defaults`' (its ``family`` is the DiT file's).
    """
    from ..pipelines.loading import load_pipeline, resolve_model_files

    files = resolve_model_files(config.model)
    # Resolve the trainable set from the checkpoint header first, so a bad preset fails before loading 6B weights.
    family = get_family(config.family or DEFAULT_FAMILY)
    trainable = resolve_trainable(read_headers(files["dit"]), config.preset, config.trainable, family)
    return load_pipeline(files, device=device, torch_dtype=dtype), trainable, files


def training_precision(accelerator: Accelerator) -> PrecisionPlan:
    """The run's dtypes from the accelerate config's ``mixed_precision`` and whether DeepSpeed drives it."""
    return precision_plan(accelerator.mixed_precision, accelerator.distributed_type == DistributedType.DEEPSPEED)


def build_training_module(
    config: TrainConfig, accelerator: Accelerator, prompts: Sequence[str], plan: PrecisionPlan
) -> "L2PTrainingModule":
    """Load the pipeline in the plan's dtype, cache caption embeddings if asked, wrap it for training."""
    from .module import L2PTrainingModule, cache_text_embeddings

    # Multi-CPU ranks report "cpu:N", which DiffSynth's loaders reject.
    device = torch.device("cpu") if accelerator.device.type == "cpu" else accelerator.device
    pipe, trainable, files = load_training_pipeline(config, device, plan.load_dtype)
    text_cache = None
    if config.cache_text_embeddings:
        text_cache = os.path.join(config.output_path, TEXT_CACHE_FILE)
        with accelerator.main_process_first():
            captions = [*prompts, ""] if config.caption_dropout else prompts
            cache_text_embeddings(pipe, captions, text_cache, encoder_id=",".join(files["text_encoder"]))
        pipe.text_encoder = None  # never needed again: its memory is free for training
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    module = L2PTrainingModule(
        pipe,
        trainable,
        config.noise,
        config.shift,
        config.num_timesteps,
        config.use_gradient_checkpointing,
        text_cache,
        config.caption_dropout,
    )
    cast_trainable(module, plan.trainable_dtype)  # frozen weights stay in the load dtype
    return module


def train(config: TrainConfig) -> dict:
    """Run (or resume) a training run; return a summary dict (also printed as the final line)."""
    check_config(config)
    config = resolve_defaults(config)
    # --trainable patterns may select tensors a forward pass never reaches; DDP must not wait for their gradients.
    unused = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        kwargs_handlers=[unused],
    )
    dataset = training_dataset(config)
    if accelerator.is_main_process and dataset.skipped:
        total = len(dataset.skipped) + len(dataset)
        print(f"Skipped {len(dataset.skipped)} of {total} rows:", *dataset.skipped, sep="\n  ")
    state_dir = find_state(config.output_path, config.resume) if config.resume else None
    plan = training_precision(accelerator)
    model = build_training_module(config, accelerator, dataset.prompts, plan)
    os.makedirs(config.output_path, exist_ok=True)  # only now: a run that cannot start leaves nothing behind
    trainable = model.trainable

    world, accum = accelerator.num_processes, config.gradient_accumulation_steps
    max_steps = config.max_steps or math.ceil(
        len(bucket_batches(dataset.sizes, config.batch_size, config.seed, 0)) / (world * accum)
    )
    optimizer = make_optimizer(accelerator, model, config)
    lr_scheduler = make_lr_scheduler(optimizer, config, max_steps, world)
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    if state_dir:
        accelerator.load_state(state_dir)
    if accelerator.is_main_process:
        run_info = asdict(config) | {
            "trainable_resolved": trainable.spec,
            "world_size": world,
            "precision": asdict(plan),
        }
        with atomic_open(os.path.join(config.output_path, "training_args.json")) as file:
            json.dump(run_info, file, indent=2, default=str)

    rank = accelerator.process_index
    sampler = micro_batches(dataset.sizes, config.batch_size, config.seed, state.step * accum, rank, world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=config.num_workers
    )
    batches = iter(loader)
    loggers = []
    if accelerator.is_main_process and config.log:
        log_dir = os.path.join(config.output_path, "tensorboard_log")
        loggers.append(CSVLogger(config.output_path) if config.log == "csv" else TensorBoardLogger(log_dir))

    start_step, started = state.step, time.time()
    progress = tqdm(
        total=max_steps, initial=state.step, desc="Training", unit="step", disable=not accelerator.is_main_process
    )
    model.train()
    while state.step < max_steps:
        step_start, step_loss = time.time(), 0.0
        for micro in range(accum):
            # Every draw (timesteps, fresh noise) depends only on (seed, global micro-batch): resumable, per rank.
            generator = torch.Generator().manual_seed((config.seed << 32) + (state.step * accum + micro) * world + rank)
            with accelerator.accumulate(model):
                with accelerator.autocast() if plan.autocast else contextlib.nullcontext():
                    loss = model(next(batches), generator)
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            step_loss += accelerator.reduce(loss.detach(), "mean").item() / accum
        if not math.isfinite(step_loss):
            raise FloatingPointError(
                f"Training stopped at step {state.step + 1}: the loss is {step_loss}. Lower --learning_rate, check "
                f"--shift and the data; checkpoints of earlier steps in {config.output_path} are kept."
            )
        state.record(step_loss)
        progress.set_postfix(loss=f"{step_loss:.4f}", step_time=f"{time.time() - step_start:.2f}s")
        progress.update()
        for logger in loggers:
            logger.log("loss", step_loss, state.step)
        if state.step % config.save_steps == 0 or state.step == max_steps:
            checkpoint = os.path.join(config.output_path, f"step-{state.step}.safetensors")
            save_trainable(accelerator, model, checkpoint, config.remove_prefix)
            save_training_state(accelerator, config.output_path, state.step)
    progress.close()
    for logger in loggers:
        logger.close()

    checksums = accelerator.gather(trainable_checksum(model).to(accelerator.device).reshape(1)).cpu()
    if not bool((checksums == checksums[0]).all()):
        raise RuntimeError(f"Ranks diverged: trainable-weight checksums {checksums.tolist()}.")
    summary = {
        "steps": state.step,
        "steps_this_run": state.step - start_step,
        "final_loss": state.losses[-1] if state.losses else float("nan"),
        "mean_loss_last_10": sum(state.losses[-10:]) / max(len(state.losses[-10:]), 1),
        "trainable": trainable.spec,
        "num_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seconds": time.time() - started,
        "ranks": world,
        "checkpoint": os.path.join(config.output_path, f"step-{state.step}.safetensors"),
    }
    if accelerator.is_main_process:
        print(
            f"Done: {summary['steps']} steps ({summary['steps_this_run']} this run, {summary['seconds']:.1f} s), "
            f"final loss {summary['final_loss']:.4f}, mean of last 10 {summary['mean_loss_last_10']:.4f}; trained "
            f"{summary['num_trainable']:,} parameters ({trainable.spec}); {world} rank(s) in sync; "
            f"checkpoint {summary['checkpoint']}"
        )
    accelerator.end_training()
    return summary
