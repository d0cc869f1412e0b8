"""``ZImageL2PDiT``: DiffSynth's Z-Image DiT in pixel space, with the L2P detailer head instead of a final layer."""

from typing import List, Optional, Sequence

import torch
from diffsynth.models.z_image_dit import ZImageDiT

from .backbone import embed_timestep, image_token_features
from .pixel_dit import PixelDiTMixin


class ZImageL2PDiT(PixelDiTMixin, ZImageDiT):
    """Pixel-space Z-Image DiT (L2P).  Defaults are the released 1K configuration (see ``configs.py`` for UHR).

    The stock ``all_final_layer`` is removed; the last layer's image-token features feed the
    ``local_decoder`` detailer head, which also sees the noisy image and returns pixels.  The ``head_*``
    arguments are ``DetailerHead``'s ``channels``, ``decoder_channels``, ``bottleneck_channels`` and
    ``stage_names``.  Image sizes must be multiples of ``size_multiple`` (the patch size, or 320 for 10K).
    """

    def __init__(
        self,
        all_patch_size: Sequence[int] = (16,),
        all_f_patch_size: Sequence[int] = (1,),
        in_channels: int = 3,
        dim: int = 3840,
        n_layers: int = 30,
        n_refiner_layers: int = 2,
        n_heads: int = 30,
        n_kv_heads: int = 30,
        norm_eps: float = 1e-5,
        qk_norm: bool = True,
        cap_feat_dim: int = 2560,
        rope_theta: float = 256.0,
        t_scale: float = 1000.0,
        axes_dims: Sequence[int] = (32, 48, 48),
        axes_lens: Sequence[int] = (1024, 512, 512),
        head_channels: Sequence[int] = (64, 128, 256, 512),
        head_decoder_channels: Optional[Sequence[int]] = None,
        head_bottleneck_channels: Optional[int] = None,
        head_stage_names: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__(
            all_patch_size=tuple(all_patch_size),
            all_f_patch_size=tuple(all_f_patch_size),
            in_channels=in_channels,
            dim=dim,
            n_layers=n_layers,
            n_refiner_layers=n_refiner_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            norm_eps=norm_eps,
            qk_norm=qk_norm,
            cap_feat_dim=cap_feat_dim,
            rope_theta=rope_theta,
            t_scale=t_scale,
            axes_dims=list(axes_dims),
            axes_lens=list(axes_lens),
        )
        if len(self.all_patch_size) != 1 or self.all_f_patch_size[0] != 1:
            raise ValueError("ZImageL2PDiT supports exactly one image patch size with f_patch_size 1.")
        del self.all_final_layer
        self.attach_head(
            self.all_patch_size[0],
            dim,
            in_channels,
            head_channels,
            head_decoder_channels,
            head_bottleneck_channels,
            head_stage_names,
        )

    def embed_timestep(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Stock sinusoidal embedding + MLP, computed in ``dtype`` (stock Z-Image hard-casts to bf16)."""
        return embed_timestep(self, t, dtype)

    def forward_features(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: List[torch.Tensor],
        use_gradient_checkpointing: bool = False,
        use_gradient_checkpointing_offload: bool = False,
    ) -> torch.Tensor:
        """Last-layer image-token features (no final norm or modulation) as a grid ``[B, dim, H/p, W/p]``."""
        self.check_pixel_input(x, prompt_embeds)
        batch, _, height, width = x.shape
        p = self.patch_size
        features, _ = image_token_features(
            self, x, timestep, prompt_embeds, p, use_gradient_checkpointing, use_gradient_checkpointing_offload
        )  # (B, h*w, dim)
        return features.transpose(1, 2).reshape(batch, self.dim, height // p, width // p)
