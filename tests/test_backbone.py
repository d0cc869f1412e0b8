"""The batched Z-Image backbone: equal to DiffSynth's own model function, and to DiffSynth's private helpers."""

import inspect

import torch
from diffsynth.models.z_image_dit import ZImageDiT
from diffsynth.pipelines.z_image import model_fn_z_image_turbo

from diffsynth_l2p.models.backbone import latent_velocity
from diffsynth_l2p.tiny import init_weights
from diffsynth_l2p.tiny_world.teacher import TEACHER_DIT_CONFIG


def test_latent_velocity_equals_the_stock_model_function_per_sample():
    dit = ZImageDiT(**TEACHER_DIT_CONFIG)
    init_weights(dit, 0)
    dit = dit.to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 16, 8, 8, generator=generator).to(torch.bfloat16)
    timestep = torch.tensor([999.0, 750.0, 300.0, 12.0]).to(torch.bfloat16)
    captions = [torch.randn(length, 64, generator=generator).to(torch.bfloat16) for length in (9, 12, 31, 40)]
    with torch.no_grad():
        batched = latent_velocity(dit, latents, timestep, captions)
        # 40 tokens pad to 64, the others to 32: the batch mixes padded lengths and must mask, not mix.
        single = [
            model_fn_z_image_turbo(dit, latents=latents[i : i + 1], timestep=timestep[i : i + 1], prompt_embeds=[c])
            for i, c in enumerate(captions)
        ]
    for i, reference in enumerate(single):
        torch.testing.assert_close(batched[i : i + 1].float(), reference.float(), atol=2e-2, rtol=0)
    # Equal padded lengths need no mask: the batch is then bit-identical to the stock function.
    torch.testing.assert_close(batched[:3], torch.cat(single[:3]), atol=0, rtol=0)


def test_diffsynth_private_helpers_keep_the_keywords_we_pass():
    """``image_token_features`` calls these private helpers by keyword; a DiffSynth change must fail here."""
    expected = {
        "_prepare_sequence": ["feats", "pos_ids", "inner_pad_mask", "pad_token", "noise_mask", "device"],
        "_build_unified_sequence": [
            "x", "x_freqs", "x_seqlens", "x_noise_mask", "cap", "cap_freqs", "cap_seqlens", "cap_noise_mask",
            "siglip", "siglip_freqs", "siglip_seqlens", "siglip_noise_mask", "omni_mode", "device",
        ],
    }
    for name, keywords in expected.items():
        parameters = list(inspect.signature(getattr(ZImageDiT, name)).parameters)[1:]
        assert parameters == keywords, name
