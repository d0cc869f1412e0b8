"""The ``l2p`` command: one verb per step of the L2P workflow, each a thin layer over a library function."""

import argparse
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, List, NoReturn, Optional

from .validation import check_device, check_output_dir, check_output_file, float_option, int_option, seed_option

if TYPE_CHECKING:
    from .data.synthesize import SynthesisJob

# Errors whose message is written for the user; any other exception type is named in the one-line report too.
_EXPECTED_ERRORS = (ValueError, TypeError, OSError, FloatingPointError)
DEBUG_ENV = "L2P_DEBUG"

# Each verb adds its sub-parser in a `_add_<verb>` function and sets `func` to its `_run_<verb>` handler.
# Heavy imports (torch, diffsynth) happen inside the handlers so `l2p --help` stays fast.


def _add_convert(sub) -> None:
    from .families import DEFAULT_FAMILY, FAMILY_MODULES
    from .models.configs import L2P_CONFIGS

    parser = sub.add_parser(
        "convert",
        help="turn a latent DiT (Z-Image, Qwen-Image, FLUX.2; or a 4K/8K L2P checkpoint) into an L2P pixel init",
        description=(
            "Convert a latent Z-Image DiT (one file or several shards, e.g. Z-Image-Turbo's transformer/*.safetensors) "
            "into an L2P pixel-space init. Tensors with the same key and shape are copied bit for bit, the latent "
            "patch embedder and all_final_layer are dropped, and the pixel patch embedder and the local_decoder head "
            "get a fresh init from --seed. With --family qwen-image or flux2, a Qwen-Image or FLUX.2 transformer is "
            "converted the same way (its input projection and output layers are replaced; docs/transfer.md). "
            "With --from-pixel, a 4K or 8K L2P checkpoint becomes an 8K or 10K init "
            "instead: tensors whose shape changed are re-initialised, head stages the target lacks are dropped. "
            "The output is re-read and verified before it replaces OUTPUT_PATH."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--latent_ckpt_files", nargs="+", metavar="FILE",
        help="the latent DiT's safetensors file, or all of its shards",
    )
    source.add_argument(
        "--from-pixel", nargs="+", metavar="FILE", dest="pixel_ckpt_files",
        help="a 4K or 8K L2P checkpoint (file or shards) to build the --config 8k or 10k init from",
    )
    parser.add_argument("--output_path", required=True, help="the pixel checkpoint to write")
    parser.add_argument(
        "--config", default=None, metavar="NAME",
        help=(
            f"named L2P config of the output (Z-Image: {', '.join(L2P_CONFIGS)}; other families: their sizes, see "
            "docs/transfer.md); default: the one matching the source's sizes (with --from-pixel: required, 8k or 10k)"
        ),
    )
    parser.add_argument(
        "--family", default=DEFAULT_FAMILY, choices=list(FAMILY_MODULES),
        help=f"the source model's family (default: {DEFAULT_FAMILY})",
    )
    parser.add_argument("--seed", type=seed_option(), default=42, help="seed of the new tensors' init (default: 42)")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="read headers only; print the plan and the hash the output will have, write nothing",
    )
    parser.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from .convert import convert_latent_to_pixel, convert_pixel_to_pixel

    if args.pixel_ckpt_files:
        if args.family != "z-image":
            raise ValueError("--from-pixel builds Z-Image UHR inits only; drop --family.")
        report = convert_pixel_to_pixel(args.pixel_ckpt_files, args.output_path, args.config, args.seed, args.dry_run)
    else:
        report = convert_latent_to_pixel(
            args.latent_ckpt_files, args.output_path, args.config, args.seed, args.dry_run, family=args.family
        )
    print(report.summary())
    return 0


def _add_merge(sub) -> None:
    parser = sub.add_parser(
        "merge",
        help="overwrite a full L2P checkpoint with a training checkpoint's tensors",
        description=(
            "Start from FILE_B (a full pixel checkpoint, e.g. the converted init) and overwrite every tensor that "
            "FILE_A (e.g. step-N.safetensors, trainable tensors only) has with the same key and shape. Tensors whose "
            "shapes differ are skipped with a warning; tensors absent from FILE_B are counted, not added. The output "
            "is written atomically and never replaces an input; its hash and DiffSynth model are printed."
        ),
    )
    parser.add_argument("--file_a", nargs="+", required=True, metavar="FILE", help="the tensors to apply (shards ok)")
    parser.add_argument("--file_b", nargs="+", required=True, metavar="FILE", help="the full checkpoint (shards ok)")
    parser.add_argument("--file_out", required=True, help="the merged checkpoint to write")
    parser.set_defaults(func=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from .merge import fuse_lora, is_lora_checkpoint, merge_checkpoints
    from .safetensors_io import read_headers

    # A LoRA checkpoint (`--preset lora:R`, recognised by its lora_A/lora_B keys) is fused instead: W += B @ A.
    merge = fuse_lora if is_lora_checkpoint(read_headers(args.file_a)) else merge_checkpoints
    print(merge(args.file_a, args.file_b, args.file_out).summary())
    return 0


def _add_inspect(sub) -> None:
    parser = sub.add_parser(
        "inspect",
        help="describe a checkpoint from its header: hash, DiffSynth model, parameters, dtypes, key diff",
        description=(
            "Describe one checkpoint without loading its weights (instant on a 20 GB file): its DiffSynth hash and "
            "registered model (or 'unknown'), parameter count per top-level module, dtypes, and the missing, "
            "unexpected and shape-mismatched keys against the closest known layout (the named L2P configs and the "
            "stock latent DiTs of Z-Image, Qwen-Image and FLUX.2). Several FILEs are read as the shards of one "
            "checkpoint."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="a safetensors file, or all shards of one checkpoint")
    parser.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from .inspection import inspect_checkpoint

    print(inspect_checkpoint(args.files).summary())
    return 0


def _add_generate(sub) -> None:
    parser = sub.add_parser(
        "generate",
        help="generate PNG images from prompts with an L2P model (default: the shipped tiny-world student)",
        description=(
            "Generate images with the L2P pipeline of the DiT's family (Z-Image, Qwen-Image or FLUX.2, told by its "
            "hash) and write them as PNGs that carry their generation parameters "
            "(JSON in the 'parameters' text chunk). Without --model, the default model is used: the tiny-world "
            "student that ships with the package (64x64 pictures of colored shapes). Prints the written paths."
        ),
    )
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="the prompt")
    prompts.add_argument(
        "--prompts", metavar="FILE",
        help='a .txt file (one prompt per line) or .jsonl file ({"prompt": ..., "negative_prompt": ..., "seed": ...})',
    )
    parser.add_argument(
        "--model", nargs="+", default=None, metavar="PATH",
        help="a model directory (DiT .safetensors + text_encoder/ + tokenizer/) or the DiT file, the text-encoder "
        "shards and the tokenizer directory; default: the shipped tiny-world student",
    )
    parser.add_argument(
        "--steps", type=int_option(1), default=None,
        help="denoising steps (default: the model's, 30 for the 1K release, 50 for 4K/8K/10K)",
    )
    parser.add_argument(
        "--cfg", type=float_option(0), default=None,
        help="classifier-free guidance scale; 1 disables it (default: the model's, 2.0 for the 1K release, 4.0 for "
        "4K/8K/10K and the tiny models)",
    )
    parser.add_argument(
        "--cfg-max-sigma", type=float_option(0, inclusive=False), default=None,
        help="guide only the steps whose sigma is at most this (default: the model's: every step, 0.8 for the tiny "
        "models; 1 guides every step)",
    )
    parser.add_argument("--height", type=int_option(1), default=None, help="image height (default: model's native)")
    parser.add_argument("--width", type=int_option(1), default=None, help="image width (default: model's native)")
    parser.add_argument(
        "--seed", type=seed_option(), default=None,
        help="seed of image 0; image i uses seed+i (default: the model's, 42)",
    )
    parser.add_argument("--negative", default="", help="negative prompt (default: empty)")
    parser.add_argument(
        "--shift", type=float_option(0, inclusive=False), default=None,
        help="scheduler sigma shift (default: the model's: 3 for 4K/8K/10K, by size for 1K and tiny: 3 up to "
        "1024x1024, +0.75 per doubling of the side)",
    )
    parser.add_argument(
        "--num-images", "--num_images", type=int_option(1), default=1, help="images per prompt (default: 1)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default=None,
        help="compute dtype (default: bfloat16 on cuda, float32 on cpu)",
    )
    parser.add_argument(
        "--fp8", action="store_true",
        help="store the DiT and text-encoder weights in float8_e4m3fn (half the memory of bfloat16) and compute in "
        "--dtype, through DiffSynth's VRAM management; images differ slightly from full-precision weights",
    )
    parser.add_argument(
        "--compile", action="store_true",
        help="torch.compile the DiT's blocks and detailer head before generating (pays off over many images; the "
        "first image includes the compile time; on CPU it needs a C++ compiler)",
    )
    parser.add_argument(
        "--out", default="outputs",
        help="a .png path for one image (numbered -000, -001, ... for several) or a directory (default: outputs)",
    )
    parser.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    import contextlib

    from .data.prompts import read_prompts
    from .generate import generate_to_files
    from .pipelines.loading import FP8_WEIGHT_DTYPE, load_pipeline, native_config, resolve_model_files
    from .validation import check_image_size, check_seed, resolve_dtype

    device = check_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    records = [{"prompt": args.prompt}] if args.prompt is not None else read_prompts(args.prompts)
    if args.seed is not None:
        check_seed(args.seed, "--seed", args.num_images)
    if args.out.lower().endswith(".png"):
        check_output_file(args.out, [args.prompts] if args.prompts else [], "--out image")
    else:
        check_output_dir(args.out, "--out folder")
    files = resolve_model_files(args.model)
    native = native_config(files["dit"])
    height = native.default_height if args.height is None else args.height
    width = native.default_width if args.width is None else args.width
    # Before loading; the pipeline checks the size step. Steps, CFG, seed and shift default in the pipeline.
    check_image_size(
        height, width, native.max_pixels, step=1, raise_hint="(the model's cap: from Python, raise pipe.max_pixels)"
    )
    # DiffSynth's loader reports on stdout; keep stdout for the written paths.
    with contextlib.redirect_stdout(sys.stderr):
        weight_dtype = FP8_WEIGHT_DTYPE if args.fp8 else None
        pipe = load_pipeline(files, device=device, torch_dtype=dtype, weight_dtype=weight_dtype)
        if args.compile:
            pipe.compile_pipeline()
        paths = generate_to_files(
            pipe, records, args.out,
            height=height, width=width,
            num_inference_steps=args.steps, cfg_scale=args.cfg, sigma_shift=args.shift,
            cfg_max_sigma=args.cfg_max_sigma, negative_prompt=args.negative, seed=args.seed,
            num_images=args.num_images, model=files["dit"],
        )
    for path in paths:
        print(path)
    return 0


def _add_tiny_init(sub) -> None:
    from .families import DEFAULT_FAMILY, FAMILY_MODULES

    parser = sub.add_parser(
        "tiny-init",
        help="write a random tiny L2P model set (DiT, text encoder, tokenizer) into a new directory",
        description=(
            "Write the tiny L2P model set with seeded random weights: l2p-dit.safetensors, "
            "text_encoder/model.safetensors and tokenizer/. It loads like the released files; its images are "
            "textures, not pictures of the prompt (the trained tiny-world student is the default model). "
            "With --latent, also write a random tiny latent DiT of the family in its stock layout, to try "
            "`l2p convert` on."
        ),
    )
    parser.add_argument("dir", metavar="DIR", help="the directory to create (must not exist or be empty)")
    parser.add_argument("--seed", type=seed_option(), default=0, help="seed of the random weights (default: 0)")
    parser.add_argument(
        "--family", default=DEFAULT_FAMILY, choices=list(FAMILY_MODULES),
        help=f"the source family of the tiny models (default: {DEFAULT_FAMILY})",
    )
    parser.add_argument("--latent", metavar="FILE", help="also write a tiny latent DiT of the family to FILE")
    parser.set_defaults(func=_run_tiny_init)


def _run_tiny_init(args: argparse.Namespace) -> int:
    from .families import get_family, import_class
    from .tiny import write_tiny_latent

    family = get_family(args.family)
    check_output_dir(args.dir, "model folder")
    if args.latent:
        check_output_file(args.latent, [], "--latent file")
    files = import_class(family.tiny_set)(args.dir, seed=args.seed)
    if args.latent:
        write_tiny_latent(family, args.latent, seed=args.seed)
        print(f"latent dit: {args.latent}")
    print(f"dit: {files['dit']}")
    print(f"text_encoder: {' '.join(files['text_encoder'])}")
    print(f"tokenizer: {files['tokenizer']}")
    return 0


def _add_synthesize(sub) -> None:
    parser = sub.add_parser(
        "synthesize",
        help="build the training corpus: images of a prompt list from the source latent model + metadata.csv",
        description=(
            "Generate one image per prompt with the source latent pipeline (default: DiffSynth's ZImagePipeline with "
            "Z-Image-Turbo) into OUTPUT_DIR/images/NNNNNN.png and OUTPUT_DIR/metadata.csv (image,prompt,seed"
            "[,category]); row i uses seed --seed + i, so every image can be regenerated bit-identically. Crash-safe "
            "and resumable: rerun the same command to continue. --num_processes N starts N workers on this machine "
            "through `accelerate launch` (one GPU each with --device cuda); worker R of W takes rows i % W == R, "
            "writes OUTPUT_DIR/shards/rank-R.csv, and the main worker merges the shards at the end. For several "
            "machines run `accelerate launch --num_machines M --machine_rank R ... -m diffsynth_l2p.cli synthesize` "
            "(or torchrun) yourself, without --num_processes and with OUTPUT_DIR on shared storage (or copy the "
            "shards together and run --merge-only)."
        ),
    )
    parser.add_argument("--prompts", metavar="FILE", help=".txt (a prompt per line) or .jsonl (prompt, category)")
    parser.add_argument("--output_dir", "--output-dir", required=True, help="the corpus folder (created or resumed)")
    parser.add_argument(
        "--source_model", "--source-model", nargs="+", default=[], metavar="PATH",
        help="a local Z-Image-Turbo folder, or model files/folders for --pipeline_class; default: Z-Image-Turbo from "
        "the hub (downloaded by DiffSynth)",
    )
    parser.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer folder (default: from the model)")
    parser.add_argument(
        "--pipeline_class", "--pipeline-class", default=None, metavar="MODULE.CLASS",
        help="DiffSynth latent pipeline class (default: diffsynth.pipelines.z_image.ZImagePipeline)",
    )
    parser.add_argument(
        "--source_factory", "--source-factory", default=None, metavar="MODULE:FUNCTION",
        help="a callable factory(source_model=[...], device=..., torch_dtype=...) returning the source pipeline",
    )
    parser.add_argument("--height", type=int_option(1), default=1024, help="image height (default: 1024)")
    parser.add_argument("--width", type=int_option(1), default=1024, help="image width (default: 1024)")
    parser.add_argument(
        "--num_inference_steps", "--steps", type=int_option(1), default=8, help="denoising steps (default: 8, Turbo)"
    )
    parser.add_argument("--cfg_scale", "--cfg", type=float_option(0), default=1.0, help="CFG scale (default: 1.0)")
    parser.add_argument(
        "--sigma_shift", "--shift", type=float_option(0, inclusive=False), default=None, help="scheduler shift"
    )
    parser.add_argument("--negative_prompt", default="", help="negative prompt (default: empty)")
    parser.add_argument("--seed", type=seed_option(), default=0, help="base seed; row i uses seed + i (default: 0)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
        help="model dtype (default: auto = bfloat16 on cuda, float32 on cpu, where bfloat16 is often emulated)",
    )
    parser.add_argument(
        "--num_processes", "--num-processes", type=int_option(1), default=1,
        help="worker processes on this machine, started with `accelerate launch` (default: 1)",
    )
    parser.add_argument(
        "--merge-only", "--merge_only", action="store_true",
        help="only rebuild OUTPUT_DIR/metadata.csv from OUTPUT_DIR/shards/*.csv (e.g. after copying shards together)",
    )
    parser.set_defaults(func=_run_synthesize)


def _synthesis_job(args: argparse.Namespace) -> "SynthesisJob":
    """The ``SynthesisJob`` that ``l2p synthesize``'s options describe."""
    from .data.synthesize import DEFAULT_PIPELINE_CLASS, SourceSpec, SynthesisJob, SynthesisSettings
    from .validation import resolve_dtype

    if not args.prompts:
        raise ValueError("--prompts is required (unless --merge-only)")
    if args.source_factory and args.pipeline_class:
        raise ValueError("give either --source_factory or --pipeline_class, not both")
    device = check_device(args.device)
    source = SourceSpec(
        source_model=tuple(args.source_model),
        pipeline_class=args.pipeline_class or DEFAULT_PIPELINE_CLASS,
        factory=args.source_factory,
        tokenizer=args.tokenizer,
        device=device,
        torch_dtype=str(resolve_dtype(args.dtype, device)).removeprefix("torch."),
    )
    settings = SynthesisSettings(
        height=args.height, width=args.width, num_inference_steps=args.num_inference_steps,
        cfg_scale=args.cfg_scale, sigma_shift=args.sigma_shift, negative_prompt=args.negative_prompt,
        base_seed=args.seed,
    )
    return SynthesisJob(args.prompts, args.output_dir, source, settings)


def _run_synthesize(args: argparse.Namespace) -> int:
    from .data.synthesize import launch_job, merge_shards

    if args.merge_only:
        print(f"metadata.csv: {merge_shards(args.output_dir)} rows")
        return 0
    return launch_job(_synthesis_job(args), args.num_processes)


def _add_prompts(sub) -> None:
    parser = sub.add_parser(
        "prompts",
        help="prompt lists for synthesize: expand the taxonomy, filter, stats",
        description=(
            "expand: write prompts for the paper's taxonomy (4 classes, 17 sub-classes) from built-in templates, or "
            "with a local transformers causal LM (--llm PATH) and per-class rules; records {id, major-class, "
            "sub-class, prompt}. filter: keep well-formed, de-duplicated prompts in a length window. stats: counts "
            "per category and a length histogram PNG."
        ),
    )
    verbs = parser.add_subparsers(dest="prompts_command", metavar="ACTION")
    verbs.required = True

    expand = verbs.add_parser("expand", help="write prompts for every sub-class (templates or a local LLM)")
    expand.add_argument("--out", required=True, help="output .jsonl (full records) or .txt (prompts only)")
    expand.add_argument(
        "--per_sub_class", "--per-sub-class", type=int_option(1), default=20, help="prompts per sub-class (20)"
    )
    expand.add_argument("--seed", type=seed_option(), default=0, help="random seed (default: 0)")
    expand.add_argument("--llm", default=None, metavar="DIR", help="local causal LM folder (default: templates)")
    expand.add_argument("--device", default="cpu", help="LLM device (default: cpu)")
    expand.add_argument("--max_new_tokens", type=int_option(1), default=160, help="LLM reply limit in tokens (160)")
    expand.add_argument(
        "--temperature", type=float_option(0, inclusive=False), default=0.8, help="LLM sampling temperature (0.8)"
    )
    expand.add_argument("--batch_size", type=int_option(1), default=8, help="LLM requests per batch (8)")
    expand.set_defaults(func=_run_prompts_expand)

    filter_ = verbs.add_parser("filter", help="length window, format checks, normalized de-duplication")
    filter_.add_argument("input", metavar="FILE", help="prompt file (.jsonl or .txt)")
    filter_.add_argument("--out", required=True, help="output .jsonl or .txt")
    filter_.add_argument("--min_chars", "--min-chars", type=int_option(0), default=100, help="shortest prompt kept")
    filter_.add_argument("--max_chars", "--max-chars", type=int_option(1), default=500, help="longest prompt kept")
    filter_.set_defaults(func=_run_prompts_filter)

    stats = verbs.add_parser("stats", help="counts per category, length statistics and a histogram PNG")
    stats.add_argument("input", metavar="FILE", help="prompt file (.jsonl or .txt)")
    stats.add_argument("--histogram", default=None, metavar="PNG", help="write the length histogram here")
    stats.add_argument("--bins", type=int_option(1), default=20, help="histogram bins (default: 20)")
    stats.set_defaults(func=_run_prompts_stats)


def _run_prompts_expand(args: argparse.Namespace) -> int:
    from .data.prompts import expand_from_templates, expand_with_llm, write_prompts

    check_output_file(args.out, [args.llm] if args.llm else [])
    if args.llm:
        records = expand_with_llm(
            args.llm, args.per_sub_class, seed=args.seed, device=check_device(args.device),
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, batch_size=args.batch_size,
        )
    else:
        records = expand_from_templates(args.per_sub_class, seed=args.seed)
    write_prompts(records, args.out)
    print(f"{len(records)} prompts -> {args.out}")
    return 0


def _run_prompts_filter(args: argparse.Namespace) -> int:
    from .data.prompts import filter_prompts, read_prompts, write_prompts

    check_output_file(args.out, [args.input])
    if args.min_chars > args.max_chars:
        raise ValueError(f"--min_chars ({args.min_chars}) is above --max_chars ({args.max_chars}); swap them.")
    records = read_prompts(args.input)
    result = filter_prompts(records, args.min_chars, args.max_chars)
    write_prompts(result.kept, args.out)
    print(f"kept {len(result.kept)} of {len(records)} prompts -> {args.out}")
    for reason, count in result.rejected.most_common():
        print(f"  rejected {count}: {reason}")
    return 0


def _run_prompts_stats(args: argparse.Namespace) -> int:
    from .data.prompts import draw_length_histogram, prompt_stats, read_prompts

    if args.histogram:
        check_output_file(args.histogram, [args.input], "histogram")
    records = read_prompts(args.input)
    stats = prompt_stats(records)
    length = stats["length"]
    print(f"{stats['prompts']} prompts; length min {length['min']}, median {length['median']}, "
          f"mean {length['mean']}, max {length['max']} characters")
    for title in ("major_classes", "categories"):
        print(title.replace("_", " ") + ":")
        for name, count in stats[title].items():
            print(f"  {count:6d}  {name}")
    if args.histogram:
        draw_length_histogram([len(record["prompt"]) for record in records], args.histogram, args.bins)
        print(f"histogram -> {args.histogram}")
    return 0


def _add_demo(sub) -> None:
    from .demo.server import add_demo_arguments

    parser = sub.add_parser(
        "demo",
        help="serve the Gradio demo (same as python app.py): http://127.0.0.1:23231 by default",
        description=(
            "Serve the Gradio demo on a pool of workers, one pipeline each: every GPU (least used first) or the CPU, "
            "--workers-per-device per device. A request runs on an idle worker or waits in a bounded FIFO queue. "
            "Binds 127.0.0.1:23231 by default; --host 0.0.0.0 exposes it, --share opens a public link."
        ),
    )
    add_demo_arguments(parser)
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo.server import run

    return run(args)


def _add_train(sub) -> None:
    from .training.arguments import add_train_arguments

    parser = sub.add_parser(
        "train",
        help="train an L2P DiT's shallow layers (or LoRA) on images + metadata.csv; --dry-run for memory",
        description=(
            "Train with accelerate (run it under `accelerate launch` for several processes / DeepSpeed). The preset "
            "says what is trained; checkpoints step-N.safetensors hold only those tensors (merge them into the pixel "
            "init with `l2p merge` / merge_weights.py); --resume latest continues an interrupted run exactly."
        ),
    )
    add_train_arguments(parser)
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .training.arguments import run_from_args

    run_from_args(args)
    return 0


def _add_tiny_world(sub) -> None:
    parser = sub.add_parser(
        "tiny-world",
        help="the CPU-scale shapes world: reproduce the L2P chain from scratch, score models, run the ablations",
        description=(
            "The shapes world is this project's CPU-sized reproduction of L2P: a latent teacher that DiffSynth's "
            "stock Z-Image pipeline runs, an L2P student made from it with synthesize/convert/train/merge, and "
            "ShapeEval, a GenEval-style detector score on held-out colour/shape pairs (see docs/tiny-world.md)."
        ),
    )
    verbs = parser.add_subparsers(dest="tiny_world_command", metavar="VERB")
    verbs.required = True
    reproduce = verbs.add_parser(
        "reproduce",
        help="teacher, corpus, conversion, student training, merge, evaluation and report, seeded and resumable",
        description=(
            "Run the whole tiny-world chain into OUT_DIR (teacher/, student/, report/, work/). Rerun the same "
            "command after a kill to continue where it stopped. About 57 minutes on 2 CPU cores."
        ),
    )
    reproduce.add_argument("out_dir", help="output directory (created; reuse it to resume)")
    reproduce.add_argument("--threads", type=int_option(1), default=2, help="torch threads (default: 2)")
    reproduce.add_argument(
        "--smoke", action="store_true", help="a minutes-long run with tiny budgets (checks the chain, not quality)"
    )
    reproduce.add_argument(
        "--ship", action="store_true", help="maintainers: make this run the package's shipped tiny-world weights"
    )
    reproduce.set_defaults(func=_run_tiny_world_reproduce)
    evaluate = verbs.add_parser(
        "eval",
        help="ShapeEval on the held-out prompts: the shipped teacher and student, or one model directory",
    )
    evaluate.add_argument("--model", default=None, help="a teacher or L2P model directory (default: both shipped)")
    evaluate.add_argument("--seeds", type=int_option(1), default=4, help="images per prompt (default: 4)")
    evaluate.add_argument("--steps", type=int_option(1), default=20, help="sampling steps (default: 20)")
    evaluate.add_argument("--cfg", type=float_option(0), default=4.0, help="CFG scale (default: 4.0, as shipped)")
    evaluate.add_argument(
        "--cfg-max-sigma", type=float_option(0, inclusive=False), default=0.8,
        help="guide only the steps whose sigma is at most this (default: 0.8, as shipped; 1 guides every step)",
    )
    evaluate.add_argument("--threads", type=int_option(1), default=2, help="torch threads (default: 2)")
    evaluate.set_defaults(func=_run_tiny_world_eval)
    ablate = verbs.add_parser(
        "ablate",
        help="the paper's two ablations: teacher vs real training images; release preset vs full vs LoRA",
    )
    ablate.add_argument("out_dir", help="output directory for the ablation students (reuse it to resume)")
    ablate.add_argument("--teacher", default=None, help="teacher directory (default: the shipped teacher)")
    ablate.add_argument("--train-steps", type=int_option(1), default=None, help="student steps (default: recipe's)")
    ablate.add_argument("--threads", type=int_option(1), default=2, help="torch threads (default: 2)")
    ablate.set_defaults(func=_run_tiny_world_ablate)


def _run_tiny_world_reproduce(args: argparse.Namespace) -> int:
    import torch

    from .tiny_world.reproduce import SMOKE_RECIPE, Recipe, format_report, reproduce, ship

    torch.set_num_threads(args.threads)
    summary = reproduce(args.out_dir, SMOKE_RECIPE if args.smoke else Recipe())
    print(format_report(summary["shape_eval"]))
    print(f"Total {summary['total_seconds']:.0f} s; report in {args.out_dir}/report/")
    if args.ship:
        shipped = ship(args.out_dir)
        gate = shipped["gate"]
        print(f"Shipped; quality gate: overall {gate['overall']:.3f}, color {gate['color']:.3f}.")
    return 0


def _run_tiny_world_eval(args: argparse.Namespace) -> int:
    import torch

    from .tiny_world.reproduce import EvalSettings, evaluate_directories, format_report

    torch.set_num_threads(args.threads)
    settings = EvalSettings(
        seeds=tuple(range(args.seeds)), steps=args.steps, cfg_scale=args.cfg, cfg_max_sigma=args.cfg_max_sigma
    )
    reports, seconds = evaluate_directories(args.model, settings)
    print(format_report(reports))
    print("Seconds: " + ", ".join(f"{name} {value:.0f}" for name, value in seconds.items()))
    return 0


def _run_tiny_world_ablate(args: argparse.Namespace) -> int:
    import torch

    from .tiny_world.reproduce import ablations, format_report

    torch.set_num_threads(args.threads)
    print(format_report(ablations(args.out_dir, args.teacher, args.train_steps)))
    return 0


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line naming the help to read (sub-parsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message.rstrip('.')} (see {self.prog} --help)\n")


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on ``parser`` and every sub-parser, so it may follow any verb."""
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS,
        help=f"show the full traceback of an error (or set {DEBUG_ENV}=1)",
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug_flag(child)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="l2p",
        description=(
            "L2P pixel-space Z-Image (and Qwen-Image, FLUX.2) for DiffSynth-Studio: generate, convert, train, merge, "
            "inspect, demo."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_generate(sub)
    _add_tiny_init(sub)
    _add_convert(sub)
    _add_merge(sub)
    _add_inspect(sub)
    _add_synthesize(sub)
    _add_prompts(sub)
    _add_demo(sub)
    _add_train(sub)
    _add_tiny_world(sub)
    _add_debug_flag(parser)
    return parser


def _error_line(command: str, error: BaseException) -> str:
    """One line for ``error``: the message (newlines folded); unexpected kinds also name their type."""
    message = " ".join(str(error).split()) or type(error).__name__
    if not isinstance(error, _EXPECTED_ERRORS):
        message = f"{type(error).__name__}: {message} (rerun with --debug for the traceback)"
    return f"l2p {command}: error: {message}"


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM unwinds like an exception, so atomic writes in flight remove their temporary files."""
    raise SystemExit(128 + signum)


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set signal handlers
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"l2p {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        print(_error_line(args.command, error), file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
