"""Named ``ZImageL2PDiT`` configurations.

``1k`` is the released L2P checkpoint (``model-1k-merge.safetensors``); its published DiffSynth
hash is a fact about that file and is checked against a meta-device build in the tests.
``tiny`` is this project's CPU-sized model of the same class.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class L2PConfig:
    """Constructor kwargs for ``ZImageL2PDiT`` and, when published, the checkpoint's DiffSynth hash."""

    kwargs: Dict[str, Any] = field(default_factory=dict)
    published_hash: Optional[str] = None
    default_height: int = 1024
    default_width: int = 1024


L2P_1K = L2PConfig(kwargs={}, published_hash="577b2d3e0acea1fb784ca600f966805e")

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
)

L2P_CONFIGS: Dict[str, L2PConfig] = {"1k": L2P_1K, "tiny": L2P_TINY}

# Hashes of the stock latent Z-Image files (DiffSynth registry facts), used to recognise them.
Z_IMAGE_TURBO_DIT_HASH = "fc3a8a1247fe185ce116ccbe0e426c28"
Z_IMAGE_TEXT_ENCODER_HASH = "0f050f62a88876fea6eae0a18dac5a2e"
