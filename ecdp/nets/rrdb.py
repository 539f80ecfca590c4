"""RRDB LR feature extractor (Wang et al. 2018, ESRGAN), as the released ECDP code uses it.

``RRDBEncoder``: conv 3->nf, then ``num_blocks`` residual-in-residual dense blocks
(3 dense blocks each, growth ``gc``, 5 convs, LeakyReLU 0.2, residual scale 0.2).
The outputs of four chosen blocks (``taps``) are concatenated to a
``4 * nf``-channel feature map at LR resolution (256 channels for nf = 64).

Two L1 regression models around the encoder:

* :class:`ReleasedRRDBNet`, ECDP's pretraining network as released
  (``lib/model/rrdbnet.py`` with ``conf/rrdbnet-*.yaml``): the head sits on the last
  block's features (the pretraining configs tap only the last block,
  ``rrdb_block_selection: [22]``, 64 channels): [nearest x2, conv, LeakyReLU 0.2] x
  log2(scale), conv, LeakyReLU, conv -> 3; no trunk conv, no long skip; PyTorch's
  default init.  The tapped blocks 1, 8, 15 are trained through the last block only.
* :class:`RRDBNet`, ESRGAN's (trunk conv, long skip, nearest-x2 upsampling convs,
  HR conv): SRDiff's encoder, and ECDP's with ``model.rrdb_head: esrgan``.

Initialisation of the dense blocks (``init``): ``released`` (ECDP: PyTorch's default
init, weights and biases x0.1) or ``esrgan`` (kaiming x0.1, zero biases; SRDiff).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
import torch.nn.functional as F


INITS = ("released", "esrgan")


class ResidualDenseBlock(nn.Module):
    def __init__(self, nf: int = 64, gc: int = 32, init: str = "esrgan"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"RRDB init must be one of {INITS}, got {init!r}")
        self.convs = nn.ModuleList(
            [nn.Conv2d(nf + i * gc, gc, 3, padding=1) for i in range(4)] + [nn.Conv2d(nf + 4 * gc, nf, 3, padding=1)]
        )
        with torch.no_grad():
            for conv in self.convs:
                if init == "esrgan":  # ESRGAN: kaiming scaled by 0.1, zero bias
                    nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
                    nn.init.zeros_(conv.bias)
                else:                 # released ECDP: default init, weight and bias x0.1
                    conv.bias.mul_(0.1)
                conv.weight.mul_(0.1)

    def forward(self, x: Tensor) -> Tensor:
        feats = [x]
        for conv in self.convs[:-1]:
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return x + 0.2 * self.convs[-1](torch.cat(feats, 1))


class RRDB(nn.Module):
    def __init__(self, nf: int = 64, gc: int = 32, init: str = "esrgan"):
        super().__init__()
        self.rdbs = nn.Sequential(*[ResidualDenseBlock(nf, gc, init) for _ in range(3)])

    def forward(self, x: Tensor) -> Tensor:
        return x + 0.2 * self.rdbs(x)


def default_taps(num_blocks: int) -> list[int]:
    """The released code's tap blocks: 23 -> [1, 8, 15, 22], 16 -> [1, 5, 10, 15], 8 -> [1, 3, 5, 7].

    For other depths: four blocks spread evenly from 1 to num_blocks - 1.
    """
    known = {23: [1, 8, 15, 22], 16: [1, 5, 10, 15], 8: [1, 3, 5, 7]}
    if num_blocks in known:
        return known[num_blocks]
    if num_blocks < 4:
        return list(range(num_blocks)) + [num_blocks - 1] * (4 - num_blocks)
    return [round(1 + i * (num_blocks - 2) / 3) for i in range(4)]


class RRDBEncoder(nn.Module):
    def __init__(self, num_blocks: int = 23, nf: int = 64, gc: int = 32, taps: list[int] | None = None, in_ch: int = 3,
                 init: str = "esrgan"):
        super().__init__()
        self.taps = list(taps) if taps is not None else default_taps(num_blocks)
        if len(self.taps) != 4 or max(self.taps) >= num_blocks:
            raise ValueError(f"need 4 tap blocks below {num_blocks}, got {self.taps}")
        self.conv_first = nn.Conv2d(in_ch, nf, 3, padding=1)
        self.blocks = nn.ModuleList([RRDB(nf, gc, init) for _ in range(num_blocks)])
        self.out_channels = 4 * nf

    def forward(self, lr: Tensor, return_last: bool = False):
        h = self.conv_first(lr)
        fea = h
        feats = []
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in self.taps:
                feats.extend([h] * self.taps.count(i))
        out = torch.cat(feats, 1)
        return (out, fea, h) if return_last else out


class RRDBNet(nn.Module):
    """ESRGAN's RRDBNet around :class:`RRDBEncoder`: the encoder's L1 pretraining model."""

    def __init__(self, scale: int = 4, num_blocks: int = 23, nf: int = 64, gc: int = 32, taps=None,
                 init: str = "esrgan"):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"RRDBNet supports x2, x4, x8, got {scale}")
        self.encoder = RRDBEncoder(num_blocks, nf, gc, taps, init=init)
        self.trunk_conv = nn.Conv2d(nf, nf, 3, padding=1)
        self.up_convs = nn.ModuleList([nn.Conv2d(nf, nf, 3, padding=1) for _ in range(int(math.log2(scale)))])
        self.hr_conv = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_last = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, lr: Tensor, return_features: bool = False):
        feats, fea, last = self.encoder(lr, return_last=True)
        h = fea + self.trunk_conv(last)
        for conv in self.up_convs:
            h = F.leaky_relu(conv(F.interpolate(h, scale_factor=2, mode="nearest")), 0.2)
        out = self.conv_last(F.leaky_relu(self.hr_conv(h), 0.2))
        return (out, feats) if return_features else out


class ReleasedRRDBNet(nn.Module):
    """ECDP's released pretraining network: :class:`RRDBEncoder` (``released`` init) and
    the head on the last block (module docstring); ``forward(lr) -> SR``."""

    def __init__(self, scale: int = 4, num_blocks: int = 23, nf: int = 64, gc: int = 32, taps=None):
        super().__init__()
        if scale not in (2, 4, 8):
            raise ValueError(f"RRDBNet supports x2, x4, x8, got {scale}")
        self.encoder = RRDBEncoder(num_blocks, nf, gc, taps, init="released")
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(scale))):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(nf, nf, 3, padding=1), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(nf, nf, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(nf, 3, 3, padding=1)]
        self.head = nn.Sequential(*layers)

    def forward(self, lr: Tensor) -> Tensor:
        _, _, last = self.encoder(lr, return_last=True)
        return self.head(last)


#: ECDP's pretraining heads (``model.rrdb_head``).
RRDB_HEADS = {"released": ReleasedRRDBNet, "esrgan": RRDBNet}
