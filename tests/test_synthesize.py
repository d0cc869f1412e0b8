"""``l2p synthesize`` with a tiny random latent source: DiffSynth's own ZImagePipeline, tiny ZImageDiT and decoder.

The source model set (tiny stock ``ZImageDiT``, the tiny Qwen3 text encoder and tokenizer of ``build_tiny_l2p``,
a small decoder with ``FluxVAEDecoder``'s call signature) is written to disk and registered with DiffSynth, and
``tiny_source_pipeline`` (used as ``--source_factory test_synthesize:tiny_source_pipeline``) loads it through
``ZImagePipeline.from_pretrained``. It runs in bf16 because the stock ``TimestepEmbedder`` casts to bf16.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from diffsynth_l2p import cli
from diffsynth_l2p.data.synthesize import (
    ShardWriter,
    SourceSpec,
    SynthesisSettings,
    check_latent_pipeline,
    generate_image,
    merge_shards,
    plan_rows,
    read_finished_rows,
    rows_of_rank,
    source_model_configs,
)

TESTS_DIR = Path(__file__).resolve().parent
FACTORY = "test_synthesize:tiny_source_pipeline"
SIZE = 64
STEPS = 2
TINY_SOURCE_DIT = dict(
    dim=64,
    n_layers=2,
    n_refiner_layers=1,
    n_heads=2,
    n_kv_heads=2,
    cap_feat_dim=64,  # the tiny text encoder's hidden size
    in_channels=16,
    all_patch_size=(2,),
    all_f_patch_size=(1,),
    axes_dims=[8, 12, 12],
    axes_lens=[256, 64, 64],
)
PROMPTS = [
    "a red circle left of a blue square",
    "two green triangles on a white background",
    "a small yellow star in the center",
    "three purple dots above an orange rectangle",
    "a large black square below a pink circle",
    "one cyan triangle next to a brown star",
]


class TinyLatentDecoder(torch.nn.Module):
    """``FluxVAEDecoder``'s call: latents [B, 16, h, w] -> image [B, 3, 8h, 8w] in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(16, 3 * 64, kernel_size=1)

    def forward(self, latents: torch.Tensor, **kwargs) -> torch.Tensor:
        return torch.tanh(torch.nn.functional.pixel_shuffle(self.proj(latents), 8))


def _register(path: str, name: str, model_class: str, extra_kwargs: dict = None) -> None:
    from diffsynth.core import hash_model_file

    from diffsynth_l2p.registry import register_model

    register_model(hash_model_file(path), name, model_class, extra_kwargs)


def tiny_source_pipeline(source_model, device, torch_dtype):
    """``--source_factory``: DiffSynth's stock ``ZImagePipeline`` loaded from the tiny source folder."""
    from diffsynth.core import ModelConfig
    from diffsynth.pipelines.z_image import ZImagePipeline

    from diffsynth_l2p.registry import register_all

    (folder,) = source_model
    files = json.loads((Path(folder) / "files.json").read_text())
    register_all()
    _register(files["dit"], "z_image_dit", "diffsynth.models.z_image_dit.ZImageDiT", TINY_SOURCE_DIT)
    _register(files["decoder"], "flux_vae_decoder", f"{TinyLatentDecoder.__module__}.TinyLatentDecoder")
    return ZImagePipeline.from_pretrained(
        torch_dtype=torch_dtype,
        device=device,
        model_configs=[ModelConfig(path=files[key]) for key in ("dit", "text_encoder", "decoder")],
        tokenizer_config=ModelConfig(path=files["tokenizer"]),
    )


@pytest.fixture(scope="module")
def source_dir(tiny_model_set, tmp_path_factory) -> str:
    """The tiny latent source model on disk, described by ``files.json``."""
    from diffsynth.models.z_image_dit import ZImageDiT

    folder = tmp_path_factory.mktemp("tiny-source")
    torch.manual_seed(0)
    dit = ZImageDiT(**TINY_SOURCE_DIT)
    for name, param in dit.named_parameters():  # the pad tokens are torch.empty
        if name.endswith("pad_token"):
            torch.nn.init.normal_(param, std=0.02)
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(folder / "dit.safetensors"))
    save_file(TinyLatentDecoder().state_dict(), str(folder / "decoder.safetensors"))
    files = {
        "dit": str(folder / "dit.safetensors"),
        "decoder": str(folder / "decoder.safetensors"),
        "text_encoder": tiny_model_set["text_encoder"],
        "tokenizer": tiny_model_set["tokenizer"],
        "l2p_dit": tiny_model_set["dit"],
    }
    (folder / "files.json").write_text(json.dumps(files))
    return str(folder)


@pytest.fixture(scope="module")
def source_pipe(source_dir):
    """The source pipeline as ``l2p synthesize`` builds it on the CPU by default: fp32 (``--dtype auto``)."""
    return SourceSpec((source_dir,), factory=FACTORY, torch_dtype="float32").load()


def _write_jsonl(path: Path, prompts, categories=None) -> str:
    with open(path, "w", encoding="utf-8") as file:
        for index, prompt in enumerate(prompts):
            record = {"prompt": prompt}
            if categories:
                record["category"] = categories[index % len(categories)]
            file.write(json.dumps(record) + "\n")
    return str(path)


def _args(prompts: str, out: Path, source_dir: str, *extra: str) -> list:
    return [
        "synthesize", "--prompts", prompts, "--output_dir", str(out),
        "--source_factory", FACTORY, "--source_model", source_dir,
        "--height", str(SIZE), "--width", str(SIZE), "--steps", str(STEPS), "--seed", "100", "--device", "cpu",
        *extra,
    ]  # fmt: skip


def _metadata(out: Path) -> list:
    with open(out / "metadata.csv", encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


def _assert_complete(out: Path, prompts) -> list:
    rows = _metadata(out)
    assert [row["prompt"] for row in rows] == list(prompts)
    assert [row["image"] for row in rows] == [f"images/{i:06d}.png" for i in range(len(prompts))]
    assert [int(row["seed"]) for row in rows] == [100 + i for i in range(len(prompts))]
    for row in rows:
        with Image.open(out / row["image"]) as image:
            image.load()
            assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    assert sorted(os.listdir(out / "images")) == [f"{i:06d}.png" for i in range(len(prompts))]
    return rows


def test_synthesize_writes_images_that_their_seeds_regenerate(tmp_path, source_dir, source_pipe, capsys):
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:4], categories=["shapes/one", "shapes/two"])
    out = tmp_path / "corpus"
    assert cli.main(_args(prompts, out, source_dir)) == 0
    assert "written 4, skipped 0" in capsys.readouterr().out

    rows = _assert_complete(out, PROMPTS[:4])
    assert list(rows[0]) == ["image", "prompt", "seed", "category"]
    assert [row["category"] for row in rows] == ["shapes/one", "shapes/two"] * 2
    settings = SynthesisSettings(height=SIZE, width=SIZE, num_inference_steps=STEPS, base_seed=100)
    for row in rows:
        regenerated = generate_image(source_pipe, row["prompt"], int(row["seed"]), settings)
        with Image.open(out / row["image"]) as stored:
            assert np.array_equal(np.asarray(stored), np.asarray(regenerated))
    first, second = (np.asarray(Image.open(out / rows[i]["image"])) for i in (0, 1))
    assert not np.array_equal(first, second)  # different prompt and seed, different image

    # Rerunning the finished job skips every row and rewrites nothing.
    mtimes = {name: os.stat(out / "images" / name).st_mtime_ns for name in os.listdir(out / "images")}
    assert cli.main(_args(prompts, out, source_dir)) == 0
    assert "written 0, skipped 4" in capsys.readouterr().out
    assert mtimes == {name: os.stat(out / "images" / name).st_mtime_ns for name in os.listdir(out / "images")}


def test_corpus_trains_directly_with_l2p_train(tmp_path, source_dir, tiny_model_set):
    from diffsynth_l2p.training.dataset import L2PImageDataset

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n")
    out = tmp_path / "corpus"
    assert cli.main(_args(str(prompts), out, source_dir)) == 0
    dataset = L2PImageDataset(str(out), max_pixels=SIZE * SIZE)
    assert len(dataset) == 3 and not dataset.skipped
    assert dataset.prompts == PROMPTS[:3]
    item = dataset[1]
    assert item["seed"] == 101 and tuple(item["image"].shape) == (3, SIZE, SIZE)

    model = [tiny_model_set["dit"], *tiny_model_set["text_encoder"], tiny_model_set["tokenizer"]]
    train = [
        "train", "--dataset", str(out), "--model", *model, "--output_path", str(tmp_path / "run"),
        "--max_steps", "1", "--save_steps", "1", "--max_pixels", str(SIZE * SIZE), "--no_gradient_checkpointing",
    ]  # fmt: skip
    assert cli.main(train) == 0
    assert any(name.endswith(".safetensors") for name in os.listdir(tmp_path / "run"))


def test_kill_and_resume_ends_with_every_row_once(tmp_path, source_dir):
    count, kill_after = 8, 2
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"{PROMPTS[i % len(PROMPTS)]} number {i}\n" for i in range(count)))
    out = tmp_path / "corpus"
    args = _args(str(prompts), out, source_dir)
    args[args.index("--steps") + 1] = "6"  # slow enough to be killed mid-run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "diffsynth_l2p.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    shard = out / "shards" / "rank-0.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if shard.exists() and len(read_finished_rows(str(shard))) >= kill_after:
            break
        time.sleep(0.01)
    assert process.poll() is None, process.communicate()[1].decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()

    done = read_finished_rows(str(shard))
    assert kill_after <= len(done) < count
    assert not (out / "metadata.csv").exists()
    assert cli.main(args) == 0
    rows = _assert_complete(out, [f"{PROMPTS[i % len(PROMPTS)]} number {i}" for i in range(count)])
    assert len({row["image"] for row in rows}) == count
    assert not [name for name in os.listdir(out / "images") if name.startswith(".")]


def test_torn_last_line_is_dropped_and_rows_are_rewritten(tmp_path, source_dir, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]) + "\n")
    out = tmp_path / "corpus"
    assert cli.main(_args(str(prompts), out, source_dir)) == 0
    shard = out / "shards" / "rank-0.csv"
    lines = shard.read_text().splitlines(keepends=True)
    shard.write_text("".join(lines[:-1]) + lines[-1][:12])  # a crash while appending the last row
    (out / "metadata.csv").unlink()
    assert [row.index for row in read_finished_rows(str(shard))] == [0, 1]

    assert cli.main(_args(str(prompts), out, source_dir)) == 0
    assert "written 1, skipped 2" in capsys.readouterr().out
    _assert_complete(out, PROMPTS[:3])
    assert shard.read_text().count("\n") == 4 and shard.read_text().endswith("\n")


def test_launched_workers_parse_back_the_same_job():
    from diffsynth_l2p.data.synthesize import SynthesisJob, job_arguments

    source = SourceSpec(("a dir", "b.safetensors"), factory=FACTORY, tokenizer="tok", torch_dtype="float32")
    settings = SynthesisSettings(64, 32, 3, cfg_scale=0.1 + 0.2, sigma_shift=3.0, negative_prompt="-dull", base_seed=7)
    jobs = [
        SynthesisJob("p.jsonl", "-out dir", source, settings),
        SynthesisJob("p.txt", "out", SourceSpec(pipeline_class="module.Pipeline")),
    ]
    for job in jobs:
        args = cli.build_parser().parse_args(["synthesize", *job_arguments(job)])
        assert cli._synthesis_job(args) == job and args.num_processes == 1
    with pytest.raises(ValueError, match="rand_device='cuda' has no `l2p synthesize` option"):
        job_arguments(SynthesisJob("p.txt", "out", settings=SynthesisSettings(rand_device="cuda")))


@pytest.mark.parametrize(
    ("dtype", "expected"), [([], "float32"), (["--dtype", "auto"], "float32"), (["--dtype", "bfloat16"], "bfloat16")]
)
def test_synthesize_dtype_defaults_to_float32_on_the_cpu(dtype, expected):
    options = ["--prompts", "p.txt", "--output_dir", "out", "--device", "cpu", *dtype]
    args = cli.build_parser().parse_args(["synthesize", *options])
    assert cli._synthesis_job(args).source.torch_dtype == expected


# A single process with the thread count each of two workers gets: CPU kernels may round differently with other
# thread counts, and the corpora are compared byte for byte.
WORKER_THREADS = str(max(1, (os.cpu_count() or 1) // 2))


def _l2p_env(**extra: str) -> dict:
    """The environment of an ``l2p`` child: this folder importable (the tiny source factory), plus ``extra``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]), **extra}


def _run_l2p(args: list, **env: str) -> subprocess.CompletedProcess:
    """``python -m diffsynth_l2p.cli ARGS`` as a user runs it; it must succeed."""
    command = [sys.executable, "-m", "diffsynth_l2p.cli", *args]
    result = subprocess.run(command, env=_l2p_env(**env), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _assert_same_corpus(expected: Path, actual: Path) -> None:
    """The same ``metadata.csv`` and the same image files, byte for byte."""
    assert (actual / "metadata.csv").read_bytes() == (expected / "metadata.csv").read_bytes()
    names = sorted(os.listdir(expected / "images"))
    assert sorted(os.listdir(actual / "images")) == names
    for name in names:
        assert (actual / "images" / name).read_bytes() == (expected / "images" / name).read_bytes(), name


@pytest.mark.slow  # an accelerate launcher and two workers, each importing torch + DiffSynth: minutes on 2 busy cores
def test_two_processes_make_the_same_corpus_as_one(tmp_path, source_dir):
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:5], categories=["shapes/one", "shapes/two"])
    one, two = tmp_path / "one", tmp_path / "two"
    _run_l2p(_args(prompts, one, source_dir), OMP_NUM_THREADS=WORKER_THREADS)
    _assert_complete(one, PROMPTS[:5])

    result = _run_l2p(_args(prompts, two, source_dir, "--num_processes", "2"))
    assert result.stdout.count("written 5, skipped 0 (already done), failed 0") == 1  # the main worker's summary
    shards = [{row.index for row in read_finished_rows(str(two / "shards" / f"rank-{r}.csv"))} for r in (0, 1)]
    assert shards == [{0, 2, 4}, {1, 3}]
    _assert_same_corpus(one, two)

    # The merge step alone rebuilds the same metadata.csv from the shards.
    (two / "metadata.csv").unlink()
    assert cli.main(["synthesize", "--merge-only", "--output_dir", str(two)]) == 0
    _assert_same_corpus(one, two)


def _running(processes: list) -> list:
    """The processes of ``processes`` still running (zombies waiting for their reaper are not)."""
    import psutil

    running = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            pass
    return running


@pytest.mark.slow  # three runs of launcher + workers, as above
def test_killed_l2p_leaves_no_worker_and_the_rerun_finishes_the_same_corpus(tmp_path, source_dir):
    import psutil

    count = 12
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"{PROMPTS[i % len(PROMPTS)]} number {i}\n" for i in range(count)))
    out, reference = tmp_path / "corpus", tmp_path / "reference"
    args = _args(str(prompts), out, source_dir, "--steps", "6", "--num_processes", "2")  # slow enough to be killed
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe nobody reads while the workers log
        process = subprocess.Popen(
            [sys.executable, "-m", "diffsynth_l2p.cli", *args], env=_l2p_env(), stdout=subprocess.DEVNULL, stderr=stderr
        )
    shards = [out / "shards" / f"rank-{rank}.csv" for rank in (0, 1)]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if all(shard.exists() and read_finished_rows(str(shard)) for shard in shards):
            break
        time.sleep(0.05)
    assert process.poll() is None, log.read_text()[-3000:]
    tree = psutil.Process(process.pid).children(recursive=True)
    launchers = [child for child in tree if "accelerate.commands.launch" in child.cmdline()]
    workers = [child for child in tree if child not in launchers and "diffsynth_l2p.cli" in child.cmdline()]
    assert (len(launchers), len(workers)) == (1, 2), [child.cmdline() for child in tree]

    process.kill()  # SIGKILL: the top process cannot clean up; its children must notice on their own
    process.wait()
    psutil.wait_procs(tree, timeout=90)
    assert not _running(tree), [child.cmdline() for child in _running(tree)]
    done = sum(len(read_finished_rows(str(shard))) for shard in shards)
    assert 2 <= done < count
    assert not (out / "metadata.csv").exists()

    result = _run_l2p(args)  # the same command continues
    assert f"written {count - done}, skipped {done} (already done), failed 0" in result.stdout
    assert not [name for name in os.listdir(out / "images") if name.startswith(".")]
    _assert_complete(out, [f"{PROMPTS[i % len(PROMPTS)]} number {i}" for i in range(count)])
    _run_l2p(_args(str(prompts), reference, source_dir, "--steps", "6"), OMP_NUM_THREADS=WORKER_THREADS)
    _assert_same_corpus(reference, out)


def test_explicit_ranks_resume_into_one_corpus(tmp_path, source_dir, source_pipe):
    records = [{"prompt": prompt} for prompt in PROMPTS[:5]]
    settings = SynthesisSettings(height=SIZE, width=SIZE, num_inference_steps=STEPS, base_seed=100)
    from diffsynth_l2p.data.synthesize import synthesize

    out = str(tmp_path / "corpus")
    first = synthesize(source_pipe, records, out, settings, rank=1, world_size=2)
    assert (first.written, first.skipped) == (2, 0)
    # A later single-worker run only does what rank 1 left.
    second = synthesize(source_pipe, records, out, settings)
    assert (second.written, second.skipped) == (3, 2)
    shards = [{row.index for row in read_finished_rows(f"{out}/shards/rank-{r}.csv")} for r in (0, 1)]
    assert shards == [{0, 2, 4}, {1, 3}]
    assert merge_shards(out) == 5
    _assert_complete(tmp_path / "corpus", PROMPTS[:5])


def test_shard_writer_and_reader_survive_damage(tmp_path):
    path = str(tmp_path / "shards" / "rank-0.csv")
    rows = plan_rows([{"prompt": 'a "quoted", comma prompt'}, {"prompt": "second\nline"}], base_seed=7)
    with ShardWriter(path, ("image", "prompt", "seed")) as writer:
        writer.append(rows[0])
    with open(path, "a", encoding="utf-8") as file:
        file.write("not,a,row\nimages/000001.png,torn")
    with ShardWriter(path, ("image", "prompt", "seed", "category")) as writer:  # cuts the torn tail, keeps the header
        writer.append(rows[1])
    assert read_finished_rows(path) == rows
    assert rows[1].prompt == "second line" and rows[1].seed == 8
    planned = plan_rows([{"prompt": "p"}] * 5, base_seed=0)
    assert rows_of_rank(planned, 1, 2) == [planned[1], planned[3]]


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_give_clear_errors(tmp_path, source_dir, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "contains no prompts" in _error(capsys, _args(str(empty), tmp_path / "a", source_dir))

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n\n{"prompt": \n{"text": "no prompt key"}\n')
    message = _error(capsys, _args(str(broken), tmp_path / "b", source_dir))
    assert "line 3: not valid JSON" in message and "line 4: 'prompt' must be a non-empty string" in message

    good = tmp_path / "good.txt"
    good.write_text(PROMPTS[0] + "\n")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "is a file, not a directory" in _error(capsys, _args(str(good), blocker / "out", source_dir))
    if os.geteuid() != 0:  # root ignores directory permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "Cannot write to output directory" in _error(capsys, _args(str(good), locked, source_dir))

    not_latent = _args(str(good), tmp_path / "c", source_dir)
    not_latent[not_latent.index(FACTORY)] = "test_synthesize:pixel_pipeline"
    assert "pixel-space L2P pipeline" in _error(capsys, not_latent)
    assert not (tmp_path / "c" / "metadata.csv").exists()


def pixel_pipeline(source_model, device, torch_dtype):
    """A ``--source_factory`` returning the pixel-space L2P pipeline, which must be refused as a source."""
    from diffsynth_l2p.pipelines.loading import load_pipeline

    files = json.loads((Path(source_model[0]) / "files.json").read_text())
    model = {"dit": files["l2p_dit"], "text_encoder": files["text_encoder"], "tokenizer": files["tokenizer"]}
    return load_pipeline(model, device=device, torch_dtype=torch.float32)


def test_non_latent_sources_are_refused(source_dir):
    from diffsynth.pipelines.z_image import ZImagePipeline

    with pytest.raises(ValueError, match="not a latent image pipeline"):
        check_latent_pipeline(lambda prompt: None)
    with pytest.raises(ValueError, match="no VAE decoder loaded"):
        check_latent_pipeline(ZImagePipeline(device="cpu"))
    # The non-factory path: stock class + explicit model files, loaded by DiffSynth's registry.
    tiny_source_pipeline([source_dir], "cpu", torch.bfloat16)  # registers the tiny source hashes
    files = json.loads((Path(source_dir) / "files.json").read_text())
    spec = SourceSpec(
        source_model=(files["dit"], *files["text_encoder"]), tokenizer=files["tokenizer"], device="cpu"
    )
    with pytest.raises(ValueError, match="no VAE decoder loaded"):
        spec.load()


def test_resume_with_other_settings_or_prompts_is_refused(tmp_path, source_dir, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    out = tmp_path / "corpus"
    assert cli.main(_args(str(prompts), out, source_dir)) == 0
    assert "other settings" in _error(capsys, _args(str(prompts), out, source_dir, "--cfg_scale", "2"))
    prompts.write_text(PROMPTS[1] + "\n")
    assert "another prompt list" in _error(capsys, _args(str(prompts), out, source_dir))


def test_source_model_configs_for_a_z_image_turbo_folder(tmp_path):
    for name in ("transformer/a.safetensors", "transformer/b.safetensors", "text_encoder/c.safetensors"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="has no vae/diffusion_pytorch_model.safetensors"):
        source_model_configs([str(tmp_path)])
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    configs, tokenizer = source_model_configs([str(tmp_path)])
    assert [config.path for config in configs] == [
        [str(tmp_path / "transformer/a.safetensors"), str(tmp_path / "transformer/b.safetensors")],
        [str(tmp_path / "text_encoder/c.safetensors")],
        [str(tmp_path / "vae/diffusion_pytorch_model.safetensors")],
    ]
    assert tokenizer.path == str(tmp_path / "tokenizer")
    default, default_tokenizer = source_model_configs([])
    assert [config.origin_file_pattern for config in default][-1] == "vae/diffusion_pytorch_model.safetensors"
    assert default_tokenizer.model_id == "Tongyi-MAI/Z-Image-Turbo"
    with pytest.raises(FileNotFoundError, match="Source model path not found"):
        source_model_configs([str(tmp_path / "missing.safetensors")])


def test_a_failing_row_is_reported_and_a_broken_source_stops_the_run(tmp_path, source_pipe, monkeypatch):
    from diffsynth_l2p.data.synthesize import SourcePipelineError, synthesize

    settings = SynthesisSettings(height=SIZE, width=SIZE, num_inference_steps=STEPS)
    original = type(source_pipe).__call__

    def fails_on_second_prompt(self, prompt, **kwargs):
        if prompt == PROMPTS[1]:
            raise ValueError("this prompt cannot be encoded")
        return original(self, prompt=prompt, **kwargs)

    monkeypatch.setattr(type(source_pipe), "__call__", fails_on_second_prompt)
    summary = synthesize(source_pipe, [{"prompt": p} for p in PROMPTS[:3]], str(tmp_path / "a"), settings)
    assert summary.written == 2 and list(summary.failed) == [1]
    assert "cannot be encoded" in summary.failed[1]

    monkeypatch.setattr(type(source_pipe), "__call__", lambda self, **kwargs: "not an image")
    with pytest.raises(SourcePipelineError, match="not a PIL image"):
        synthesize(source_pipe, [{"prompt": p} for p in PROMPTS[:3]], str(tmp_path / "b"), settings)
    assert not os.path.exists(tmp_path / "b" / "images" / "000000.png")
