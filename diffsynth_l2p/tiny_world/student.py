"""The tiny-world L2P student: the L2P chain run on the shapes world with the project's own tools.

1. training prompts sampled from the shapes grammar (held-out color/shape pairs excluded);
2. a corpus made by ``l2p synthesize``'s library with the teacher (DiffSynth's stock ``ZImagePipeline``), or, for
   the paper's data ablation, real shapes-world renders of the same prompts;
3. ``l2p convert`` of the teacher DiT (patch 2 on 8x8 latents = 4x4 tokens) into the tiny L2P config (patch 16 on
   64x64 pixels = the same 4x4 token grid);
4. ``l2p train`` on the corpus, then ``l2p merge`` of the trained tensors into the init.

Every step keeps its product in a work directory, so a killed run continues where it stopped.  The resulting model
set is laid out like ``build_tiny_l2p``'s (``l2p-dit.safetensors``, ``text_encoder/``, ``tokenizer/``), so
``load_pipeline(directory)`` and ``l2p generate --model`` take it.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from ..atomic import atomic_directory
from ..convert import convert_latent_to_pixel
from ..data.prompts import write_prompts
from ..data.synthesize import (
    IMAGES_DIR,
    ShardWriter,
    SourceSpec,
    SynthesisJob,
    SynthesisSettings,
    launch_job,
    merge_shards,
    metadata_columns,
    plan_rows,
    shard_path,
)
from ..merge import merge_checkpoints
from ..model_set import DIT_FILE, TEXT_ENCODER_DIR, TOKENIZER_DIR
from ..training.trainer import TrainConfig, train
from .shapes import IMAGE_SIZE, parse_caption, render_scene, sample_scene
from .teacher import DIT_FILE as TEACHER_DIT_FILE
from .teacher import load_teacher, text_encoder_home

TEACHER_FACTORY = f"{__name__}:teacher_source"
DATA_SOURCES = ("teacher", "real")


@dataclass(frozen=True)
class StudentRecipe:
    """Corpus, conversion and training settings of the student (the defaults are the shipped student's).

    ``preset`` is a training preset of ``l2p train``.  The shipped student trains every parameter (``full``): at
    this depth it scored 0.432 against 0.416 for the release recipe (``shallow:1``: freeze the two middle blocks) with
    the earlier shipped pair, and 0.686 against 0.137 with this recipe (a single, not yet checked run); ``l2p
    tiny-world ablate`` compares them (docs/tiny-world.md, "The paper's two ablations at tiny scale").
    The teacher draws the corpus at ``cfg_scale`` 1.5, where its shapes are cleanest: a student of CFG-4 images, itself
    sampled at CFG 4, compounds the guidance and pinches every shape (docs/tiny-world.md).
    ``caption_dropout`` trains that share of the images on the empty caption (``l2p train --caption_dropout``), so the
    student's own unconditional prediction, which guidance extrapolates from, is trained too.
    ``shift`` is the training schedule's shift (``l2p train --shift``): 1 samples noise levels uniformly and trains
    the detailer head 2.6 times as often below sigma 0.2 as the release's 3, which removes most of the speckle
    a student otherwise leaves in flat colour (docs/tiny-world.md, "The student's speckle").
    ``learning_rate`` peaks at 1e-3 and ``lr_scheduler`` decays it to zero over ``train_steps`` (``l2p train
    --lr_scheduler``): at a constant 5e-4 the student's score swung between 0.23 and 0.53 from one checkpoint to the
    next, and decayed from 5e-4 it settled at 0.315 (docs/tiny-world.md, "A decayed learning rate for the student").
    """

    corpus_images: int = 1500
    data: str = "teacher"
    synthesis_steps: int = 20
    cfg_scale: float = 1.5
    train_steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_scheduler: str = "cosine"
    preset: str = "full"
    caption_dropout: float = 0.1
    shift: float = 1.0
    synthesis_processes: int = 2
    seed: int = 0


def training_records(count: int, seed: int = 0) -> List[Dict[str, str]]:
    """``count`` prompt records ``{"prompt", "category"}`` sampled like the teacher's data (no held-out pair)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    return [{"prompt": scene.caption, "category": scene.category} for scene in scenes]


def teacher_source(source_model: Sequence[str] = (), device: str = "cpu", torch_dtype: Any = None) -> Any:
    """``--source_factory`` of ``l2p synthesize`` for the tiny-world teacher (a directory, default: the shipped one)."""
    if len(source_model) > 1:
        raise ValueError("The tiny-world teacher is one directory; pass at most one --source_model.")
    return load_teacher(source_model[0] if source_model else None, device=device, torch_dtype=torch_dtype)


def render_corpus(records: List[Dict[str, str]], corpus: Path, seed: int) -> None:
    """Real shapes-world renders of ``records`` in the corpus layout of ``l2p synthesize`` (the data ablation)."""
    with atomic_directory(corpus, "the real-image corpus") as staging:
        (staging / IMAGES_DIR).mkdir()
        rows = plan_rows(records, seed)
        with ShardWriter(shard_path(str(staging), 0), metadata_columns(with_category=True)) as shard:
            for row in rows:
                image = render_scene(parse_caption(row.prompt), np.random.default_rng(row.seed))
                image.save(staging / row.image)
                shard.append(row)
        merge_shards(str(staging))


def build_corpus(corpus: Path, teacher_dir: Path, recipe: StudentRecipe) -> Path:
    """The student's training corpus in ``corpus`` (resumable): teacher images or real renders of the same prompts.

    The prompts are kept beside it, in ``<corpus>.prompts.jsonl``.
    """
    prompt_file = corpus.with_name(f"{corpus.name}.prompts.jsonl")
    records = training_records(recipe.corpus_images, recipe.seed)
    if not prompt_file.exists():
        write_prompts(records, str(prompt_file))
    if recipe.data == "real":
        if not (corpus / "metadata.csv").exists():
            render_corpus(records, corpus, recipe.seed)
        return corpus
    settings = SynthesisSettings(
        height=IMAGE_SIZE,
        width=IMAGE_SIZE,
        num_inference_steps=recipe.synthesis_steps,
        cfg_scale=recipe.cfg_scale,
        base_seed=recipe.seed,
    )
    source = SourceSpec(source_model=(str(teacher_dir),), factory=TEACHER_FACTORY, torch_dtype="float32")
    job = SynthesisJob(str(prompt_file), str(corpus), source, settings)
    status = launch_job(job, recipe.synthesis_processes)
    if status:
        raise RuntimeError(
            f"Teacher synthesis into {corpus} did not finish (exit status {status}; its summary or error is printed "
            "above); rerun to retry the missing rows."
        )
    return corpus


def train_student(
    out_dir: Union[str, os.PathLike],
    work_dir: Union[str, os.PathLike],
    teacher_dir: Union[str, os.PathLike],
    recipe: StudentRecipe = StudentRecipe(),
    corpus: Union[str, os.PathLike, None] = None,
) -> Dict[str, Any]:
    """Corpus, ``convert``, ``train`` and ``merge``: write the student model set to ``out_dir`` (atomically).

    ``work_dir`` keeps the converted init, the training run and, unless ``corpus`` names a (shared) corpus folder,
    the corpus.  Returns the training summary of ``l2p train``.
    """
    if recipe.data not in DATA_SOURCES:
        raise ValueError(f"Unknown student data {recipe.data!r}; use one of {', '.join(DATA_SOURCES)}.")
    out_dir, work_dir, teacher_dir = Path(out_dir), Path(work_dir), Path(teacher_dir)
    text_dir = text_encoder_home(teacher_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    corpus = build_corpus(Path(corpus) if corpus is not None else work_dir / "corpus", teacher_dir, recipe)

    init = work_dir / "init.safetensors"
    if not init.exists():
        convert_latent_to_pixel(str(teacher_dir / TEACHER_DIT_FILE), init, config="tiny", seed=recipe.seed)

    run_dir = work_dir / "train"
    config = TrainConfig(
        dataset=str(corpus),
        output_path=str(run_dir),
        model={
            "dit": str(init),
            "text_encoder": [str(text_dir / TEXT_ENCODER_DIR / "model.safetensors")],
            "tokenizer": str(text_dir / TOKENIZER_DIR),
        },
        preset=recipe.preset,
        learning_rate=recipe.learning_rate,
        lr_scheduler=recipe.lr_scheduler,
        max_steps=recipe.train_steps,
        batch_size=recipe.batch_size,
        save_steps=max(1, recipe.train_steps // 8),
        max_pixels=IMAGE_SIZE * IMAGE_SIZE,
        noise="fresh",
        shift=recipe.shift,
        seed=recipe.seed,
        use_gradient_checkpointing=False,
        cache_text_embeddings=True,
        caption_dropout=recipe.caption_dropout,
        mixed_precision="no",  # fp32: CPUs without bf16 units run bf16 several times slower
        resume="latest" if (run_dir / "state").exists() else None,
    )
    training = train(config)
    with atomic_directory(out_dir, "the student") as staging:
        merge_checkpoints(training["checkpoint"], str(init), staging / DIT_FILE)
        shutil.copytree(text_dir / TEXT_ENCODER_DIR, staging / TEXT_ENCODER_DIR)
        shutil.copytree(text_dir / TOKENIZER_DIR, staging / TOKENIZER_DIR)
    return training
