"""Networks: the score U-Net with two heads (``unet``) and the RRDB LR encoder (``rrdb``)."""
from .rrdb import RRDB_HEADS, RRDBEncoder, RRDBNet, ReleasedRRDBNet
from .unet import UNet

__all__ = ["RRDB_HEADS", "RRDBEncoder", "RRDBNet", "ReleasedRRDBNet", "UNet"]
