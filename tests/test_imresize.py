"""MATLAB-compatible bicubic imresize: checked against PIL (interior), an independent
loop-based port of MATLAB's ``contributions`` (whole image, boundaries included) and
facts every bicubic resize must satisfy."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ecdp.imresize import bicubic_upsample, imresize, resize_weights


# ---------------------------------------------------------------- reference (numpy, loops)
def ref_cubic(x):
    a = abs(x)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def ref_contributions(in_len, out_len, scale, antialias=True):
    """Literal transcription of MATLAB imresize.m ``contributions``: per output pixel
    a list of (1-based input index after mirroring, weight), plus whether the
    unmirrored window stayed inside the image."""
    if scale < 1 and antialias:
        h = lambda d: scale * ref_cubic(scale * d)  # noqa: E731
        width = 4.0 / scale
    else:
        h, width = ref_cubic, 4.0
    P = math.ceil(width) + 2
    aux = list(range(1, in_len + 1)) + list(range(in_len, 0, -1))
    rows, inside = [], []
    for i in range(1, out_len + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        idx = [left + p for p in range(P)]
        w = [h(u - j) for j in idx]
        s = sum(w)
        w = [v / s for v in w]
        inside.append(all(1 <= j <= in_len for j, v in zip(idx, w) if v != 0))
        rows.append([(aux[(j - 1) % (2 * in_len)], v) for j, v in zip(idx, w)])
    return rows, np.array(inside)


def ref_resize_1d(a, axis, out_len, scale):
    a = np.moveaxis(a, axis, 0)
    rows, _ = ref_contributions(a.shape[0], out_len, scale)
    out = np.zeros((out_len,) + a.shape[1:])
    for i, row in enumerate(rows):
        for j, v in row:
            out[i] += v * a[j - 1]
    return np.moveaxis(out, 0, axis)


def ref_imresize(img, scale):
    """(H, W) float64, MATLAB order: smallest scale first (equal -> rows first)."""
    oh, ow = math.ceil(scale * img.shape[0]), math.ceil(scale * img.shape[1])
    out = ref_resize_1d(img, 0, oh, scale)
    return ref_resize_1d(out, 1, ow, scale)


def interior(in_len, out_len, scale):
    return ref_contributions(in_len, out_len, scale)[1]


# ---------------------------------------------------------------- tests
@pytest.mark.parametrize("scale", [0.25, 0.5, 1 / 3, 2, 3, 4])
def test_interior_matches_pil_bicubic(scale):
    # PIL's BICUBIC is the a=-0.5 kernel, antialiased when downscaling, same pixel
    # centres; it clips the window at borders (renormalising) instead of mirroring.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 48, 72, generator=g, dtype=torch.float64)
    y = imresize(x, scale=scale)
    oh, ow = y.shape[-2:]
    assert (oh, ow) == (math.ceil(48 * scale), math.ceil(72 * scale))
    rows, cols = interior(48, oh, scale), interior(72, ow, scale)
    assert rows.sum() > 2 and cols.sum() > 2
    for c in range(3):
        pil = Image.fromarray(x[c].numpy().astype(np.float32), "F").resize((ow, oh), Image.BICUBIC)
        p = np.asarray(pil, dtype=np.float64)
        d = np.abs(p - y[c].numpy())[np.ix_(rows, cols)]
        assert d.max() < 1e-5, (scale, d.max())
        # the borders really differ (symmetric padding is not PIL's clipping)
    full = np.abs(np.asarray(Image.fromarray(x[0].numpy().astype(np.float32), "F").resize((ow, oh), Image.BICUBIC))
                  - y[0].numpy()).max()
    assert full > 1e-3


@pytest.mark.parametrize("scale,shape", [(0.25, (13, 10)), (0.5, (7, 9)), (4, (5, 6)), (1 / 3, (12, 17)), (2, (1, 4))])
def test_whole_image_matches_matlab_contributions(scale, shape):
    rng = np.random.default_rng(1)
    img = rng.random(shape)
    ref = ref_imresize(img, scale)
    out = imresize(torch.from_numpy(img)[None], scale=scale)[0].numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_boundary_is_symmetric_padding():
    # an upscaled step at the left border: MATLAB mirrors (edge repeated), so a
    # constant first two pixels give exactly that constant near the edge
    x = torch.tensor([[[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64)
    y = imresize(x, size=(1, 24))
    assert torch.allclose(y[..., :2], torch.ones(2, dtype=torch.float64), atol=1e-12)
    # zero padding or edge-clipping-without-mirroring would not give the same
    w = resize_weights(6, 24)
    assert torch.allclose(w.sum(1), torch.ones(24, dtype=torch.float64))
    assert w[0, 0] > 1.0   # first row: the mirrored taps fold onto pixel 1 (plus the negative lobe on pixel 2)


def test_constant_image_stays_constant():
    for scale in (0.25, 1 / 3, 0.5, 2, 4):
        x = torch.full((2, 3, 21, 34), 0.37)
        y = imresize(x, scale=scale)
        assert torch.allclose(y, torch.full_like(y, 0.37), atol=1e-6)


def test_x4_down_shapes_and_batching():
    x = torch.rand(2, 3, 160, 124)
    y = imresize(x, scale=0.25)
    assert y.shape == (2, 3, 40, 31)
    assert imresize(x[0], scale=0.25).shape == (3, 40, 31)
    torch.testing.assert_close(imresize(x[1], scale=0.25), y[1])
    assert imresize(torch.rand(3, 161, 125), scale=0.25).shape == (3, 41, 32)   # ceil
    assert imresize(torch.rand(3, 178, 178), size=(160, 160)).shape == (3, 160, 160)
    assert imresize(torch.rand(3, 100, 50), size=(None, 25)).shape == (3, 50, 25)


def test_linear_ramp_downscale():
    # interior of a ramp x[j] = j is reproduced exactly: output i samples u = 4 i + 1.5 (0-based)
    x = torch.arange(64, dtype=torch.float64).repeat(3, 8, 1)
    y = imresize(x, scale=0.25)
    expected = 4 * torch.arange(16, dtype=torch.float64) + 1.5
    torch.testing.assert_close(y[0, 0, 4:-4], expected[4:-4], atol=1e-10, rtol=0)
    assert not torch.allclose(y[0, 0, :1], expected[:1])   # mirrored boundary bends the ramp


def test_dtype_and_device_preserved():
    x = torch.rand(3, 16, 16)
    for dt in (torch.float32, torch.float64, torch.bfloat16):
        y = imresize(x.to(dt), scale=0.5)
        assert y.dtype == dt and y.shape == (3, 8, 8)
    if torch.cuda.is_available():
        y = imresize(x.cuda(), scale=4)
        assert y.is_cuda
        torch.testing.assert_close(y.cpu(), imresize(x, scale=4), atol=1e-5, rtol=0)


def test_bicubic_upsample_kernels():
    lr = torch.rand(2, 3, 10, 12)
    m = bicubic_upsample(lr, 4, "matlab")
    t = bicubic_upsample(lr, 4, "torch")
    assert m.shape == t.shape == (2, 3, 40, 48)
    torch.testing.assert_close(m, imresize(lr, scale=4))
    torch.testing.assert_close(t, F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False))
    assert (m - t).abs().max() > 1e-3          # a = -0.5 vs a = -0.75 differ
    assert bicubic_upsample(lr[0], 8, "torch").shape == (3, 80, 96)
    with pytest.raises(ValueError):
        bicubic_upsample(lr, 4, "lanczos")


def test_scale_or_size_required():
    with pytest.raises(ValueError):
        imresize(torch.rand(3, 8, 8))
    with pytest.raises(ValueError):
        imresize(torch.rand(3, 8, 8), scale=2, size=(4, 4))
