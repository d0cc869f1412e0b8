"""Named ``ZImageL2PDiT`` configurations.

``1k`` is the released L2P checkpoint (``model-1k-merge.safetensors``); its published DiffSynth
hash is a fact about that file and is checked against a meta-device build in the tests.
``4k``, ``8k`` and ``10k`` are the later ultra-high-resolution checkpoints (Z-Image Base backbone, 64x64
token grid).  Only their hashes and a prose description were published; the head layouts below are the
ones whose meta-device hash equals the published hash (each was the single match of a bounded search).
``tiny`` is this project's CPU-sized model of the same class.

Each configuration also carries its sampling defaults, which ``ZImageL2PPipeline``, ``l2p generate`` and the demo
use unless the caller overrides them: the 1K release's (30 steps, CFG 2.0, shift by resolution) and the UHR
release's (50 steps, CFG 4.0, the scheduler's shift 3 at every size). It also carries the training defaults that
``l2p train`` and ``TrainConfig`` use unless given: the 1K release's (timesteps over a 500-step schedule, noise seeded
per image, sides in multiples of 16, at most 1024x1024 pixels) and the UHR release's (a 1000-step schedule, fresh
noise, sides in multiples of 64 or the head's size step, up to the native size).
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from ..validation import DEFAULT_MAX_PIXELS  # the 1K, 4K and tiny cap; 8K and 10K raise it to their native size

# The UHR release samples with 50 steps, CFG 4.0 and the scheduler's default shift at every resolution.
UHR_SAMPLING = dict(default_steps=50, default_cfg_scale=4.0, default_sigma_shift=3.0)
# The UHR release trains on timesteps uniform over a 1000-step schedule with fresh (unseeded) noise.
UHR_TRAINING = dict(train_num_timesteps=1000, train_noise="fresh")


@dataclass(frozen=True)
class L2PConfig:
    """Constructor kwargs for ``ZImageL2PDiT``, the checkpoint's DiffSynth hash when published, sampling defaults.

    ``default_sigma_shift=None`` means the pipeline's resolution rule (``default_sigma_shift(height, width)``);
    ``size_step`` is what image sides must be multiples of; ``max_pixels`` is the pipeline's pixel cap.
    The ``train_*`` fields are the training defaults (schedule length, noise mode, side multiple, pixel limit).
    """

    kwargs: Dict[str, Any] = field(default_factory=dict)
    published_hash: Optional[str] = None
    default_height: int = 1024
    default_width: int = 1024
    default_cfg_scale: float = 2.0  # the 1K release's examples
    default_steps: int = 30
    default_sigma_shift: Optional[float] = None
    # Guidance only at steps whose sigma is at most this (None: at every step, as the releases sample).
    default_cfg_max_sigma: Optional[float] = None
    default_seed: int = 42
    size_step: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    train_num_timesteps: int = 500
    train_noise: str = "seed"
    train_size_multiple: int = 16
    train_max_pixels: int = 1024 * 1024

    def training_settings(
        self, noise: Optional[str] = None, num_timesteps: Optional[int] = None, max_pixels: Optional[int] = None
    ) -> Dict[str, Any]:
        """``noise``, ``num_timesteps`` and ``max_pixels`` as given, each ``None`` replaced by this config's default."""
        return dict(
            noise=self.train_noise if noise is None else noise,
            num_timesteps=self.train_num_timesteps if num_timesteps is None else num_timesteps,
            max_pixels=self.train_max_pixels if max_pixels is None else max_pixels,
        )

    def layout(self) -> Tuple[Tuple[int, ...], Tuple[str, ...]]:
        """The patch sizes and head stage names: what tells the UHR heads apart whatever the backbone's width."""
        return layout_of(self.kwargs)


def layout_of(kwargs: Dict[str, Any]) -> Tuple[Tuple[int, ...], Tuple[str, ...]]:
    """``(all_patch_size, head_stage_names)`` of ``ZImageL2PDiT(**kwargs)`` (``()`` for the default stage names)."""
    return tuple(kwargs.get("all_patch_size", (16,))), tuple(kwargs.get("head_stage_names") or ())


L2P_1K = L2PConfig(kwargs={}, published_hash="577b2d3e0acea1fb784ca600f966805e")

# 4K: two full-resolution stages above the 1K head; decoder widths follow the encoder widths.
L2P_4K = L2PConfig(
    kwargs=dict(
        all_patch_size=(64,),
        head_channels=(16, 32, 64, 128, 256, 512),
        head_stage_names=("0", "0b", "1", "2", "3", "4"),
    ),
    published_hash="69e8fd5b562ea858b9f864508c1263b3",
    default_height=4096,
    default_width=4096,
    size_step=64,
    train_size_multiple=64,
    train_max_pixels=4096 * 4096,
    **UHR_SAMPLING,
    **UHR_TRAINING,
)

# 8K: the 4K head wrapped in one more stage (enc_8k 3->3, up_8k 16->16, dec_8k 16+3->16).
L2P_8K = L2PConfig(
    kwargs=dict(
        all_patch_size=(128,),
        head_channels=(3, 16, 32, 64, 128, 256, 512),
        head_decoder_channels=(16, 16, 32, 64, 128, 256, 512),
        head_stage_names=("_8k", "0", "0b", "1", "2", "3", "4"),
    ),
    published_hash="df0e4e865d39501e2fe96c7ea8aa40f6",
    default_height=8192,
    default_width=8192,
    size_step=128,
    max_pixels=8192 * 8192,
    train_size_multiple=128,  # lcm of the release's 64 and the head's size step
    train_max_pixels=8192 * 8192,
    **UHR_SAMPLING,
    **UHR_TRAINING,
)

# 10K: no enc4/up4/dec4; the bottleneck (256+3840->512) sits on a 160x160 grid and the 64x64 DiT
# features are nearest-upsampled to it; wrapped like 8K (enc_10k_a, up_10k_a, dec_10k_a).
L2P_10K = L2PConfig(
    kwargs=dict(
        all_patch_size=(160,),
        head_channels=(3, 16, 32, 64, 128, 256),
        head_decoder_channels=(16, 16, 32, 64, 128, 256),
        head_bottleneck_channels=512,
        head_stage_names=("_10k_a", "0", "0b", "1", "2", "3"),
    ),
    published_hash="e6094ba663b7c10011eb47db072ead0b",
    default_height=10240,
    default_width=10240,
    size_step=320,  # lcm of the patch size 160 and the head's stride 64
    max_pixels=10240 * 10240,
    train_size_multiple=320,  # lcm of the release's 64 and the head's size step
    train_max_pixels=10240 * 10240,
    **UHR_SAMPLING,
    **UHR_TRAINING,
)

L2P_TINY = L2PConfig(
    kwargs=dict(
        dim=128,
        n_layers=4,
        n_refiner_layers=1,
        n_heads=4,
        n_kv_heads=4,
        cap_feat_dim=64,
        axes_dims=(8, 12, 12),
        axes_lens=(1024, 128, 128),
        head_channels=(16, 32, 64, 128),
    ),
    default_height=64,
    default_width=64,
    default_cfg_scale=4.0,  # the shipped tiny-world student is scored at CFG 4 (docs/tiny-world.md)
    # no guidance while sigma > 0.8: at high noise it made the tiny-world teachers draw extra objects
    # (docs/tiny-world.md, "Guidance in a limited interval")
    default_cfg_max_sigma=0.8,
)

L2P_CONFIGS: Dict[str, L2PConfig] = {"1k": L2P_1K, "4k": L2P_4K, "8k": L2P_8K, "10k": L2P_10K, "tiny": L2P_TINY}


def config_for_kwargs(kwargs: Dict[str, Any]) -> L2PConfig:
    """The named configuration built with ``kwargs``; else the first with the same layout (other widths); else 1K."""
    for config in L2P_CONFIGS.values():
        if config.kwargs == kwargs:
            return config
    for config in L2P_CONFIGS.values():
        if config.layout() == layout_of(kwargs):
            return config
    return L2P_1K


# The tiny model sets' Qwen3 text encoder (``models/text_encoder.py``): hidden size = the tiny DiT's caption width;
# the vocabulary is the tiny word-level tokenizer's (``tiny.VOCABULARY``).
TINY_TEXT_ENCODER_CONFIG: Dict[str, Any] = dict(
    vocab_size=112,
    hidden_size=L2P_TINY.kwargs["cap_feat_dim"],
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=False,
    pad_token_id=0,
)

# Hash of the stock latent Z-Image DiT file (a DiffSynth registry fact), used to recognise it.
Z_IMAGE_TURBO_DIT_HASH = "fc3a8a1247fe185ce116ccbe0e426c28"
