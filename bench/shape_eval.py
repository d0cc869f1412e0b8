"""ShapeEval side by side: real shapes-world images, baselines, the tiny-world teacher and (optionally) a student.

Every row scores one image per (held-out prompt, seed) with the same deterministic detector; retention is
student / teacher overall accuracy.
Run: .venv/bin/python bench/shape_eval.py [--teacher DIR] [--student DIR] [--seeds 2] [--steps 20] [--cfg 2.0]
"""

import argparse
import os
import time

os.environ.setdefault("DIFFSYNTH_SKIP_DOWNLOAD", "True")

from diffsynth_l2p.tiny_world.shape_eval import (  # noqa: E402
    evaluate_pipeline,
    noise_baseline,
    prompt_blind_baseline,
    real_images_report,
)
from diffsynth_l2p.tiny_world.shapes import CATEGORIES, evaluation_scenes  # noqa: E402
from diffsynth_l2p.tiny_world.teacher import load_teacher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="teacher directory (default: the shipped teacher)")
    parser.add_argument("--student", default=None, help="L2P student model directory (optional)")
    parser.add_argument("--seeds", type=int, default=2, help="images per prompt (default: 2)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default: 20)")
    parser.add_argument("--cfg", type=float, default=2.0, help="CFG scale (default: 2.0)")
    args = parser.parse_args()

    scenes = evaluation_scenes()
    seeds = tuple(range(args.seeds))
    rows = {
        "real images": real_images_report(scenes, repeats=args.seeds),
        "noise": noise_baseline(scenes, repeats=args.seeds),
        "prompt-blind": prompt_blind_baseline(scenes, repeats=args.seeds),
    }
    seconds = {}
    models = {"teacher": lambda: load_teacher(args.teacher)}
    if args.student:
        from diffsynth_l2p.pipelines.loading import load_pipeline

        models["student"] = lambda: load_pipeline(args.student)
    for name, load in models.items():
        pipe = load()
        start = time.perf_counter()
        rows[name] = evaluate_pipeline(pipe, scenes, seeds, args.steps, args.cfg)
        seconds[name] = time.perf_counter() - start

    print(f"ShapeEval on {len(scenes)} held-out prompts x {len(seeds)} seeds, {args.steps} steps, cfg {args.cfg}")
    columns = list(CATEGORIES) + ["overall", "color"]
    print(f"{'':14}" + "".join(f"{column:>10}" for column in columns) + f"{'seconds':>10}")
    for name, report in rows.items():
        timing = f"{seconds[name]:10.1f}" if name in seconds else ""
        print(f"{name:14}" + "".join(f"{report[column]:10.3f}" for column in columns) + timing)
    if "student" in rows and rows["teacher"]["overall"] > 0:
        print(f"retention (student / teacher overall): {rows['student']['overall'] / rows['teacher']['overall']:.3f}")


if __name__ == "__main__":
    main()
