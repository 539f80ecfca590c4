"""Networks: the score U-Net with two heads (``unet``) and the RRDB LR encoder (``rrdb``)."""
from .rrdb import RRDBEncoder, RRDBNet
from .unet import UNet

__all__ = ["RRDBEncoder", "RRDBNet", "UNet"]
