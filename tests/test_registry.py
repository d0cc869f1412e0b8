"""Registration into DiffSynth: hashes, idempotency, detection and loading through DiffSynth's own loader."""

import pytest
import torch
from diffsynth.configs import MODEL_CONFIGS, VRAM_MANAGEMENT_MODULE_MAPS
from diffsynth.core import ModelConfig, hash_model_file, hash_state_dict_keys
from diffsynth.core.vram.layers import AutoWrappedModule
from diffsynth.diffusion.base_pipeline import BasePipeline
from diffsynth.models.model_loader import ModelPool
from diffsynth.models.z_image_dit import ZImageDiT
from safetensors.torch import save_file
from tiny_checkpoints import write_header_only

from diffsynth_l2p.models import ZImageL2PDiT
from diffsynth_l2p.models.configs import L2P_CONFIGS
from diffsynth_l2p.pipelines.loading import native_size
from diffsynth_l2p.registry import (
    L2P_DIT_CLASS,
    L2P_DIT_MODEL_NAME,
    meta_hash,
    meta_model,
    meta_state_shapes,
    register_all,
    register_l2p_dit,
)

TINY = L2P_CONFIGS["tiny"].kwargs


def l2p_entries() -> list:
    return [entry for entry in MODEL_CONFIGS if entry["model_class"] == L2P_DIT_CLASS]


def save_tiny_checkpoint(path) -> dict:
    torch.manual_seed(0)
    model = ZImageL2PDiT(**TINY)
    state = {key: torch.randn_like(value) for key, value in model.state_dict().items()}
    save_file(state, str(path))
    return state


def test_import_registers_named_configs_idempotently():
    before = len(MODEL_CONFIGS)
    register_all()
    register_all()
    assert len(MODEL_CONFIGS) == before
    hashes = {entry["model_hash"] for entry in l2p_entries()}
    assert "577b2d3e0acea1fb784ca600f966805e" in hashes
    assert meta_hash(**TINY) in hashes
    assert all(entry["model_name"] == L2P_DIT_MODEL_NAME != "z_image_dit" for entry in l2p_entries())
    assert len(hashes) == len(l2p_entries())


def test_vram_map_covers_head_and_backbone_layers():
    module_map = VRAM_MANAGEMENT_MODULE_MAPS[L2P_DIT_CLASS]
    assert {"torch.nn.Linear", "torch.nn.Conv2d", "diffsynth.models.general_modules.RMSNorm"} <= set(module_map)


def test_custom_config_hash_is_computed_and_registered():
    kwargs = {**TINY, "n_layers": 3}
    model_hash = register_l2p_dit(**kwargs)
    assert model_hash != meta_hash(**TINY)
    assert register_l2p_dit(**kwargs) == model_hash
    matching = [entry for entry in l2p_entries() if entry["model_hash"] == model_hash]
    assert len(matching) == 1 and matching[0]["extra_kwargs"]["n_layers"] == 3


def test_diffsynth_model_pool_loads_tiny_checkpoint(tmp_path):
    path = tmp_path / "tiny_l2p.safetensors"
    state = save_tiny_checkpoint(path)
    assert hash_model_file(str(path)) == meta_hash(**TINY)
    pool = ModelPool()
    pool.auto_load_model(str(path), vram_config={**pool.default_vram_config(), "computation_dtype": torch.float32})
    model = pool.fetch_model(L2P_DIT_MODEL_NAME)
    assert type(model) is ZImageL2PDiT
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_pipeline_loader_with_offload_wraps_convs(tmp_path):
    path = tmp_path / "tiny_l2p.safetensors"
    save_tiny_checkpoint(path)
    pipe = BasePipeline(device="cpu", torch_dtype=torch.float32)
    config = ModelConfig(path=str(path), offload_device="cpu", offload_dtype=torch.float32)
    pool = pipe.download_and_load_models([config])
    managed = pool.fetch_model(L2P_DIT_MODEL_NAME)
    assert isinstance(managed.local_decoder.enc1[0], AutoWrappedModule)

    plain = ZImageL2PDiT(**TINY)
    plain.load_state_dict(save_tiny_checkpoint(tmp_path / "again.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    cap = [torch.randn(7, TINY["cap_feat_dim"])]
    with torch.no_grad():
        torch.testing.assert_close(managed(x, torch.tensor([500.0]), cap), plain(x, torch.tensor([500.0]), cap))


def test_meta_helpers_build_without_memory_and_match_a_real_model():
    model = meta_model(**TINY)
    assert type(model) is ZImageL2PDiT and all(p.device.type == "meta" for p in model.parameters())
    real = {key: tuple(value.shape) for key, value in ZImageL2PDiT(**TINY).state_dict().items()}
    assert meta_state_shapes(**TINY) == real
    assert meta_state_shapes(ZImageL2PDiT, **TINY) == real
    latent = meta_model(ZImageDiT, n_layers=2)
    assert type(latent) is ZImageDiT and len(latent.layers) == 2
    assert hash_state_dict_keys(meta_model().state_dict()) == L2P_CONFIGS["1k"].published_hash


@pytest.mark.parametrize("name", ["tiny", "1k", "4k", "unknown"])
def test_native_size_comes_from_the_registered_config(tmp_path, name):
    path = tmp_path / f"{name}.safetensors"
    if name == "unknown":
        save_file({"some.weight": torch.zeros(2)}, str(path))
        expected = (1024, 1024)
    else:
        config = L2P_CONFIGS[name]
        _, allocated = write_header_only(path, meta_state_shapes(**config.kwargs))
        if allocated > 100_000_000:
            pytest.skip("this filesystem has no sparse files")
        expected = (config.default_height, config.default_width)
    assert native_size(str(path)) == expected


def test_every_static_entry_hash_is_recomputed_on_the_meta_device():
    from diffsynth_l2p.models.text_encoder import TEXT_ENCODER_CLASS, Qwen3TextEncoder
    from diffsynth_l2p.registry import L2P_MODEL_CONFIGS, meta_model

    classes = {L2P_DIT_CLASS: ZImageL2PDiT, TEXT_ENCODER_CLASS: Qwen3TextEncoder}
    assert len(L2P_MODEL_CONFIGS) == 6
    for entry in L2P_MODEL_CONFIGS:
        model = meta_model(classes[entry["model_class"]], **entry["extra_kwargs"])
        assert hash_state_dict_keys(model.state_dict()) == entry["model_hash"], entry["extra_kwargs"]
