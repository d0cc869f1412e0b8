"""What every L2P pixel DiT adds to its latent DiffSynth DiT: the detailer head, input checks and the velocity.

A family's pixel DiT subclasses DiffSynth's own DiT class and this mixin (listed first), builds its backbone, calls
:meth:`PixelDiTMixin.attach_head` and implements ``forward_features`` (the last block's image-token features as a
grid); ``forward`` is shared (see ``docs/transfer.md``).
"""

import math
from typing import Callable, List, Optional, Sequence

import torch

from .detailer_head import DetailerHead


def check_head_stages(stages: int, patch_size: int) -> None:
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


class PixelDiTMixin:
    """The ``local_decoder`` head, the pixel-input checks and ``forward`` shared by the L2P DiTs."""

    patch_size: int
    local_decoder: DetailerHead
    size_multiple: int
    # Each family's DiT: (x, timestep, prompt_embeds, checkpointing flags) -> image features [B, D, H/p, W/p].
    forward_features: Callable[..., torch.Tensor]

    def attach_head(
        self,
        patch_size: int,
        feature_dim: int,
        channels: int = 3,
        head_channels: Sequence[int] = (64, 128, 256, 512),
        head_decoder_channels: Optional[Sequence[int]] = None,
        head_bottleneck_channels: Optional[int] = None,
        head_stage_names: Optional[Sequence[str]] = None,
    ) -> None:
        """Add ``local_decoder`` (``DetailerHead`` over ``channels``-channel images and ``feature_dim`` features)."""
        check_head_stages(len(head_channels), patch_size)
        self.patch_size = patch_size
        self.local_decoder = DetailerHead(
            channels,
            channels,
            feature_dim,
            channels=head_channels,
            decoder_channels=head_decoder_channels,
            bottleneck_channels=head_bottleneck_channels,
            stage_names=head_stage_names,
        )
        # Both the token grid and the head's pooling must tile the image exactly.
        self.size_multiple = math.lcm(patch_size, self.local_decoder.stride)

    def check_pixel_input(self, x: torch.Tensor, prompt_embeds: Sequence[torch.Tensor]) -> None:
        """Raise a ``ValueError`` unless ``x``'s sides tile the token grid and the head, one prompt per image."""
        batch, _, height, width = x.shape
        p = self.patch_size
        if height % self.size_multiple or width % self.size_multiple:
            unit = f"the patch size {p}"
            if self.size_multiple != p:
                unit = f"{self.size_multiple} (both the patch size {p} and the head stride {self.local_decoder.stride})"
            raise ValueError(f"Image size {height}x{width} must be a multiple of {unit}.")
        if len(prompt_embeds) != batch:
            raise ValueError(f"Got {len(prompt_embeds)} caption feature tensors for a batch of {batch} images.")

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: List[torch.Tensor],
        use_gradient_checkpointing: bool = False,
        use_gradient_checkpointing_offload: bool = False,
    ) -> torch.Tensor:
        """Flow velocity ``noise - x0`` for noisy pixels ``x`` [B, 3, H, W] at scheduler timestep [B] (sigma*1000).

        ``prompt_embeds`` holds one caption feature tensor ``[L_i, text width]`` per image.
        """
        features = self.forward_features(
            x, timestep, prompt_embeds, use_gradient_checkpointing, use_gradient_checkpointing_offload
        )
        # The head predicts x0 - noise; the scheduler and FlowMatchSFTLoss expect the velocity noise - x0.
        return -self.local_decoder(x, features, use_gradient_checkpointing, use_gradient_checkpointing_offload)
