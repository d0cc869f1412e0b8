from .detailer_head import DetailerHead
from .z_image_l2p_dit import ZImageL2PDiT

__all__ = ["DetailerHead", "ZImageL2PDiT"]
