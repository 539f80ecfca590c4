"""Peak autograd memory on any device: bytes of tensors saved for backward.

CPU PyTorch has no ``max_memory_allocated``; what the paper's O(s) vs O(1) memory
claim is about (eq. 19 through the adjoint method) is the activations autograd keeps
for the backward pass.  :class:`SavedTensorMeter` counts exactly those: every tensor
packed by autograd while the meter is active is counted until its graph is freed,
and the peak of the live total is reported.  On CUDA, ``peak_cuda`` adds the
allocator's own peak.
"""
from __future__ import annotations

import weakref

import torch


class _Packed:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


class SavedTensorMeter:
    """``with SavedTensorMeter() as m: loss = f(); loss.backward()`` then ``m.peak`` (bytes)."""

    def __init__(self):
        self.live = 0
        self.peak = 0
        self.peak_cuda = None

    def _pack(self, t: torch.Tensor):
        n = t.numel() * t.element_size()
        holder = _Packed(t.detach())  # no grad_fn: the holder must not form a reference cycle
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(holder, self._release, n)
        return holder

    def _release(self, n: int) -> None:
        self.live -= n

    @staticmethod
    def _unpack(holder: _Packed) -> torch.Tensor:
        return holder.tensor

    def __enter__(self):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        if torch.cuda.is_available():
            self.peak_cuda = torch.cuda.max_memory_allocated()
        return False
