"""The L2P models; submodules are imported on first use, so ``models.configs`` stays free of torch."""

from typing import Any

__all__ = ["DetailerHead", "ZImageL2PDiT"]


def __getattr__(name: str) -> Any:
    if name == "DetailerHead":
        from .detailer_head import DetailerHead

        return DetailerHead
    if name == "ZImageL2PDiT":
        from .z_image_l2p_dit import ZImageL2PDiT

        return ZImageL2PDiT
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
