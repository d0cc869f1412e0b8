"""The tiny world: teacher training and registration, batched sampling, the shipped weights and their gates."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffsynth.configs import MODEL_CONFIGS
from diffsynth.pipelines.z_image import ZImagePipeline
from PIL import Image
from safetensors.torch import load_file

from diffsynth_l2p.model_set import DEFAULT_MODEL_DIR
from diffsynth_l2p.pipelines.loading import load_pipeline
from diffsynth_l2p.tiny import build_tiny_l2p
from diffsynth_l2p.tiny_world.reproduce import SUMMARY_FILE, _sha256, gate_scenes, gate_scores
from diffsynth_l2p.tiny_world.sampling import sample_images
from diffsynth_l2p.tiny_world.shape_eval import score_image
from diffsynth_l2p.tiny_world.shapes import sample_dataset
from diffsynth_l2p.tiny_world.student import teacher_source, training_records
from diffsynth_l2p.tiny_world.teacher import (
    ASSETS_DIR,
    DiTTrainer,
    TeacherRecipe,
    fine_tune_decoder,
    images_to_tensor,
    load_teacher,
    load_text_parts,
    register_teacher_models,
    teacher_model_configs,
    train_autoencoder,
)

SUMMARY_PATH = DEFAULT_MODEL_DIR / SUMMARY_FILE
SUMMARY = json.loads(SUMMARY_PATH.read_text(encoding="utf-8"))
DIFFSYNTH_NAMES = {"z_image_dit", "flux_vae_encoder", "flux_vae_decoder"}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A teacher directory with seeded random weights, in the layout ``train_teacher`` writes."""
    from diffsynth_l2p.safetensors_io import save_module
    from diffsynth_l2p.tiny_world.autoencoder import TinyVAEDecoder, TinyVAEEncoder
    from diffsynth_l2p.tiny_world.teacher import DIT_FILE, VAE_DECODER_FILE, VAE_ENCODER_FILE, init_dit

    model_dir = tmp_path_factory.mktemp("teacher")
    build_tiny_l2p(model_dir / "set", seed=0)
    for name in ("text_encoder", "tokenizer"):
        (model_dir / "set" / name).rename(model_dir / name)
    torch.manual_seed(0)
    save_module(init_dit(0), model_dir / DIT_FILE, torch.bfloat16)
    save_module(TinyVAEEncoder(), model_dir / VAE_ENCODER_FILE)
    save_module(TinyVAEDecoder(), model_dir / VAE_DECODER_FILE)
    return model_dir


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return load_teacher(teacher_dir)


@pytest.fixture(scope="module")
def student(tiny_model_set):
    return load_pipeline(tiny_model_set)


def test_teacher_parts_are_registered_under_names_of_our_own():
    hashes = register_teacher_models()
    assert register_teacher_models() == hashes
    for model_hash in hashes.values():
        (entry,) = [entry for entry in MODEL_CONFIGS if entry["model_hash"] == model_hash]
        assert entry["model_name"].startswith("l2p_tiny_world_") and entry["model_name"] not in DIFFSYNTH_NAMES


def test_teacher_runs_in_diffsynths_stock_pipeline(teacher):
    assert type(teacher) is ZImagePipeline and type(teacher.dit).__name__ == "ZImageDiT"
    image = teacher("a red circle on the left", cfg_scale=2.0, height=64, width=64, seed=0, num_inference_steps=10)
    again = teacher("a red circle on the left", cfg_scale=2.0, height=64, width=64, seed=0, num_inference_steps=10)
    assert image.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(again))


def test_teacher_in_fp32_draws_what_the_stock_bf16_pipeline_draws(teacher, teacher_dir):
    bf16 = load_teacher(teacher_dir, torch_dtype=torch.bfloat16)
    assert teacher.torch_dtype == torch.float32 and bf16.dit.layers[0].attention.to_q.weight.dtype == torch.bfloat16
    kwargs = dict(prompt="a red circle on the left", cfg_scale=2.0, height=64, width=64, seed=0, num_inference_steps=10)
    difference = np.abs(np.asarray(teacher(**kwargs), np.int16) - np.asarray(bf16(**kwargs), np.int16))
    assert difference.mean() < 3.0


@pytest.mark.parametrize("model, cfg_max_sigma", [("teacher", None), ("student", 1.0), ("student", 0.8)])
def test_batched_sampling_matches_the_pipelines_own_calls(model, cfg_max_sigma, teacher, student):
    pipe = teacher if model == "teacher" else student
    prompts, seeds = ["a yellow square above a red circle", "two green triangles"], [3, 7]
    batched = sample_images(pipe, prompts, seeds, steps=10, cfg_scale=2.0, cfg_max_sigma=cfg_max_sigma)
    limit = {} if cfg_max_sigma is None else {"cfg_max_sigma": cfg_max_sigma}  # DiffSynth's pipeline guides always
    for prompt, seed, image in zip(prompts, seeds, batched, strict=True):
        single = pipe(prompt=prompt, cfg_scale=2.0, height=64, width=64, seed=seed, num_inference_steps=10, **limit)
        difference = np.abs(np.asarray(single, np.int16) - image.astype(np.int16))
        assert difference.mean() < 2.0  # batch rounding only: a few levels on a few pixels
        assert score_image(image, prompt) == score_image(np.asarray(single), prompt)


def test_teacher_dit_ema_warms_up_and_training_resumes_exactly(tmp_path):
    images, captions = zip(*sample_dataset(32, seed=0), strict=True)
    encoder, _, losses = train_autoencoder(images_to_tensor(list(images)), steps=6, batch_size=4)
    assert len(losses) == 6
    with torch.no_grad():
        latents = encoder(images_to_tensor(list(images)))
    build_tiny_l2p(tmp_path / "text", seed=0)
    recipe = TeacherRecipe(dit_steps=4, dit_batch_size=4)

    def trainer() -> DiTTrainer:  # each run trains its own copy of the text encoder
        return DiTTrainer(latents, list(captions), *load_text_parts(tmp_path / "text"), recipe)

    straight = trainer()
    for _ in range(4):
        straight.train_step()
    first = trainer()
    expected = [param.detach().clone() for param in first.params]
    for decay in (1 / 10, 2 / 11):  # the warm-up min(0.998, (1 + step) / (10 + step)) at steps 0 and 1
        first.train_step()
        expected = [ema.lerp(param.detach(), 1 - decay) for ema, param in zip(expected, first.params, strict=True)]
    assert any(not torch.equal(ema, param) for ema, param in zip(first.ema, first.params, strict=True))
    for ema, reference in zip(first.ema, expected, strict=True):
        torch.testing.assert_close(ema, reference)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = trainer()
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for _ in range(2):
        resumed.train_step()
    assert resumed.losses == straight.losses
    for a, b in zip(resumed.ema, straight.ema, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("text_attention", [False, True])
def test_teacher_text_features_are_per_word_unless_attention_is_on(tmp_path, text_attention):
    images, captions = zip(*sample_dataset(8, seed=0), strict=True)
    latents = torch.randn(8, 16, 8, 8)
    build_tiny_l2p(tmp_path / "text", seed=0)
    recipe = TeacherRecipe(dit_steps=2, dit_batch_size=4, text_attention=text_attention)
    trainer = DiTTrainer(latents, list(captions), *load_text_parts(tmp_path / "text"), recipe)
    for _ in range(2):
        trainer.train_step()
    red, blue = trainer.encode(["a red square", "a blue square"])
    differs = (red - blue).abs().amax(dim=-1) > 0
    assert differs.any()
    # Without attention only the color word's own feature differs; with it, every later token sees the color too.
    assert (differs.sum().item() == 1) != text_attention
    o_proj = trainer.text.text_encoder.model.layers[0].self_attn.o_proj.weight
    assert bool(o_proj.abs().sum() == 0) != text_attention


def test_decoder_fine_tuning_keeps_the_latent_space_and_changes_only_the_decoder():
    images = images_to_tensor([image for image, _ in sample_dataset(16, seed=0)])
    encoder, decoder, _ = train_autoencoder(images, steps=4, batch_size=4)
    before = {name: tensor.clone() for name, tensor in decoder.state_dict().items()}
    encoder_before = {name: tensor.clone() for name, tensor in encoder.state_dict().items()}
    losses = fine_tune_decoder(encoder, decoder, images, steps=3, batch_size=4)
    assert len(losses) == 3 and not decoder.training
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, encoder_before[name])
    changed = {name for name, tensor in decoder.state_dict().items() if not torch.equal(tensor, before[name])}
    assert changed and not changed & {"latent_mean", "latent_std"}  # the latent statistics are the encoder's


def test_missing_teacher_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="l2p tiny-world reproduce"):
        teacher_model_configs(tmp_path)


def test_training_records_exclude_held_out_pairs():
    from diffsynth_l2p.tiny_world.shapes import parse_caption

    records = training_records(500, seed=1)
    assert not any(parse_caption(record["prompt"]).is_held_out() for record in records)
    assert {record["category"] for record in records} == {"single", "position", "count", "relation"}
    assert records == training_records(500, seed=1)
    with pytest.raises(ValueError, match="one directory"):
        teacher_source(["a", "b"])


def test_shipped_files_are_the_recorded_reproduction():
    shipped = {
        str(path.relative_to(DEFAULT_MODEL_DIR)): _sha256(path)
        for path in sorted(DEFAULT_MODEL_DIR.rglob("*"))
        if path.is_file() and path.name != SUMMARY_FILE
    }
    assert shipped == SUMMARY["sha256"]
    assert sum(path.stat().st_size for path in DEFAULT_MODEL_DIR.rglob("*") if path.is_file()) < 20 * 2**20
    assert (ASSETS_DIR / "dit.safetensors").is_file()


def test_shipped_summary_records_the_full_evaluation():
    teacher, student = SUMMARY["shape_eval"]["teacher"], SUMMARY["shape_eval"]["student"]
    assert SUMMARY["retention"] == pytest.approx(student["overall"] / teacher["overall"])
    assert SUMMARY["shape_eval"]["real"]["overall"] == 1.0
    assert SUMMARY["eval_prompts"] >= 40 and len(SUMMARY["recipe"]["evaluation"]["seeds"]) >= 4


def test_quality_gate_holds_for_the_shipped_student_and_fails_for_a_random_one(tiny_model_set):
    thresholds = {metric: SUMMARY["gate"][metric] - 0.05 for metric in ("overall", "color")}
    assert len(gate_scenes()) == SUMMARY["gate"]["prompts"] == 12
    shipped, random = gate_scores(load_pipeline(DEFAULT_MODEL_DIR)), gate_scores(load_pipeline(tiny_model_set))
    assert all(shipped[metric] >= threshold for metric, threshold in thresholds.items())
    assert any(random[metric] < threshold for metric, threshold in thresholds.items())


def test_make_demo_draws_its_prompt_with_the_default_model(tmp_path):
    """`make demo`'s command, run as is: ShapeEval must read the prompt in the image."""
    from diffsynth_l2p.cli import main

    makefile = (Path(__file__).parents[1] / "Makefile").read_text(encoding="utf-8")
    prompt = makefile.split('l2p generate --prompt "', 1)[1].split('"', 1)[0]
    assert main(["generate", "--prompt", prompt, "--out", str(tmp_path / "demo.png")]) == 0
    with Image.open(tmp_path / "demo.png") as image:
        assert image.size == (64, 64)
        assert score_image(image, prompt)


@pytest.mark.slow
def test_smoke_reproduction_runs_the_whole_chain_and_resumes(tmp_path):
    """The chain with tiny budgets (CI's smoke run): every stage's product, the report, then a resumed rerun."""
    from diffsynth_l2p.tiny_world.reproduce import SMOKE_RECIPE, reproduce

    summary = reproduce(tmp_path, SMOKE_RECIPE)
    assert set(summary["shape_eval"]) == {"real", "teacher", "student"}
    assert summary["shape_eval"]["real"]["blue square"] == 1.0  # per held-out pair, beside the categories
    assert set(summary["stage_seconds"]) == {"teacher", "student", "evaluation"}
    assert (tmp_path / "report" / "grid.png").is_file() and (tmp_path / "report" / "report.md").is_file()
    assert load_pipeline(tmp_path / "student")(prompt="a red circle", height=64, width=64, num_inference_steps=2)
    student = (tmp_path / "student" / "l2p-dit.safetensors").stat().st_mtime_ns
    again = reproduce(tmp_path, SMOKE_RECIPE)  # finished stages are not redone; only the evaluation reruns
    assert (tmp_path / "student" / "l2p-dit.safetensors").stat().st_mtime_ns == student
    assert again["shape_eval"] == summary["shape_eval"]
    assert len(again["timing_runs"]["evaluation"]) == 2 and len(again["timing_runs"]["teacher"]) == 1
    (point,) = summary["teacher_curve"]  # the smoke teacher trains fewer steps than the probe interval: one point
    assert point["step"] == SMOKE_RECIPE.teacher.dit_steps and 0 <= point["overall"] <= 1


@pytest.mark.slow
def test_smoke_ablations_train_four_students_from_one_teacher_and_resume(tmp_path):
    """`l2p tiny-world ablate` with the smoke student budgets on the shipped teacher: reports, grid, resume."""
    from diffsynth_l2p.tiny_world.reproduce import SMOKE_RECIPE, ablation_recipes, ablations

    reports = ablations(tmp_path, settings=SMOKE_RECIPE.evaluation, student=SMOKE_RECIPE.student)
    names = list(ablation_recipes())
    assert list(reports) == names == list(json.loads((tmp_path / "ablations.json").read_text(encoding="utf-8")))
    assert all({"overall", "color", "blue square"} <= set(report) for report in reports.values())
    assert (tmp_path / "work" / "corpus-teacher").is_dir() and (
        tmp_path / "work" / "corpus-real" / "metadata.csv"
    ).is_file()
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.width == len(names) * (len(SMOKE_RECIPE.evaluation.seeds) * 64 + 8) - 8
    dits = {name: load_file(tmp_path / name.replace(" ", "-") / "l2p-dit.safetensors") for name in names}
    release = dits["teacher-data release"]
    assert not torch.equal(
        release["layers.1.attention.to_q.weight"], dits["teacher-data full"]["layers.1.attention.to_q.weight"]
    )
    mtimes = {name: (tmp_path / name.replace(" ", "-") / "l2p-dit.safetensors").stat().st_mtime_ns for name in names}
    assert ablations(tmp_path, settings=SMOKE_RECIPE.evaluation, student=SMOKE_RECIPE.student) == reports
    assert mtimes == {
        name: (tmp_path / name.replace(" ", "-") / "l2p-dit.safetensors").stat().st_mtime_ns for name in names
    }


def test_student_recipe_training_settings_reach_l2p_train(tmp_path, monkeypatch):
    """StudentRecipe's training settings are what `l2p train` gets (captured before any step runs)."""
    from diffsynth_l2p.tiny_world import student

    seen = []

    class Stop(Exception):
        pass

    def capture(config):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(student, "train", capture)
    recipe = student.StudentRecipe(data="real", corpus_images=4, shift=1.0, caption_dropout=0.25, lr_scheduler="linear")
    with pytest.raises(Stop):
        student.train_student(tmp_path / "student", tmp_path / "work", ASSETS_DIR, recipe)
    (config,) = seen
    assert (config.shift, config.caption_dropout, config.preset, config.lr_scheduler) == (1.0, 0.25, "full", "linear")
    assert (tmp_path / "work" / "init.safetensors").is_file() and not (tmp_path / "student").exists()
