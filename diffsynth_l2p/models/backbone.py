"""The Z-Image backbone run batched: image + caption tokens through DiffSynth's own submodules.

Both the pixel DiT (:class:`~diffsynth_l2p.models.z_image_l2p_dit.ZImageL2PDiT`) and the latent teacher of the tiny
world use :func:`image_token_features`; :func:`latent_velocity` adds the stock final layer, so it computes what
DiffSynth's ``model_fn_z_image_turbo`` computes, for a whole batch at once (see ``docs/architecture.md``).
"""

from typing import List, Optional, Tuple

import torch
from diffsynth.core.gradient import gradient_checkpoint_forward
from diffsynth.models.z_image_dit import ZImageDiT


def _cast_timestep_embedding(module: torch.nn.Module, args: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, ...]:
    return (args[0].to(module[0].weight.dtype),)


def run_time_embedder_in_weight_dtype(dit: ZImageDiT) -> ZImageDiT:
    """Let the stock ``ZImageDiT`` run in fp32: its time embedder hard-casts its input to bf16, this casts it back.

    A no-op for bf16 weights.  CPUs without bf16 units run bf16 matmuls several times slower than fp32, so the
    tiny world and ``l2p synthesize`` on the CPU compute in fp32 (docs/tiny-world.md).
    """
    if not getattr(dit.t_embedder.mlp, "_l2p_casts_input", False):
        dit.t_embedder.mlp.register_forward_pre_hook(_cast_timestep_embedding)
        dit.t_embedder.mlp._l2p_casts_input = True
    return dit


def _key_padding_mask(mask: torch.Tensor) -> Optional[torch.Tensor]:
    """[B, S] validity mask -> SDPA mask [B, 1, 1, S], or None when nothing is masked.

    A single sequence is never padded against another, so batch 1 needs no look at the values (no device sync,
    and meta tensors work).
    """
    if mask.shape[0] == 1 or bool(mask.all()):
        return None
    return mask[:, None, None, :]


def _batched_sequence(
    dit: ZImageDiT,
    tokens: List[torch.Tensor],
    embedder: torch.nn.Module,
    pos_ids: List[torch.Tensor],
    pad_mask: List[torch.Tensor],
    pad_token: torch.nn.Parameter,
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], List[int]]:
    """Embed per-sample token rows, put the pad token on padded rows, batch them with RoPE and a key mask."""
    seqlens = [len(t) for t in tokens]
    embedded = embedder(torch.cat(tokens, dim=0))
    feats, freqs, mask, _, _ = dit._prepare_sequence(
        feats=list(embedded.split(seqlens)),
        pos_ids=pos_ids,
        inner_pad_mask=pad_mask,
        pad_token=pad_token,
        noise_mask=None,
        device=embedded.device,
    )
    return feats, freqs, _key_padding_mask(mask), seqlens


def embed_timestep(dit: ZImageDiT, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Stock sinusoidal embedding + MLP, computed in ``dtype`` (stock Z-Image hard-casts to bf16)."""
    freq = dit.t_embedder.timestep_embedding(t, dit.t_embedder.frequency_embedding_size)
    return dit.t_embedder.mlp(freq.to(dtype))


def image_token_features(
    dit: ZImageDiT,
    x: torch.Tensor,
    timestep: torch.Tensor,
    cap_feats: List[torch.Tensor],
    patch_size: int,
    use_gradient_checkpointing: bool = False,
    use_gradient_checkpointing_offload: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Last-layer features of the real image tokens ``[B, h*w, dim]`` and the time embedding ``[B, 256]``.

    ``x`` is ``[B, C, H, W]`` (pixels or latents), ``timestep`` the scheduler's ``sigma * 1000`` per sample.
    Each sequence is padded to a multiple of 32 with the learned pad tokens, as in the stock model function;
    samples whose padded caption lengths differ are masked, not mixed.
    """
    batch, _, height, width = x.shape
    p = patch_size
    checkpointing = dict(
        use_gradient_checkpointing=use_gradient_checkpointing,
        use_gradient_checkpointing_offload=use_gradient_checkpointing_offload,
    )
    device = x.device
    # The DiT's clock runs the other way: scheduler sigma*1000 -> t_scale*(1 - sigma) (1000 - timestep at 1000).
    sigma_scaled = timestep.to(device).reshape(batch) * (dit.t_scale / 1000)
    adaln_input = embed_timestep(dit, dit.t_scale - sigma_scaled, x.dtype)

    image_tokens, caption_tokens, meta = dit.patchify_and_embed(
        [sample.unsqueeze(1) for sample in x], [c.to(device, x.dtype) for c in cap_feats], p, 1
    )
    img, img_freqs, img_mask, x_seqlens = _batched_sequence(
        dit, image_tokens, dit.all_x_embedder[f"{p}-1"], meta["x_pos_ids"], meta["x_pad_mask"], dit.x_pad_token
    )
    for layer in dit.noise_refiner:
        img = gradient_checkpoint_forward(
            layer, x=img, attn_mask=img_mask, freqs_cis=img_freqs, adaln_input=adaln_input, **checkpointing
        )

    cap, cap_freqs, cap_mask, cap_seqlens = _batched_sequence(
        dit, caption_tokens, dit.cap_embedder, meta["cap_pos_ids"], meta["cap_pad_mask"], dit.cap_pad_token
    )
    for layer in dit.context_refiner:
        cap = gradient_checkpoint_forward(layer, x=cap, attn_mask=cap_mask, freqs_cis=cap_freqs, **checkpointing)

    # Unified sequence [image, caption] per sample (image first, as in the stock non-Omni model function).
    unified, unified_freqs, unified_mask, _ = dit._build_unified_sequence(
        x=img,
        x_freqs=img_freqs,
        x_seqlens=x_seqlens,
        x_noise_mask=None,
        cap=cap,
        cap_freqs=cap_freqs,
        cap_seqlens=cap_seqlens,
        cap_noise_mask=None,
        siglip=None,
        siglip_freqs=None,
        siglip_seqlens=None,
        siglip_noise_mask=None,
        omni_mode=False,
        device=device,
    )
    unified_mask = _key_padding_mask(unified_mask)
    for layer in dit.layers:
        unified = gradient_checkpoint_forward(
            layer,
            x=unified,
            attn_mask=unified_mask,
            freqs_cis=unified_freqs,
            adaln_input=adaln_input,
            **checkpointing,
        )
    # Slice the real image tokens (not the 32-padded length), so any multiple of the patch size works.
    return unified[:, : (height // p) * (width // p)], adaln_input


def latent_velocity(
    dit: ZImageDiT, latents: torch.Tensor, timestep: torch.Tensor, cap_feats: List[torch.Tensor]
) -> torch.Tensor:
    """Flow velocity ``noise - x0`` of a stock latent ``ZImageDiT`` (patch 2) for a batch ``[B, C, H, W]``.

    Equal to DiffSynth's ``model_fn_z_image_turbo`` run one sample at a time (which treats a batch as frames).
    """
    batch, channels, height, width = latents.shape
    tokens, adaln_input = image_token_features(dit, latents, timestep, cap_feats, patch_size=2)
    out = dit.all_final_layer["2-1"](tokens, adaln_input)  # (B, h*w, 2*2*C)
    out = out.view(batch, height // 2, width // 2, 2, 2, channels).permute(0, 5, 1, 3, 2, 4)
    return -out.reshape(batch, channels, height, width)
