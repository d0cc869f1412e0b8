"""The tiny world's autoencoder: 8x down, 16 latent channels, a CPU-sized stand-in for the Flux VAE.

Both halves keep the Flux VAE's contract in DiffSynth's Z-Image pipeline: the encoder maps images in [-1, 1]
``[B, 3, H, W]`` to the DiT's latents ``[B, 16, H/8, W/8]``; the decoder maps them back.  Like ``FluxVAEDecoder``
(``latents / 0.3611 + 0.1159``), the normalisation between the DiT's latent space and the raw code lives inside
the modules: per-channel ``latent_mean`` / ``latent_std`` buffers, measured on data after training.
"""

from typing import Any

import torch
from torch import nn

from .reproducible_conv import ReproducibleConv2d

LATENT_CHANNELS = 16


def _conv(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Conv2d:
    return ReproducibleConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=(kernel_size - 1) // 2)


class _LatentNorm(nn.Module):
    """Per-channel statistics of the raw code; the DiT sees ``(code - mean) / std``."""

    def __init__(self, latent_channels: int) -> None:
        super().__init__()
        self.register_buffer("latent_mean", torch.zeros(latent_channels))
        self.register_buffer("latent_std", torch.ones(latent_channels))

    def normalize(self, code: torch.Tensor) -> torch.Tensor:
        return (code - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.latent_std[:, None, None] + self.latent_mean[:, None, None]


class TinyVAEEncoder(_LatentNorm):
    """Image ``[B, 3, H, W]`` in [-1, 1] -> normalised latents ``[B, 16, H/8, W/8]``."""

    def __init__(self, channels: tuple = (16, 32, 64), latent_channels: int = LATENT_CHANNELS) -> None:
        super().__init__(latent_channels)
        layers, previous = [], 3
        for width in channels:  # three stride-2 stages: 8x down
            layers += [ReproducibleConv2d(previous, width, 4, stride=2, padding=1), nn.SiLU()]
            previous = width
        layers += [_conv(previous, previous), nn.SiLU(), _conv(previous, latent_channels)]
        self.net = nn.Sequential(*layers)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The raw, unnormalised code."""
        return self.net(image)

    def forward(self, sample: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``FluxVAEEncoder``'s call; tiling kwargs are accepted and ignored (64x64 images need none)."""
        return self.normalize(self.encode(sample))


class TinyVAEDecoder(_LatentNorm):
    """Normalised latents ``[B, 16, h, w]`` -> image ``[B, 3, 8h, 8w]`` in about [-1, 1]."""

    def __init__(self, channels: tuple = (64, 32, 16), latent_channels: int = LATENT_CHANNELS) -> None:
        super().__init__(latent_channels)
        layers = [_conv(latent_channels, channels[0]), nn.SiLU(), _conv(channels[0], channels[0]), nn.SiLU()]
        previous = channels[0]
        for width in channels:  # three nearest-upsample stages: 8x up
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv(previous, width), nn.SiLU()]
            previous = width
        layers += [_conv(previous, 3)]
        self.net = nn.Sequential(*layers)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Image from the raw, unnormalised code."""
        return self.net(code)

    def forward(self, sample: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``FluxVAEDecoder``'s call; tiling kwargs are accepted and ignored (64x64 images need none)."""
        return self.decode(self.denormalize(sample))
