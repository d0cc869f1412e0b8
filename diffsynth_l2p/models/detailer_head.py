"""The L2P detailer head: a small conv U-Net that turns DiT features into pixel velocities.

The head sees the noisy RGB image at full resolution and the DiT's last-layer
image-token features at the bottleneck.  Module names and ``Sequential`` indices
follow the released checkpoints (``local_decoder.*``).
"""

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffsynth.core.gradient import gradient_checkpoint_forward


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


def _upsample(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv3x3(in_channels, out_channels))


class DetailerHead(nn.Module):
    """Conv U-Net with ``len(channels)`` resolution stages and the DiT features injected at the bottleneck.

    Stages are listed from full resolution down.  Stage ``s`` (named ``stage_names[i]``) holds
    ``enc{s} = [Conv3x3(prev -> channels[i]), SiLU]`` and ``pool{s}`` on the way down, and on the way up
    ``up{s} = [Upsample, Conv3x3(incoming -> decoder_channels[i])]`` and
    ``dec{s} = [Conv3x3(decoder_channels[i] + channels[i] -> decoder_channels[i - 1]), SiLU]`` (the top stage
    keeps its width).  ``incoming`` is the bottleneck width for the deepest stage.

    The defaults are the released 1K head (10,085,123 parameters).  The UHR heads add stages above it with
    other names (``enc0``, ``enc0b``, ``enc_8k``, ...), see ``configs.py``.  The bottleneck grid is the input
    size divided by ``stride = 2 ** len(channels)``; features of another size are nearest-resized to it.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        feature_dim: int = 3840,
        channels: Sequence[int] = (64, 128, 256, 512),
        decoder_channels: Optional[Sequence[int]] = None,
        bottleneck_channels: Optional[int] = None,
        stage_names: Optional[Sequence[str]] = None,
    ) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.decoder_channels = tuple(decoder_channels or self.channels)
        self.bottleneck_channels = bottleneck_channels or self.channels[-1]
        self.stage_names = tuple(stage_names or (str(i) for i in range(1, len(self.channels) + 1)))
        self.num_stages = len(self.channels)
        self.stride = 2**self.num_stages
        if not len(self.decoder_channels) == len(self.stage_names) == self.num_stages:
            raise ValueError(
                f"channels, decoder_channels and stage_names need one entry per stage; got {self.num_stages}, "
                f"{len(self.decoder_channels)} and {len(self.stage_names)}."
            )

        widths = (in_channels, *self.channels)
        for i, name in enumerate(self.stage_names):
            self.add_module(f"enc{name}", nn.Sequential(_conv3x3(widths[i], widths[i + 1]), nn.SiLU()))
            self.add_module(f"pool{name}", nn.MaxPool2d(2))
        self.bottleneck = nn.Sequential(
            nn.Conv2d(self.channels[-1] + feature_dim, self.bottleneck_channels, kernel_size=1), nn.SiLU()
        )
        incoming = self.bottleneck_channels
        for i in reversed(range(self.num_stages)):
            name, width = self.stage_names[i], self.decoder_channels[i]
            outgoing = self.decoder_channels[max(i - 1, 0)]
            self.add_module(f"up{name}", _upsample(incoming, width))
            self.add_module(f"dec{name}", nn.Sequential(_conv3x3(width + self.channels[i], outgoing), nn.SiLU()))
            incoming = outgoing
        self.out_conv = nn.Conv2d(incoming, out_channels, kernel_size=1)

    def forward(
        self,
        image: torch.Tensor,
        features: torch.Tensor,
        use_gradient_checkpointing: bool = False,
        use_gradient_checkpointing_offload: bool = False,
    ) -> torch.Tensor:
        """``image`` [B, C, H, W] and ``features`` [B, feature_dim, h, w] -> [B, out_channels, H, W]."""
        height, width = image.shape[-2:]
        if height % self.stride or width % self.stride:
            raise ValueError(
                f"The detailer head halves the image {self.num_stages} times; {height}x{width} must be a multiple "
                f"of {self.stride}."
            )

        def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return gradient_checkpoint_forward(
                module, use_gradient_checkpointing, use_gradient_checkpointing_offload, x
            )

        skips = []
        x = image
        for name in self.stage_names:
            x = run(getattr(self, f"enc{name}"), x)
            skips.append(x)
            x = getattr(self, f"pool{name}")(x)
        if features.shape[-2:] != x.shape[-2:]:
            features = F.interpolate(features, size=x.shape[-2:], mode="nearest")
        x = run(self.bottleneck, torch.cat([x, features.to(x.dtype)], dim=1))  # (B, bottleneck, H/stride, W/stride)
        for name, skip in zip(reversed(self.stage_names), reversed(skips), strict=True):
            x = run(getattr(self, f"up{name}"), x)
            x = run(getattr(self, f"dec{name}"), torch.cat([x, skip], dim=1))
        return self.out_conv(x)
