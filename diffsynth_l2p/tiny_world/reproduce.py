"""``l2p tiny-world reproduce``: the whole tiny-world L2P chain from scratch in one directory, resumable.

Layout of the output directory:

- ``teacher/``: the latent teacher (DiffSynth's stock ``ZImagePipeline`` runs it);
- ``student/``: the L2P student made from it with ``synthesize`` -> ``convert`` -> ``train`` -> ``merge``;
- ``report/``: ``summary.json`` (recipes, ShapeEval of real images, teacher and student, retention, time and
  machine load per stage), ``report.md`` and ``grid.png`` (prompts x seeds for real, teacher and student);
- ``work/``: every intermediate product; a rerun after a kill continues from it.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_open
from ..model_set import DEFAULT_MODEL_DIR, DIT_FILE
from ..pipelines.loading import load_pipeline
from .shape_eval import evaluate, evaluate_pipeline
from .shapes import CATEGORIES, HELD_OUT_PAIRS, IMAGE_SIZE, Scene, evaluation_scenes, render_scene
from .student import StudentRecipe, train_student
from .teacher import ASSETS_DIR as TEACHER_ASSETS_DIR
from .teacher import DIT_FILE as TEACHER_DIT_FILE
from .teacher import SUMMARY_FILE as TEACHER_SUMMARY_FILE
from .teacher import VAE_DECODER_FILE, VAE_ENCODER_FILE, TeacherRecipe, load_teacher, train_teacher

TIMING_FILE = "timing.json"
SUMMARY_FILE = "summary.json"
GRID_PROMPTS_PER_CATEGORY = 3
TINY_RELEASE_PRESET = "shallow:1"  # the release recipe at the tiny depth: freeze the two middle blocks
GATE_PER_CATEGORY, GATE_SEEDS, GATE_METRICS = 3, (0, 1), ("overall", "color")


@dataclass(frozen=True)
class EvalSettings:
    """How ShapeEval samples: seeds per held-out prompt, sampling steps, CFG scale and the largest guided sigma.

    Guidance stops above sigma 0.8 (the tiny models' pipeline default): at the highest noise levels it made the
    teachers draw more objects than a count asks for (docs/tiny-world.md, "Guidance in a limited interval").
    """

    seeds: Tuple[int, ...] = (0, 1, 2, 3)
    steps: int = 20
    cfg_scale: float = 4.0
    cfg_max_sigma: Optional[float] = 0.8

    def score(
        self, pipe: Any, scenes: Optional[List[Scene]] = None, seeds: Optional[Tuple[int, ...]] = None
    ) -> Tuple[Dict[str, float], List[np.ndarray]]:
        """:func:`evaluate_pipeline` of ``pipe`` with these settings (default: held-out prompts, these seeds)."""
        seeds = self.seeds if seeds is None else seeds
        return evaluate_pipeline(pipe, scenes, seeds, self.steps, self.cfg_scale, cfg_max_sigma=self.cfg_max_sigma)


@dataclass(frozen=True)
class Recipe:
    """The whole reproduction: teacher, student and evaluation settings."""

    teacher: TeacherRecipe = field(default_factory=TeacherRecipe)
    student: StudentRecipe = field(default_factory=StudentRecipe)
    evaluation: EvalSettings = field(default_factory=EvalSettings)


# Tiny budgets: minutes on a CPU, for CI to check that the chain runs (not a quality gate).
SMOKE_RECIPE = Recipe(
    teacher=TeacherRecipe(
        dataset_size=256,
        ae_steps=20,
        ae_batch_size=8,
        ae_max_final_loss=None,
        decoder_steps=10,
        dit_steps=20,
        dit_batch_size=8,
    ),
    student=StudentRecipe(corpus_images=24, synthesis_steps=2, train_steps=4, batch_size=4, synthesis_processes=1),
    evaluation=EvalSettings(seeds=(0,), steps=2),
)


@contextmanager
def timed_stage(timing_file: Path, stage: str) -> Iterator[None]:
    """Add the stage's wall time and the machine's 1-minute load average (start, end) to ``timing_file``."""
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    try:
        yield
    finally:
        timing = json.loads(timing_file.read_text(encoding="utf-8")) if timing_file.exists() else {}
        runs = timing.setdefault(stage, [])
        runs.append(
            {
                "seconds": round(time.perf_counter() - start, 1),
                "load_start": round(load_start, 2),
                "load_end": round(os.getloadavg()[0], 2),
                "torch_threads": torch.get_num_threads(),
            }
        )
        with atomic_open(timing_file) as file:
            json.dump(timing, file, indent=2)


def score_models(
    models: Dict[str, Callable[[], Any]], settings: EvalSettings
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, List[np.ndarray]], Dict[str, float]]:
    """ShapeEval reports and images of each named pipeline loader on the held-out prompts, and the sampling seconds."""
    reports, images, seconds = {}, {}, {}
    for name, load in models.items():
        pipe = load()
        start = time.perf_counter()
        reports[name], images[name] = settings.score(pipe)
        seconds[name] = round(time.perf_counter() - start, 1)
    return reports, images, seconds


def evaluate_models(
    teacher_dir: Path, student_dir: Path, settings: EvalSettings
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, List[np.ndarray]], Dict[str, float]]:
    """ShapeEval reports and images of real renders, the teacher and the student, and the seconds each took."""
    scenes, seeds = evaluation_scenes(), settings.seeds
    rng = np.random.default_rng(0)
    real = [np.asarray(render_scene(scene, rng)) for scene in scenes for _ in seeds]
    reports, images, seconds = score_models(
        {"teacher": lambda: load_teacher(teacher_dir), "student": lambda: load_pipeline(student_dir)}, settings
    )
    real_report = evaluate(zip(real, [scene for scene in scenes for _ in seeds], strict=True), by_pair=True)
    reports = {"real": real_report, **reports}
    return reports, {"real": real, **images}, seconds


def write_grid(path: Path, images: Dict[str, List[np.ndarray]], num_seeds: int) -> List[str]:
    """A PNG of prompts (rows) x seeds for each model (column blocks); returns the prompts shown."""
    scenes = evaluation_scenes()
    rows = [
        index
        for category in CATEGORIES
        for index in [i for i, scene in enumerate(scenes) if scene.category == category][:GRID_PROMPTS_PER_CATEGORY]
    ]
    gap = 8
    block = num_seeds * IMAGE_SIZE
    canvas = np.full((len(rows) * IMAGE_SIZE, len(images) * (block + gap) - gap, 3), 128, np.uint8)
    for column, model in enumerate(images):
        for row, index in enumerate(rows):
            for seed in range(num_seeds):
                top, left = row * IMAGE_SIZE, column * (block + gap) + seed * IMAGE_SIZE
                canvas[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE] = images[model][index * num_seeds + seed]
    Image.fromarray(canvas).save(path)
    return [scenes[index].caption for index in rows]


def format_report(reports: Dict[str, Dict[str, float]]) -> str:
    """The ShapeEval table (one row per model; per held-out pair where recorded) and the retention line, as Markdown."""
    pairs = [f"{color} {shape}" for color, shape in sorted(HELD_OUT_PAIRS)]
    columns = list(CATEGORIES) + ["overall", "color"]
    columns += [pair for pair in pairs if any(pair in report for report in reports.values())]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, report in reports.items():
        cells = [f"{report[column]:.3f}" if column in report else "-" for column in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "teacher" in reports and "student" in reports and reports["teacher"]["overall"] > 0:
        retention = reports["student"]["overall"] / reports["teacher"]["overall"]
        lines.append(f"\nretention (student / teacher overall): {retention:.3f}")
    return "\n".join(lines)


def format_curve(curve: List[Dict[str, float]], seed: int) -> str:
    """The teacher's score-vs-time curve as a Markdown table."""
    lines = [
        f"Teacher during training (EMA, held-out prompts, seed {seed}):",
        "",
        "| step | training seconds | overall | color |",
        "|---|---|---|---|",
    ]
    lines += [f"| {p['step']} | {p['train_seconds']} | {p['overall']:.3f} | {p['color']:.3f} |" for p in curve]
    return "\n".join(lines)


def reproduce(out_dir: Union[str, os.PathLike], recipe: Recipe = Recipe()) -> Dict[str, Any]:
    """Run (or resume) the chain into ``out_dir``; return the summary also written to ``report/summary.json``."""
    out_dir = Path(out_dir)
    work, report_dir = out_dir / "work", out_dir / "report"
    work.mkdir(parents=True, exist_ok=True)
    timing_file = work / TIMING_FILE
    teacher_dir, student_dir = out_dir / "teacher", out_dir / "student"

    settings = recipe.evaluation
    if not (teacher_dir / TEACHER_DIT_FILE).exists():

        def probe(pipe: Any) -> Dict[str, float]:  # the curve: one seed of the held-out prompts
            return settings.score(pipe, seeds=settings.seeds[:1])[0]

        with timed_stage(timing_file, "teacher"):
            train_teacher(teacher_dir, work / "teacher", recipe.teacher, probe)
    if not (student_dir / DIT_FILE).exists():
        with timed_stage(timing_file, "student"):
            train_student(student_dir, work / "student", teacher_dir, recipe.student)
    with timed_stage(timing_file, "evaluation"):
        reports, images, eval_seconds = evaluate_models(teacher_dir, student_dir, settings)
        report_dir.mkdir(exist_ok=True)
        grid_prompts = write_grid(report_dir / "grid.png", images, len(settings.seeds))
    curve = json.loads((teacher_dir / TEACHER_SUMMARY_FILE).read_text(encoding="utf-8")).get("curve", [])

    timing = json.loads(timing_file.read_text(encoding="utf-8"))
    stage_seconds = {stage: round(sum(run["seconds"] for run in runs), 1) for stage, runs in timing.items()}
    summary = {
        "recipe": asdict(recipe),
        "shape_eval": reports,
        "retention": reports["student"]["overall"] / reports["teacher"]["overall"]
        if reports["teacher"]["overall"]
        else None,
        "eval_prompts": len(evaluation_scenes()),
        "eval_seconds": eval_seconds,
        "stage_seconds": stage_seconds,
        "total_seconds": round(sum(stage_seconds.values()), 1),
        "timing_runs": timing,
        "teacher_curve": curve,
        "grid_prompts": grid_prompts,
        "bytes": {
            str(path.relative_to(out_dir)): path.stat().st_size
            for path in sorted([*teacher_dir.rglob("*.safetensors"), *student_dir.rglob("*.safetensors")])
        },
    }
    with atomic_open(report_dir / SUMMARY_FILE) as file:
        json.dump(summary, file, indent=2)
    with atomic_open(report_dir / "report.md") as file:
        file.write(f"# Tiny-world reproduction\n\n{format_report(reports)}\n\n")
        file.write(f"Time per stage (s): {stage_seconds}; total {summary['total_seconds']} s.\n\n")
        file.write(f"{format_curve(curve, settings.seeds[0])}\n\n![grid](grid.png)\n")
    return summary


def gate_scenes() -> List[Scene]:
    """The quality gate's fixed subset of the held-out prompts: the first three of each category."""
    scenes = evaluation_scenes()
    return [
        scene for category in CATEGORIES for scene in [s for s in scenes if s.category == category][:GATE_PER_CATEGORY]
    ]


def gate_scores(pipe: Any, settings: EvalSettings = EvalSettings()) -> Dict[str, float]:
    """ShapeEval ``overall`` and ``color`` of ``pipe`` on :func:`gate_scenes` with two seeds: seconds on a CPU, for CI.

    Both are gated: ``color`` keeps the gate able to fail when a weak model's ``overall`` is already near zero.
    """
    report, _ = settings.score(pipe, gate_scenes(), GATE_SEEDS)
    return {metric: report[metric] for metric in GATE_METRICS}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ship(out_dir: Union[str, os.PathLike], assets_dir: Union[str, os.PathLike] = DEFAULT_MODEL_DIR) -> Dict[str, Any]:
    """Replace the package's tiny-world assets with a finished reproduction in ``out_dir`` (maintainers).

    The student set goes to ``assets_dir`` and the teacher's own files to ``assets_dir/teacher`` (the text encoder
    and tokenizer are shared), with ``summary.json``: the reproduction's summary, the SHA-256 of every shipped
    file and the student's quality-gate scores.
    """
    out_dir, assets_dir = Path(out_dir), Path(assets_dir)
    summary = json.loads((out_dir / "report" / "summary.json").read_text(encoding="utf-8"))
    staging = Path(tempfile.mkdtemp(prefix=".assets-", dir=assets_dir.parent))
    shutil.copytree(out_dir / "student", staging, dirs_exist_ok=True)
    (staging / "teacher").mkdir()
    for name in (TEACHER_DIT_FILE, VAE_ENCODER_FILE, VAE_DECODER_FILE):
        shutil.copyfile(out_dir / "teacher" / name, staging / "teacher" / name)
    summary["gate"] = {
        **gate_scores(load_pipeline(staging), EvalSettings(**summary["recipe"]["evaluation"])),
        "prompts": len(gate_scenes()),
        "seeds": list(GATE_SEEDS),
    }
    summary["sha256"] = {
        str(path.relative_to(staging)): _sha256(path) for path in sorted(staging.rglob("*")) if path.is_file()
    }
    (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for path in [staging, *staging.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    retired = assets_dir.with_name(f".{assets_dir.name}-old")
    if assets_dir.exists():
        os.replace(assets_dir, retired)
    os.replace(staging, assets_dir)
    shutil.rmtree(retired, ignore_errors=True)
    return summary


def evaluate_directories(
    model_dir: Union[str, os.PathLike, None], settings: EvalSettings = EvalSettings()
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, float]]:
    """ShapeEval of one model directory (teacher or L2P), or of the shipped teacher and student when None."""
    if model_dir is None:
        models = {"teacher": lambda: load_teacher(), "student": lambda: load_pipeline(DEFAULT_MODEL_DIR)}
    elif (Path(model_dir) / TEACHER_DIT_FILE).is_file():
        models = {"teacher": lambda: load_teacher(model_dir)}
    else:
        models = {"student": lambda: load_pipeline(model_dir)}
    reports, _, seconds = score_models(models, settings)
    return reports, seconds


def ablation_recipes(base: StudentRecipe = StudentRecipe()) -> Dict[str, StudentRecipe]:
    """The paper's ablations at tiny scale, equal steps and seeds: data source, and what is trained."""
    return {
        "teacher-data release": replace(base, preset=TINY_RELEASE_PRESET),
        "real-data release": replace(base, data="real", preset=TINY_RELEASE_PRESET),
        "teacher-data full": replace(base, preset="full"),
        "teacher-data lora": replace(base, preset="lora:16"),
    }


def ablations(
    out_dir: Union[str, os.PathLike],
    teacher_dir: Union[str, os.PathLike, None] = None,
    train_steps: Optional[int] = None,
    settings: EvalSettings = EvalSettings(),
    student: StudentRecipe = StudentRecipe(),
) -> Dict[str, Dict[str, float]]:
    """Train and score one student per :func:`ablation_recipes` variant of ``student`` from one teacher (resumable).

    Variants with the same data share one corpus, so they differ only in what they train.  Writes the reports to
    ``ablations.json`` and a grid of prompts x seeds per variant to ``grid.png``.
    """
    out_dir = Path(out_dir)
    teacher_dir = Path(teacher_dir) if teacher_dir is not None else TEACHER_ASSETS_DIR
    reports, images = {}, {}
    if train_steps is not None:
        student = replace(student, train_steps=train_steps)
    for name, student_recipe in ablation_recipes(student).items():
        slug = name.replace(" ", "-")
        student_dir = out_dir / slug
        if not (student_dir / DIT_FILE).exists():
            with timed_stage(out_dir / TIMING_FILE, slug):
                corpus = out_dir / "work" / f"corpus-{student_recipe.data}"
                train_student(student_dir, out_dir / "work" / slug, teacher_dir, student_recipe, corpus)
        reports[name], images[name] = settings.score(load_pipeline(student_dir))
    with atomic_open(out_dir / "ablations.json") as file:
        json.dump(reports, file, indent=2)
    write_grid(out_dir / "grid.png", images, len(settings.seeds))
    return reports
