"""The L2P detailer head: a small conv U-Net that turns DiT features into pixel velocities.

The head sees the noisy RGB image at full resolution and the DiT's last-layer
image-token features at the bottleneck (the token grid).  Module names and
``Sequential`` indices follow the released checkpoint (``local_decoder.*``).
"""

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffsynth.core.gradient import gradient_checkpoint_forward


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def _upsample(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv3x3(channels, channels))


class DetailerHead(nn.Module):
    """Conv U-Net with ``len(channels)`` resolution stages and the DiT features injected at the bottleneck.

    With ``channels=(64, 128, 256, 512)`` and ``feature_dim=3840`` this is the released 1K head
    (10,085,123 parameters).  The bottleneck grid is the input size divided by ``2 ** len(channels)``,
    which equals the DiT token grid when that product is the patch size.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        feature_dim: int = 3840,
        channels: Sequence[int] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.num_stages = len(self.channels)
        widths = (in_channels, *self.channels)
        for i in range(1, self.num_stages + 1):
            self.add_module(f"enc{i}", nn.Sequential(_conv3x3(widths[i - 1], widths[i]), nn.SiLU()))
            self.add_module(f"pool{i}", nn.MaxPool2d(2))
        deepest = self.channels[-1]
        self.bottleneck = nn.Sequential(nn.Conv2d(deepest + feature_dim, deepest, kernel_size=1), nn.SiLU())
        for i in range(self.num_stages, 0, -1):
            # Stage i upsamples from width c_i and merges the skip of width c_i; it outputs c_{i-1} (c_1 at the top).
            self.add_module(f"up{i}", _upsample(widths[i]))
            self.add_module(f"dec{i}", nn.Sequential(_conv3x3(2 * widths[i], widths[max(i - 1, 1)]), nn.SiLU()))
        self.out_conv = nn.Conv2d(self.channels[0], out_channels, kernel_size=1)

    def forward(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        use_gradient_checkpointing: bool = False,
        use_gradient_checkpointing_offload: bool = False,
    ) -> torch.Tensor:
        """``image`` [B, C, H, W] and ``features`` [B, feature_dim, h, w] -> [B, out_channels, H, W]."""

        def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return gradient_checkpoint_forward(
                module, use_gradient_checkpointing, use_gradient_checkpointing_offload, x
            )

        skips = []
        x = image
        for i in range(1, self.num_stages + 1):
            x = run(getattr(self, f"enc{i}"), x)
            skips.append(x)
            x = getattr(self, f"pool{i}")(x)
        if features.shape[-2:] != x.shape[-2:]:
            features = F.interpolate(features, size=x.shape[-2:], mode="nearest")
        x = run(self.bottleneck, torch.cat([x, features.to(x.dtype)], dim=1))
        for i in range(self.num_stages, 0, -1):
            x = run(getattr(self, f"up{i}"), x)
            x = run(getattr(self, f"dec{i}"), torch.cat([x, skips[i - 1]], dim=1))
        return self.out_conv(x)
