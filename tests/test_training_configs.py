"""Per-config training defaults: the 1K release's for 1k/tiny, the UHR release's for 4k/8k/10k, detected from the
DiT file or named with --config; explicit settings win; a UHR run draws what the UHR release draws."""

import json
import os

import pytest
import torch
from diffsynth.diffusion import FlowMatchScheduler
from PIL import Image

from diffsynth_l2p.cli import build_parser, main
from diffsynth_l2p.models.configs import L2P_CONFIGS, TINY_TEXT_ENCODER_CONFIG
from diffsynth_l2p.registry import meta_model
from diffsynth_l2p.training.arguments import config_from_args
from diffsynth_l2p.training.trainer import TrainConfig, resolve_defaults
from tests.test_uhr_models import save_registered_dit, small_uhr_kwargs
from tests.training_helpers import run

EXPECTED = {  # (schedule length, noise, side multiple, pixel limit)
    "1k": (500, "seed", 16, 1024**2),
    "4k": (1000, "fresh", 64, 4096**2),
    "8k": (1000, "fresh", 128, 8192**2),
    "10k": (1000, "fresh", 320, 10240**2),
    "tiny": (500, "seed", 16, 1024**2),
}


@pytest.fixture(scope="module")
def dit_4k(tmp_path_factory) -> str:
    """A small registered DiT with the 4K head layout, as wide as the tiny text encoder."""
    width = TINY_TEXT_ENCODER_CONFIG["hidden_size"]
    kwargs = small_uhr_kwargs("4k", cap_feat_dim=width, axes_lens=(64, 64, 64))
    return save_registered_dit(kwargs, tmp_path_factory.mktemp("dit4k"))


def test_training_defaults_table():
    rows = {
        name: (c.train_num_timesteps, c.train_noise, c.train_size_multiple, c.train_max_pixels)
        for name, c in L2P_CONFIGS.items()
    }
    assert rows == EXPECTED
    for config in L2P_CONFIGS.values():  # the model runs on every size the dataset makes
        assert config.train_size_multiple % meta_model(**config.kwargs).size_multiple == 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_config_sets_the_defaults_and_flags_override(tmp_path, name):
    parser = build_parser()
    args = parser.parse_args(["train", "--dataset", str(tmp_path), "--config", name])
    config = config_from_args(args)
    assert (config.config, config.noise, config.num_timesteps, config.max_pixels) == (name, None, None, None)
    assert L2P_CONFIGS[name].training_settings() == dict(
        noise=EXPECTED[name][1], num_timesteps=EXPECTED[name][0], max_pixels=EXPECTED[name][3]
    )
    flags = ["--noise", "seed", "--num_timesteps", "7", "--max_pixels", "102400"]
    config = config_from_args(parser.parse_args(["train", "--dataset", str(tmp_path), "--config", name, *flags]))
    given = dict(noise=config.noise, num_timesteps=config.num_timesteps, max_pixels=config.max_pixels)
    assert L2P_CONFIGS[name].training_settings(**given) == dict(noise="seed", num_timesteps=7, max_pixels=102400)


def resolved(tmp_path, model, **settings) -> tuple:
    """(config, noise, schedule length, pixel limit) of a run on ``model`` with ``settings``."""
    config = resolve_defaults(TrainConfig(dataset=str(tmp_path), output_path=str(tmp_path), model=model, **settings))
    return config.config, config.noise, config.num_timesteps, config.max_pixels


def test_resolve_detects_the_config_from_the_dit_file(tmp_path, tiny_model_set, dit_4k):
    uhr = {**tiny_model_set, "dit": dit_4k}
    assert resolved(tmp_path, uhr) == ("4k", "fresh", 1000, 4096**2)
    assert resolved(tmp_path, tiny_model_set) == ("tiny", "seed", 500, 1024**2)
    assert resolved(tmp_path, tiny_model_set, config="1k") == ("1k", "seed", 500, 1024**2)
    assert resolved(tmp_path, uhr, config="4k", noise="seed", num_timesteps=20) == ("4k", "seed", 20, 4096**2)
    assert resolved(tmp_path, uhr, max_pixels=256**2) == ("4k", "fresh", 1000, 256**2)


def test_a_config_of_another_head_layout_or_too_few_pixels_is_refused(tmp_path, tiny_model_set, dit_4k):
    with pytest.raises(ValueError, match="--config 8k does not fit the DiT file, whose head has the tiny layout"):
        resolved(tmp_path, tiny_model_set, config="8k")
    with pytest.raises(ValueError, match="--max_pixels must be at least 4096 for config 4k .*got 1024"):
        resolved(tmp_path, {**tiny_model_set, "dit": dit_4k}, max_pixels=1024)


class Spy:
    """Records every ``add_noise`` (schedule length, timestep, noise, clean image) and ``set_timesteps`` call."""

    def __init__(self, monkeypatch) -> None:
        self.schedules, self.draws = [], []
        add_noise, set_timesteps = FlowMatchScheduler.add_noise, FlowMatchScheduler.set_timesteps

        def record_add_noise(scheduler, original, noise, timestep):
            self.draws.append((len(scheduler.timesteps), scheduler.timesteps, timestep, noise.clone(), original.shape))
            return add_noise(scheduler, original, noise, timestep)

        def record_set_timesteps(scheduler, *args, **kwargs):
            self.schedules.append((args, kwargs))
            return set_timesteps(scheduler, *args, **kwargs)

        monkeypatch.setattr(FlowMatchScheduler, "add_noise", record_add_noise)
        monkeypatch.setattr(FlowMatchScheduler, "set_timesteps", record_set_timesteps)


def write_unseeded_images(folder, count: int) -> str:
    """``count`` 200x150 noise images with ``image,prompt`` metadata (no seeds: fresh noise needs none)."""
    os.makedirs(folder, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        pixels = torch.randint(0, 256, (150, 200, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(os.path.join(folder, f"{i}.png"))
    with open(os.path.join(folder, "metadata.csv"), "w") as file:
        file.write("image,prompt\n" + "".join(f"{i}.png,a red circle\n" for i in range(count)))
    return str(folder)


def test_uhr_run_draws_from_a_1000_step_schedule_with_fresh_noise(tmp_path, tiny_model_set, dit_4k, monkeypatch):
    dataset = write_unseeded_images(tmp_path / "data", 3)
    spy = Spy(monkeypatch)
    summary = run(tmp_path / "out", dataset, {**tiny_model_set, "dit": dit_4k}, max_steps=3, save_steps=3, seed=5)
    assert summary["steps"] == 3
    recorded = json.loads((tmp_path / "out" / "training_args.json").read_text())
    assert (recorded["config"], recorded["noise"], recorded["num_timesteps"]) == ("4k", "fresh", 1000)
    assert [call for call in spy.schedules if call[1].get("training")] == [((1000,), dict(training=True, shift=3.0))]
    assert len(spy.draws) == 3
    for micro, (length, timesteps, timestep, noise, shape) in enumerate(spy.draws):
        assert length == 1000 and shape == (1, 3, 128, 192)  # 150x200 floored to multiples of 64
        # What the trainer's per-micro-batch generator gives: a timestep index, then fresh noise (no image seed).
        generator = torch.Generator().manual_seed((5 << 32) + micro)
        index = torch.randint(1000, (1,), generator=generator)
        assert timestep == timesteps[index].item()
        assert torch.equal(noise, torch.randn(shape, generator=generator))


@pytest.mark.parametrize("name", ["4k", "8k", "10k"])
def test_dry_run_prints_counts_memory_and_uhr_training_defaults(name, capsys):
    assert main(["train", "--dry-run", "--config", name]) == 0
    out = capsys.readouterr().out
    assert f"L2P DiT config {name!r}, preset 'release'" in out and "  trainable " in out
    assert "DeepSpeed ZeRO-2 bf16, 8 GPUs (train_run.sh)" in out
    multiple, pixels = EXPECTED[name][2], EXPECTED[name][3]
    assert out.rstrip().endswith(
        f"training: timesteps uniform over a 1000-step schedule (shift 3), fresh noise, image sides multiples of "
        f"{multiple}, at most {pixels:,} pixels"
    )


def test_dry_run_defaults_to_1k_and_shows_overrides(capsys):
    assert main(["train", "--dry-run", "--noise", "fresh", "--num_timesteps", "1000"]) == 0
    out = capsys.readouterr().out
    assert "L2P DiT config '1k'" in out and "trainable 2,548,257,795" in out
    assert "1000-step schedule (shift 3), fresh noise, image sides multiples of 16, at most 1,048,576 pixels" in out
