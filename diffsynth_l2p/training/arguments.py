"""Options of ``l2p train`` and ``examples/z_image/train_L2P.py``; light imports, so ``l2p --help`` stays fast."""

import argparse
import json
from typing import TYPE_CHECKING, List, Optional, Union

from ..families import DEFAULT_FAMILY, FAMILY_MODULES
from .presets import PRESET_HELP

FAMILY_NAMES = list(FAMILY_MODULES)

if TYPE_CHECKING:
    from .trainer import TrainConfig

LOG_FORMATS = ("csv", "tensorboard")
LR_SCHEDULERS = ("constant", "linear", "cosine")
NOISE_MODES = ("seed", "fresh")  # per-image seeded noise (the release) or fresh draws from the run's generator


def check_noise_mode(noise: str) -> str:
    """``noise`` if it is one of :data:`NOISE_MODES`, else a one-line error naming them."""
    if noise not in NOISE_MODES:
        raise ValueError(f"--noise must be 'seed' (per-image seed, the release) or 'fresh', got {noise!r}.")
    return noise


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the training options (DiffSynth's spellings where they exist) to ``parser``."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_base_path", "--dataset", dest="dataset", help="folder with images + metadata.csv")
    data.add_argument("--max_pixels", type=int, help="resize images to at most this many pixels (default: config's)")
    data.add_argument("--dataset_num_workers", dest="num_workers", type=int, default=0, help="DataLoader workers")
    data.add_argument(
        "--cache_text_embeddings",
        action="store_true",
        help="encode every caption once, then free the text encoder (low-VRAM)",
    )
    data.add_argument(
        "--caption_dropout",
        type=float,
        default=0.0,
        help="fraction of images trained on the empty caption, for sampling with CFG (releases: 0)",
    )
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        nargs="+",
        default=None,
        metavar="PATH",
        help="model directory (DiT .safetensors + text_encoder/ + tokenizer/) or the DiT file, text-encoder shards "
        "and tokenizer directory, as for `l2p generate`; default: the shipped tiny-world student",
    )
    model.add_argument("--model_paths", default=None, help="DiffSynth spelling: a JSON list of the same paths")
    model.add_argument(
        "--preset",
        default=None,
        help="what to train (default: release): " + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()),
    )
    model.add_argument(
        "--trainable",
        default=None,
        metavar="PATTERNS",
        help="comma-separated dotted names/prefixes relative to the DiT, '*' allowed (instead of --preset)",
    )
    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--learning_rate", type=float, default=5e-5)
    optim.add_argument(
        "--lr_scheduler",
        choices=LR_SCHEDULERS,
        default="constant",
        help="learning-rate schedule (releases: constant); linear and cosine decay to zero at --max_steps",
    )
    optim.add_argument("--lr_warmup_steps", type=int, default=0, help="steps of linear warm-up from zero")
    optim.add_argument("--weight_decay", type=float, default=0.01)
    optim.add_argument("--max_steps", type=int, default=None, help="optimizer steps (default: one epoch)")
    optim.add_argument("--batch_size", type=int, default=1, help="images per micro-batch and process (same size)")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--noise", choices=NOISE_MODES, help="per-image seeded or fresh noise (default: config's)")
    optim.add_argument("--shift", type=float, default=3.0, help="training schedule shift (releases: 3)")
    optim.add_argument("--num_timesteps", type=int, help="training schedule length (default: config's)")
    optim.add_argument("--seed", type=int, default=0, help="seed of data order, timesteps and fresh noise")
    optim.add_argument(
        "--no_gradient_checkpointing",
        dest="use_gradient_checkpointing",
        action="store_false",
        help="keep activations instead of recomputing them (faster, more memory)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--output_path", default="./models/train", help="checkpoints, state and logs go here")
    out.add_argument("--save_steps", type=int, default=5000, help="checkpoint every N steps and at the end")
    out.add_argument("--remove_prefix_in_ckpt", dest="remove_prefix", default="pipe.dit.")
    out.add_argument("--resume", default=None, metavar="STATE", help="'latest' or an OUTPUT/state/step-N folder")
    out.add_argument("--log", choices=LOG_FORMATS, default=None, help="also log the loss as csv or tensorboard")
    parser.add_argument(
        "--dry-run",
        "--dry_run",
        dest="dry_run",
        action="store_true",
        help="print parameter counts, training memory and training settings of the preset at --config on the meta "
        "device, then exit",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="named L2P config (Z-Image: 1k, 4k, 8k, 10k, tiny; Qwen-Image: 20b, tiny; FLUX.2: klein-4b, klein-9b, "
        "dev, tiny) whose training defaults apply (--noise, --num_timesteps, --max_pixels: 1k seed/500/1024^2, UHR "
        "fresh/1000/native); default: the --model DiT's (--dry-run: the family's first)",
    )
    parser.add_argument(
        "--family",
        default=None,
        choices=FAMILY_NAMES,
        help="the DiT's source family; default: the --model DiT's (--dry-run: z-image)",
    )


def _model_paths(args: argparse.Namespace) -> Optional[Union[str, List[str]]]:
    """``--model`` / ``--model_paths`` as ``resolve_model_files`` takes them (a directory, or a list of paths)."""
    if args.model_paths:
        try:
            entries = json.loads(args.model_paths)
        except json.JSONDecodeError as error:
            raise ValueError(f"--model_paths is not valid JSON ({error.msg}); write a list of quoted paths.") from None
        if not isinstance(entries, list) or not all(
            isinstance(entry, str) or (isinstance(entry, list) and all(isinstance(p, str) for p in entry))
            for entry in entries
        ):
            raise ValueError("--model_paths must be a JSON list of paths (or of lists of paths).")
        paths = [p for entry in entries for p in ([entry] if isinstance(entry, str) else entry)]
    else:
        paths = args.model
    return paths[0] if paths and len(paths) == 1 else paths


def config_from_args(args: argparse.Namespace) -> "TrainConfig":
    """A ``TrainConfig`` from parsed ``add_train_arguments`` options."""
    from dataclasses import fields

    from .trainer import TrainConfig

    if not args.dataset:
        raise ValueError("Pass the training data folder with --dataset_base_path (images + metadata.csv).")
    names = {f.name for f in fields(TrainConfig)}
    values = {key: value for key, value in vars(args).items() if key in names}
    values["model"] = _model_paths(args)
    values["trainable"] = [p for p in args.trainable.split(",") if p.strip()] if args.trainable else None
    return TrainConfig(**values)


def run_from_args(args: argparse.Namespace) -> dict:
    """``--dry-run`` table or a full training run from parsed options."""
    if args.dry_run:
        from .memory import dry_run

        trainable = [p for p in args.trainable.split(",") if p.strip()] if args.trainable else None
        settings = dict(noise=args.noise, num_timesteps=args.num_timesteps, max_pixels=args.max_pixels)
        print(dry_run(args.config, args.preset, trainable, settings, args.shift, args.family or DEFAULT_FAMILY))
        return {}
    from .trainer import train

    return train(config_from_args(args))
