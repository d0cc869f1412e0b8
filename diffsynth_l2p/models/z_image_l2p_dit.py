"""``ZImageL2PDiT``: DiffSynth's Z-Image DiT in pixel space, with the L2P detailer head instead of a final layer."""

import math
from typing import List, Optional, Sequence

import torch
from diffsynth.models.z_image_dit import ZImageDiT

from .backbone import embed_timestep, image_token_features
from .detailer_head import DetailerHead


def _check_head_stages(stages: int, patch_size: int) -> None:
    """The head's bottleneck (1/2**stages of the image) must be the token grid, or finer when no power of 2 fits.

    Power-of-two patches (1K, 4K, 8K, tiny) put the bottleneck on the token grid; other patches (10K: 160)
    use fewer stages and nearest-upsample the DiT features to the bottleneck.
    """
    if patch_size & (patch_size - 1) == 0:
        if 2**stages != patch_size:
            raise ValueError(
                f"head_channels has {stages} stages, so the head's bottleneck is 1/{2**stages} of the image, "
                f"but the patch size is {patch_size}; use {patch_size.bit_length() - 1} stages."
            )
    elif 2**stages > patch_size:
        raise ValueError(
            f"head_channels has {stages} stages, so the head's bottleneck (1/{2**stages} of the image) is coarser "
            f"than the token grid of patch size {patch_size}; use at most {patch_size.bit_length() - 1} stages."
        )


class ZImageL2PDiT(ZImageDiT):
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
        self.patch_size = self.all_patch_size[0]
        _check_head_stages(len(head_channels), self.patch_size)
        self.local_decoder = DetailerHead(
            in_channels,
            in_channels,
            dim,
            channels=head_channels,
            decoder_channels=head_decoder_channels,
            bottleneck_channels=head_bottleneck_channels,
            stage_names=head_stage_names,
        )
        # Both the token grid and the head's pooling must tile the image exactly.
        self.size_multiple = math.lcm(self.patch_size, self.local_decoder.stride)

    def embed_timestep(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Stock sinusoidal embedding + MLP, computed in ``dtype`` (stock Z-Image hard-casts to bf16)."""
        return embed_timestep(self, t, dtype)

    def forward_features(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        cap_feats: List[torch.Tensor],
        use_gradient_checkpointing: bool = False,
        use_gradient_checkpointing_offload: bool = False,
    ) -> torch.Tensor:
        """Last-layer image-token features (no final norm or modulation) as a grid ``[B, dim, H/p, W/p]``."""
        batch, _, height, width = x.shape
        p = self.patch_size
        if height % self.size_multiple or width % self.size_multiple:
            unit = f"the patch size {p}"
            if self.size_multiple != p:
                unit = f"{self.size_multiple} (both the patch size {p} and the head stride {self.local_decoder.stride})"
            raise ValueError(f"Image size {height}x{width} must be a multiple of {unit}.")
        if len(cap_feats) != batch:
            raise ValueError(f"Got {len(cap_feats)} caption feature tensors for a batch of {batch} images.")
        features, _ = image_token_features(
            self, x, timestep, cap_feats, p, use_gradient_checkpointing, use_gradient_checkpointing_offload
        )  # (B, h*w, dim)
        return features.transpose(1, 2).reshape(batch, self.dim, height // p, width // p)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        cap_feats: List[torch.Tensor],
        use_gradient_checkpointing: bool = False,
        use_gradient_checkpointing_offload: bool = False,
    ) -> torch.Tensor:
        """Flow velocity ``noise - x0`` for noisy pixels ``x`` [B, 3, H, W] at scheduler timestep [B] (sigma*1000)."""
        features = self.forward_features(
            x, timestep, cap_feats, use_gradient_checkpointing, use_gradient_checkpointing_offload
        )
        # The head predicts x0 - noise; the scheduler and FlowMatchSFTLoss expect the velocity noise - x0.
        return -self.local_decoder(x, features, use_gradient_checkpointing, use_gradient_checkpointing_offload)
