"""``Flux2L2PDiT``: DiffSynth's FLUX.2 DiT in pixel space, with the L2P detailer head instead of its output layers."""

from typing import Any, Dict, List, Optional, Sequence

import torch
from diffsynth.models.flux2_dit import Flux2DiT
from diffsynth.pipelines.flux2_image import Flux2Unit_ImageIDs, Flux2Unit_Qwen3PromptEmbedder
from einops import rearrange

from .pixel_dit import PixelDiTMixin

# DiffSynth's own position-id builders: image tokens (t=0, row, column, l=0), text tokens (0, 0, 0, index).
_IMAGE_IDS = Flux2Unit_ImageIDs()
_TEXT_IDS = Flux2Unit_Qwen3PromptEmbedder()


class ImageTokens(torch.nn.Module):
    """Stands in for the stock ``norm_out``: the last block's image tokens pass through unchanged (no parameters)."""

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """``hidden_states`` as given; ``temb`` (the stock final modulation's input) is not used."""
        return hidden_states


def _length_groups(lengths: Sequence[int]) -> Dict[int, List[int]]:
    """Sample indices grouped by prompt length, in first-seen order."""
    groups: Dict[int, List[int]] = {}
    for index, length in enumerate(lengths):
        groups.setdefault(length, []).append(index)
    return groups


class Flux2L2PDiT(PixelDiTMixin, Flux2DiT):
    """Pixel-space FLUX.2 DiT (L2P).  Defaults are FLUX.2-dev's sizes; ``configs`` in ``families/flux2.py`` has klein.

    The stock ``x_embedder`` is built for ``in_channels * patch_size**2`` pixel features per 16x16 patch; the stock
    ``norm_out`` and ``proj_out`` are replaced by parameterless pass-throughs, so DiffSynth's own forward returns the
    last single-stream block's image tokens, which feed the ``local_decoder`` detailer head (``head_channels`` are
    its stage widths).  ``embedded_guidance`` is the guidance value a guidance-distilled model (dev) is fed, the stock
    pipeline's default; klein has no guidance embedder.  Image sizes must be multiples of ``size_multiple``.
    """

    def __init__(
        self,
        patch_size: int = 16,
        in_channels: int = 3,
        embedded_guidance: float = 4.0,
        head_channels: Sequence[int] = (64, 128, 256, 512),
        **flux2_kwargs: Any,
    ) -> None:
        """``flux2_kwargs`` are ``Flux2DiT``'s (sizes, RoPE, ``guidance_embeds``); its ``in_channels`` is set here."""
        if "axes_dims_rope" in flux2_kwargs:  # a list when read back from a registry entry
            flux2_kwargs["axes_dims_rope"] = tuple(flux2_kwargs["axes_dims_rope"])
        super().__init__(in_channels=in_channels * patch_size * patch_size, **flux2_kwargs)
        self.norm_out = ImageTokens()
        self.proj_out = torch.nn.Identity()
        self.embedded_guidance = embedded_guidance
        self.attach_head(patch_size, self.inner_dim, in_channels, head_channels)

    def _guidance(self, batch: int, device: torch.device) -> Optional[torch.Tensor]:
        """The embedded guidance per sample (the stock DiT scales it by 1000), or None without a guidance embedder."""
        if self.time_guidance_embed.guidance_embedder is None:
            return None
        return torch.full((batch,), self.embedded_guidance, device=device)

    def forward_features(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        prompt_embeds: List[torch.Tensor],
        use_gradient_checkpointing: bool = False,
        use_gradient_checkpointing_offload: bool = False,
    ) -> torch.Tensor:
        """Last-block image-token features (no final norm) as a grid ``[B, inner_dim, H/p, W/p]``.

        The stock attention takes no mask, so prompts of different lengths run as separate stock forwards, one per
        length (the stock Qwen3 prompt unit pads every prompt to 512 tokens, so a pipeline batch is one forward).
        """
        self.check_pixel_input(x, prompt_embeds)
        batch, _, height, width = x.shape
        p = self.patch_size
        rows, columns = height // p, width // p
        tokens = rearrange(x, "b c (h p) (w q) -> b (h w) (c p q)", p=p, q=p)
        image_ids = _IMAGE_IDS.prepare_latent_ids(rows, columns).to(x.device)
        sigma = timestep.to(x.device) / 1000  # as the stock model function passes it; the DiT scales it back
        outputs, order = [], []
        for indices in _length_groups([len(embeds) for embeds in prompt_embeds]).values():
            text = torch.stack([prompt_embeds[i] for i in indices]).to(x.device, x.dtype)
            picked = torch.tensor(indices, device=x.device)
            outputs.append(
                Flux2DiT.forward(
                    self,
                    hidden_states=tokens[picked],
                    encoder_hidden_states=text,
                    timestep=sigma[picked],
                    img_ids=image_ids,
                    txt_ids=_TEXT_IDS.prepare_text_ids(text).to(x.device),
                    guidance=self._guidance(len(indices), x.device),
                    use_gradient_checkpointing=use_gradient_checkpointing,
                    use_gradient_checkpointing_offload=use_gradient_checkpointing_offload,
                )
            )  # (n, h*w, inner_dim)
            order += indices
        features = outputs[0] if len(outputs) == 1 else torch.cat(outputs)[torch.tensor(order).argsort()]
        return features.transpose(1, 2).reshape(batch, self.inner_dim, rows, columns)
