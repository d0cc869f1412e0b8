"""``QwenImageL2PDiT``: DiffSynth's Qwen-Image DiT in pixel space, with the L2P detailer head instead of its outputs.

DiffSynth's ``QwenImageDiT`` fixes its widths in its constructor, so :func:`assemble_backbone` puts the stock
modules (DiffSynth's own classes, under the stock names) together at any width: the released width for real
checkpoints, a small one for the tiny model set. :func:`image_token_features` runs them batched, as DiffSynth's
``model_fn_qwen_image`` does for one image, with a key-padding mask for prompts of different lengths.
:class:`QwenImageLatentDiT` is the stock latent layout at any width (what ``l2p convert`` recognises and converts).
"""

from typing import Any, List, Optional, Sequence, Tuple

import torch
from diffsynth.core.gradient import gradient_checkpoint_forward
from diffsynth.models.general_modules import AdaLayerNorm, RMSNorm, TimestepEmbeddings
from diffsynth.models.qwen_image_dit import (
    QwenEmbedLayer3DRope,
    QwenEmbedRope,
    QwenImageDiT,
    QwenImageTransformerBlock,
)
from einops import rearrange

from .pixel_dit import PixelDiTMixin

LATENT_CHANNELS = 16  # Qwen-Image's VAE latents, packed 2x2 into 64 features per token
PATCH_SIZE = 16  # RGB pixels per token side: the 8x VAE times the 2x2 packing


def assemble_backbone(
    module: torch.nn.Module,
    in_features: int,
    num_layers: int = 60,
    use_layer3d_rope: bool = False,
    use_additional_t_cond: bool = False,
    dim: int = 3072,
    num_attention_heads: int = 24,
    axes_dim: Sequence[int] = (16, 56, 56),
    text_dim: int = 3584,
) -> None:
    """Add ``QwenImageDiT``'s embedders and blocks to ``module`` at the given widths (defaults: the stock ones).

    ``in_features`` is the width of one image token (64 for 2x2-packed latents, 768 for 16x16 RGB patches).
    """
    if dim % num_attention_heads:
        raise ValueError(f"dim {dim} is not a multiple of num_attention_heads {num_attention_heads}.")
    head_dim = dim // num_attention_heads
    if sum(axes_dim) != head_dim or any(axis % 2 for axis in axes_dim):
        raise ValueError(f"axes_dim {tuple(axes_dim)} must be even widths summing to the head width {head_dim}.")
    rope_class = QwenEmbedLayer3DRope if use_layer3d_rope else QwenEmbedRope
    module.pos_embed = rope_class(theta=10000, axes_dim=list(axes_dim), scale_rope=True)
    module.time_text_embed = TimestepEmbeddings(
        256,
        dim,
        diffusers_compatible_format=True,
        scale=1000,
        align_dtype_to_timestep=False,
        use_additional_t_cond=use_additional_t_cond,
    )
    module.txt_norm = RMSNorm(text_dim, eps=1e-6)
    module.img_in = torch.nn.Linear(in_features, dim)
    module.txt_in = torch.nn.Linear(text_dim, dim)
    module.transformer_blocks = torch.nn.ModuleList(
        QwenImageTransformerBlock(dim=dim, num_attention_heads=num_attention_heads, attention_head_dim=head_dim)
        for _ in range(num_layers)
    )


def _key_padding_mask(lengths: Sequence[int], image_tokens: int, device: torch.device) -> Optional[torch.Tensor]:
    """SDPA mask ``[B, 1, 1, L + image_tokens]`` hiding the padded text rows, or None when no row is padded."""
    longest = max(lengths)
    if all(length == longest for length in lengths):
        return None
    text = torch.arange(longest, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    image = torch.ones(len(lengths), image_tokens, dtype=torch.bool, device=device)
    return torch.cat([text, image], dim=1)[:, None, None, :]  # joint order: [text, image]


def image_token_features(
    dit: QwenImageDiT,
    tokens: torch.Tensor,
    grid: Tuple[int, int],
    timestep: torch.Tensor,
    prompt_embeds: List[torch.Tensor],
    use_gradient_checkpointing: bool = False,
    use_gradient_checkpointing_offload: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Last-block image features ``[B, h*w, dim]`` and the time conditioning ``[B, dim]``.

    ``tokens`` are the patchified image ``[B, h*w, in_features]`` on the row-major token ``grid`` (h, w);
    ``timestep`` is the scheduler's ``sigma * 1000`` per sample; ``prompt_embeds`` one ``[L_i, text_dim]`` per
    sample. Prompts are padded to the longest and masked; a batch of one, or of equal lengths, has no mask.
    """
    batch, device = tokens.shape[0], tokens.device
    lengths = [len(embeds) for embeds in prompt_embeds]
    image = dit.img_in(tokens)
    text = torch.nn.utils.rnn.pad_sequence([e.to(device, tokens.dtype) for e in prompt_embeds], batch_first=True)
    text = dit.txt_in(dit.txt_norm(text))
    # As the stock model function: the scheduler's sigma*1000 over 1000, scaled back by the embedder (scale=1000).
    time_embedder = dit.time_text_embed
    extra_time = torch.zeros(batch, dtype=torch.long, device=device) if time_embedder.use_additional_t_cond else None
    conditioning = time_embedder(timestep.to(device).reshape(batch) / 1000, image.dtype, addition_t_cond=extra_time)
    # What every block sees besides the two streams: time conditioning, RoPE, the text padding mask.
    shared = dict(
        temb=conditioning,
        image_rotary_emb=dit.pos_embed([(1, *grid)], lengths, device=device),
        attention_mask=_key_padding_mask(lengths, image.shape[1], device),
    )
    checkpointing = (use_gradient_checkpointing, use_gradient_checkpointing_offload)
    for block in dit.transformer_blocks:
        text, image = gradient_checkpoint_forward(block, *checkpointing, image=image, text=text, **shared)
    return image, conditioning


class QwenImageLatentDiT(QwenImageDiT):
    """DiffSynth's latent ``QwenImageDiT`` layout at any width; the defaults build exactly ``QwenImageDiT()``.

    ``backbone`` takes :func:`assemble_backbone`'s sizes. Stock forward and ``model_fn_qwen_image`` run it unchanged;
    the tiny latent source model is one.
    """

    def __init__(self, **backbone: Any) -> None:
        torch.nn.Module.__init__(self)  # QwenImageDiT.__init__ would build the full-width model
        packed = LATENT_CHANNELS * 2 * 2
        assemble_backbone(self, packed, **backbone)
        dim = self.img_in.out_features
        self.norm_out = AdaLayerNorm(dim, single=True)
        self.proj_out = torch.nn.Linear(dim, packed)


class QwenImageL2PDiT(PixelDiTMixin, QwenImageDiT):
    """Pixel-space Qwen-Image DiT (L2P).  Defaults are the stock Qwen-Image widths (60 blocks of 3072).

    ``img_in`` embeds 16x16 RGB patches (768 features) instead of 2x2-packed latents, so the token grid is the
    latent model's; ``norm_out``/``proj_out`` are removed and the last block's image features feed the
    ``local_decoder`` detailer head, which also sees the noisy image.  The ``head_*`` arguments are
    ``DetailerHead``'s ``channels``, ``decoder_channels``, ``bottleneck_channels`` and ``stage_names``; ``backbone``
    takes :func:`assemble_backbone`'s sizes. Image sides must be multiples of ``size_multiple``.
    """

    def __init__(
        self,
        head_channels: Sequence[int] = (64, 128, 256, 512),
        head_decoder_channels: Optional[Sequence[int]] = None,
        head_bottleneck_channels: Optional[int] = None,
        head_stage_names: Optional[Sequence[str]] = None,
        **backbone: Any,
    ) -> None:
        torch.nn.Module.__init__(self)  # QwenImageDiT.__init__ would build the full-width latent model
        assemble_backbone(self, 3 * PATCH_SIZE**2, **backbone)
        self.dim = self.img_in.out_features
        self.attach_head(
            PATCH_SIZE, self.dim, 3, head_channels, head_decoder_channels, head_bottleneck_channels, head_stage_names
        )

    def forward_features(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: List[torch.Tensor],
        use_gradient_checkpointing: bool = False,
        use_gradient_checkpointing_offload: bool = False,
    ) -> torch.Tensor:
        """Last-block image-token features (no output norm or projection) as a grid ``[B, dim, H/16, W/16]``."""
        self.check_pixel_input(x, prompt_embeds)
        batch, _, height, width = x.shape
        p = self.patch_size
        grid = (height // p, width // p)
        tokens = rearrange(x, "B C (H P) (W Q) -> B (H W) (C P Q)", P=p, Q=p)
        features, _ = image_token_features(
            self, tokens, grid, timestep, prompt_embeds, use_gradient_checkpointing, use_gradient_checkpointing_offload
        )
        return features.transpose(1, 2).reshape(batch, self.dim, *grid)
