"""The tiny-world L2P student: the whole L2P chain run on the shapes world with the project's own tools.

1. training prompts sampled from the shapes grammar (held-out color/shape pairs excluded);
2. a teacher corpus made by ``l2p synthesize``'s library (:mod:`diffsynth_l2p.data.synthesize`) with the teacher
   loaded by :func:`teacher_source` (DiffSynth's stock ``ZImagePipeline``);
3. ``l2p convert`` of the teacher DiT (patch 2 on 8x8 latents = 4x4 tokens) into the tiny L2P config (patch 16 on
   64x64 pixels = the same 4x4 token grid);
4. ``l2p train`` on the corpus, then ``l2p merge`` of the trained tensors into the init;
5. ShapeEval of real images, the teacher, the student and the random tiny model on the held-out prompts.

The resulting model set is laid out like ``build_tiny_l2p``'s output (``l2p-dit.safetensors``,
``text_encoder/``, ``tokenizer/``), so ``load_pipeline(directory)`` and ``l2p generate --model`` take it.
"""

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ..atomic import atomic_directory
from ..tiny import DIT_FILE, TEXT_ENCODER_DIR, TOKENIZER_DIR
from .shapes import sample_scene
from .teacher import ASSETS_DIR as TEACHER_DIR
from .teacher import DIT_FILE as TEACHER_DIT_FILE
from .teacher import load_teacher

ASSETS_DIR = Path(__file__).parent / "assets" / "student"
SUMMARY_FILE = "student.json"
PROMPTS_FILE, CORPUS_DIR, INIT_FILE, TRAIN_DIR = "prompts.jsonl", "corpus", "init.safetensors", "train"
TEACHER_FACTORY = f"{__name__}:teacher_source"


def training_records(count: int, seed: int = 0) -> List[Dict[str, str]]:
    """``count`` prompt records ``{"prompt", "category"}`` sampled like the teacher's data (no held-out pair)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    return [{"prompt": scene.caption, "category": scene.category} for scene in scenes]


def teacher_source(source_model: Sequence[str] = (), device: str = "cpu", torch_dtype: Any = None) -> Any:
    """``--source_factory`` of ``l2p synthesize`` for the tiny-world teacher (a directory, default: the shipped one).

    The teacher always runs in bf16 (the stock Z-Image time embedder requires it); ``torch_dtype`` is ignored.
    """
    if len(source_model) > 1:
        raise ValueError("The tiny-world teacher is one directory; pass at most one --source_model.")
    return load_teacher(source_model[0] if source_model else None, device=device)


def _cast_file(path: Path, dtype: torch.dtype) -> None:
    """Rewrite a safetensors file with every floating tensor in ``dtype`` (atomically)."""
    from safetensors.torch import load_file, save_file

    from ..atomic import atomic_path

    tensors = load_file(path)
    state_dict = {key: value.to(dtype) if value.is_floating_point() else value for key, value in tensors.items()}
    with atomic_path(path) as temp_path:
        save_file(state_dict, temp_path)


def reproduce_student(
    out_dir: Union[str, os.PathLike],
    work_dir: Union[str, os.PathLike],
    num_images: int = 1200,
    synthesis_steps: int = 10,
    cfg_scale: float = 2.0,
    train_steps: int = 400,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    preset: str = "release",
    eval_seeds: Sequence[int] = (0, 1),
    eval_steps: int = 20,
    teacher_dir: Union[str, os.PathLike, None] = None,
    save_dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Dict[str, Any]:
    """Run the L2P chain on the tiny world; write the student model set to ``out_dir`` and return the summary.

    ``work_dir`` keeps the intermediate products (prompts, corpus, init, training run; resumable synthesis).
    The summary (also ``student.json`` in ``out_dir``) holds the corpus size, training steps and seconds, and
    the ShapeEval reports of real images, teacher, student and the random tiny model, with retention
    = student / teacher overall accuracy.
    """
    from ..convert import convert_latent_to_pixel
    from ..data.prompts import write_prompts
    from ..data.synthesize import SourceSpec, SynthesisJob, SynthesisSettings, merge_shards, run_job
    from ..merge import merge_checkpoints
    from ..pipelines.loading import load_pipeline
    from ..tiny import build_tiny_l2p
    from ..training.trainer import TrainConfig, train
    from .shape_eval import evaluate_pipeline, real_images_report
    from .shapes import IMAGE_SIZE, evaluation_scenes

    out_dir, work_dir = Path(out_dir), Path(work_dir)
    teacher_dir = Path(teacher_dir) if teacher_dir is not None else TEACHER_DIR
    work_dir.mkdir(parents=True, exist_ok=True)
    seconds: Dict[str, float] = {}
    with atomic_directory(out_dir, "the student") as staging:
        start = time.perf_counter()
        prompt_file = work_dir / PROMPTS_FILE
        write_prompts(training_records(num_images, seed), str(prompt_file))
        settings = SynthesisSettings(
            height=IMAGE_SIZE,
            width=IMAGE_SIZE,
            num_inference_steps=synthesis_steps,
            cfg_scale=cfg_scale,
            base_seed=seed,
        )
        source = SourceSpec(source_model=(str(teacher_dir),), factory=TEACHER_FACTORY)
        corpus = work_dir / CORPUS_DIR
        synthesis = run_job(SynthesisJob(str(prompt_file), str(corpus), source, settings))
        if synthesis.failed:
            raise RuntimeError(f"Teacher synthesis failed on some rows:\n{synthesis}")
        merge_shards(str(corpus))
        seconds["synthesis"] = time.perf_counter() - start

        init = work_dir / INIT_FILE
        if not init.exists():
            convert_latent_to_pixel(str(teacher_dir / TEACHER_DIT_FILE), init, config="tiny", seed=seed)

        start = time.perf_counter()
        model_files = {
            "dit": str(init),
            "text_encoder": [str(teacher_dir / TEXT_ENCODER_DIR / "model.safetensors")],
            "tokenizer": str(teacher_dir / TOKENIZER_DIR),
        }
        config = TrainConfig(
            dataset=str(corpus),
            output_path=str(work_dir / TRAIN_DIR),
            model=model_files,
            preset=preset,
            learning_rate=learning_rate,
            max_steps=train_steps,
            batch_size=batch_size,
            save_steps=max(1, train_steps // 4),
            max_pixels=IMAGE_SIZE * IMAGE_SIZE,
            noise="fresh",
            seed=seed,
            use_gradient_checkpointing=False,
            cache_text_embeddings=True,
            resume="latest" if (work_dir / TRAIN_DIR / "state").exists() else None,
        )
        training = train(config)
        seconds["training"] = time.perf_counter() - start

        merge_checkpoints(training["checkpoint"], str(init), staging / DIT_FILE)
        _cast_file(staging / DIT_FILE, save_dtype)
        shutil.copytree(teacher_dir / TEXT_ENCODER_DIR, staging / TEXT_ENCODER_DIR)
        shutil.copytree(teacher_dir / TOKENIZER_DIR, staging / TOKENIZER_DIR)

        start = time.perf_counter()
        scenes, seeds = evaluation_scenes(), tuple(eval_seeds)
        random_dir = work_dir / "random-tiny"
        if not (random_dir / DIT_FILE).exists():
            build_tiny_l2p(random_dir, seed=0)
        shape_eval = {
            "real": real_images_report(scenes, repeats=len(seeds)),
            "teacher": evaluate_pipeline(load_teacher(teacher_dir), scenes, seeds, eval_steps, cfg_scale),
            "student": evaluate_pipeline(load_pipeline(str(staging)), scenes, seeds, eval_steps, cfg_scale),
            "random": evaluate_pipeline(load_pipeline(str(random_dir)), scenes, seeds, eval_steps, cfg_scale),
        }
        seconds["shape_eval"] = time.perf_counter() - start
        teacher_overall = shape_eval["teacher"]["overall"]
        summary = {
            "seed": seed,
            "corpus_images": num_images,
            "synthesis_steps": synthesis_steps,
            "cfg_scale": cfg_scale,
            "train_steps": training["steps"],
            "train_steps_this_run": training["steps_this_run"],
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "preset": preset,
            "final_loss": training["mean_loss_last_10"],
            "eval_prompts": len(scenes),
            "eval_seeds": list(seeds),
            "eval_steps": eval_steps,
            "shape_eval": shape_eval,
            "retention": shape_eval["student"]["overall"] / teacher_overall if teacher_overall else None,
            "seconds": {key: round(value, 1) for key, value in seconds.items()},
            "torch_threads": torch.get_num_threads(),
            "bytes": {path.name: path.stat().st_size for path in sorted(staging.rglob("*.safetensors"))},
        }
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def format_summary(summary: Dict[str, Any]) -> str:
    """The ShapeEval table of a :func:`reproduce_student` summary, one row per model."""
    columns = ["single", "position", "count", "relation", "overall", "color"]
    lines = [f"{'':10}" + "".join(f"{column:>10}" for column in columns)]
    for name, report in summary["shape_eval"].items():
        lines.append(f"{name:10}" + "".join(f"{report.get(column, float('nan')):10.3f}" for column in columns))
    if summary["retention"] is not None:
        lines.append(f"retention (student / teacher overall): {summary['retention']:.3f}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m diffsynth_l2p.tiny_world.student OUT_DIR WORK_DIR [--images N] [--steps N] [--threads N]``."""
    import argparse

    parser = argparse.ArgumentParser(description=reproduce_student.__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("work_dir")
    parser.add_argument("--images", type=int, default=1200, help="teacher corpus size")
    parser.add_argument("--synthesis_steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=400, help="student training steps")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--preset", default="release")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    summary = reproduce_student(
        args.out_dir,
        args.work_dir,
        num_images=args.images,
        synthesis_steps=args.synthesis_steps,
        train_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        preset=args.preset,
    )
    print(format_summary(summary))


if __name__ == "__main__":
    main()
