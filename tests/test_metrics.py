"""Metric conventions: PSNR/SSIM against scikit-image, LPIPS against the published values,
quantization, Y channel, border crop, tiling, folders and the ``ecdp metrics`` CLI."""
from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ecdp import metrics as M
from ecdp.imageio import load_image, quantize, save_image

DATA = Path(__file__).resolve().parent / "data" / "lpips"
PUBLISHED = {("alex", "ex_p0"): 0.722, ("alex", "ex_p1"): 0.138, ("vgg", "ex_p0"): 0.569, ("vgg", "ex_p1"): 0.422}



def _photo(name: str = "astronaut") -> torch.Tensor:
    """A real 8-bit photo shipped with scikit-image, (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(getattr(skdata, name)(), dtype=np.float32) / 255).permute(2, 0, 1)


def _degrade(hr: torch.Tensor, seed: int = 0, noise: float = 0.04) -> torch.Tensor:
    """A plausible SR output: blurred + noisy, quantized."""
    g = torch.Generator().manual_seed(seed)
    blur = torch.nn.functional.avg_pool2d(hr[None], 3, 1, 1, count_include_pad=False)[0]
    return quantize(blur + noise * torch.randn(hr.shape, generator=g))


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).double().numpy()


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0, channel_axis=-1 if a.ndim == 3 else None)


def _pairs():
    g = torch.Generator().manual_seed(1)
    rand_hr = quantize(torch.rand(3, 67, 83, generator=g))
    rand_sr = quantize(torch.rand(3, 67, 83, generator=g))
    astro = _photo("astronaut")[:, 100:292, 50:290]
    chelsea = _photo("chelsea")
    return {"random": (rand_sr, rand_hr), "astronaut": (_degrade(astro), astro),
            "chelsea": (_degrade(chelsea, 2, 0.01), chelsea)}


PAIRS = _pairs()


# --------------------------------------------------------------------------- PSNR / SSIM vs skimage

@pytest.mark.parametrize("name", list(PAIRS))
def test_ssim_matches_skimage(name):
    """Same window (Gaussian 11x11, sigma 1.5), same 'valid' region: skimage filters the whole
    image with reflect padding and crops 5 px before averaging, we convolve 'valid' -- the
    averaged pixels and their values are identical, both in float64, so agreement is to
    float rounding (1e-10 leaves room for summation order)."""
    sr, hr = PAIRS[name]
    assert M.ssim(sr, hr) == pytest.approx(_sk_ssim(_hwc(sr), _hwc(hr)), abs=1e-10)


@pytest.mark.parametrize("name", list(PAIRS))
def test_psnr_matches_skimage(name):
    """pyiqa/piq add eps = 1e-8 to the MSE; skimage does not.  The expected gap is exactly
    10 log10(1 + 1e-8 / mse) (< 1e-4 dB for any MSE above 5e-9); we check it to 1e-9."""
    sr, hr = PAIRS[name]
    sk = peak_signal_noise_ratio(_hwc(hr), _hwc(sr), data_range=1.0)
    mse = float(((sr.double() - hr.double()) ** 2).mean())
    ours = M.psnr(sr, hr)
    assert ours == pytest.approx(sk - 10 * math.log10(1 + 1e-8 / mse), abs=1e-9)
    assert abs(ours - sk) < 1e-4


def test_identical_images_psnr_is_finite():
    hr = PAIRS["astronaut"][1]
    assert M.psnr(hr, hr) == pytest.approx(80.0)
    assert M.ssim(hr, hr) == pytest.approx(1.0)


def test_ssim_agrees_with_pyiqa_except_its_cs_relu():
    """Where the cs term is positive, pyiqa's ssim(downsample=False) is our SSIM; on locally
    anti-correlated content pyiqa clamps cs at 0 (F.relu) and scores higher than skimage/piq."""
    from pyiqa.archs.ssim_arch import ssim as pyiqa_ssim

    sr, hr = (t[:, 100:196, 200:296] for t in PAIRS["chelsea"])
    x, y = M.prepare(sr, hr)
    assert float(pyiqa_ssim(x, y, downsample=False)) == pytest.approx(M.ssim(sr, hr), abs=1e-6)
    inv = quantize(1 - hr)  # anti-correlated everywhere
    x, y = M.prepare(inv, hr)
    sk = _sk_ssim(_hwc(inv), _hwc(hr))
    assert M.ssim(inv, hr) == pytest.approx(sk, abs=1e-10)
    assert float(pyiqa_ssim(x, y, downsample=False)) > sk + 0.05


def test_ssim_bands_are_exact():
    sr, hr = (t[:, :, :200] for t in PAIRS["chelsea"])
    x, y = M.prepare(sr, hr)
    whole = M.ssim_tiled(x, y, band=None)
    for band in (7, 100):
        assert M.ssim_tiled(x, y, band=band) == pytest.approx(whole, abs=1e-12)


# --------------------------------------------------------------------------- conventions

def test_quantization_convention():
    """SR values within 0.49/255 of the 8-bit grid score exactly like the quantized image."""
    sr, hr = PAIRS["astronaut"]
    g = torch.Generator().manual_seed(3)
    off = sr + (torch.rand(sr.shape, generator=g) - 0.5) * 0.98 / 255
    assert not torch.equal(off, sr)
    assert M.psnr(off, hr) == M.psnr(sr, hr)
    assert M.ssim(off, hr) == M.ssim(sr, hr)
    # out of range values are clamped as part of quantization
    assert M.psnr(sr * 1.2 - 0.1, hr) == M.psnr(quantize(sr * 1.2 - 0.1), hr)
    # one more grey level somewhere does change the score (the test can fail)
    bumped = sr.clone()
    bumped[:, :8, :8] = (bumped[:, :8, :8] + 1 / 255).clamp(0, 1)
    assert M.psnr(bumped, hr) != M.psnr(sr, hr)


def test_sr_is_cropped_to_hr_size():
    sr, hr = PAIRS["astronaut"]
    bigger = torch.cat([torch.cat([sr, torch.rand(3, 7, sr.shape[2])], 1), torch.rand(3, sr.shape[1] + 7, 5)], 2)
    assert M.psnr(bigger, hr) == M.psnr(sr, hr)
    with pytest.raises(ValueError, match="smaller"):
        M.psnr(sr[:, :-1], hr)


def _y(x: torch.Tensor) -> np.ndarray:
    """BT.601 luma as BasicSR computes it (independent of the code under test)."""
    r, g, b = _hwc(x).transpose(2, 0, 1)
    return (16 + 65.481 * r + 128.553 * g + 24.966 * b) / 255


def test_y_channel_and_crop_options():
    from pyiqa.utils.color_util import to_y_channel

    sr, hr = PAIRS["astronaut"]
    ys, yh = _y(sr), _y(hr)
    np.testing.assert_allclose(M.to_y(sr[None])[0, 0].numpy(), ys, rtol=0, atol=1e-12)
    np.testing.assert_allclose(to_y_channel(sr[None].double(), 1.0, "ycbcr")[0, 0].numpy(), ys, atol=1e-6)
    y = M.score(sr, hr, "y", lpips_net=None)
    assert y["convention"] == "y" and y["crop_border"] == 0 and math.isnan(y["lpips"])
    assert y["psnr"] == pytest.approx(peak_signal_noise_ratio(yh, ys, data_range=1.0), abs=1e-4)
    assert y["ssim"] == pytest.approx(_sk_ssim(ys, yh), abs=1e-10)
    rgb = M.score(sr, hr, "ecdp", lpips_net=None)
    assert abs(y["psnr"] - rgb["psnr"]) > 0.1  # luma PSNR differs from RGB PSNR

    yc = M.score(sr, hr, "y-crop", lpips_net=None, scale=4)
    assert yc["convention"] == "y-crop" and yc["crop_border"] == 4
    assert yc["psnr"] == pytest.approx(peak_signal_noise_ratio(yh[4:-4, 4:-4], ys[4:-4, 4:-4], data_range=1), abs=1e-4)
    assert yc["ssim"] == pytest.approx(_sk_ssim(ys[4:-4, 4:-4], yh[4:-4, 4:-4]), abs=1e-10)
    assert yc["psnr"] != y["psnr"]

    c = M.score(sr, hr, "crop", lpips_net=None, scale=2)
    assert c["psnr"] == pytest.approx(M.psnr(sr[:, 2:-2, 2:-2], hr[:, 2:-2, 2:-2]), abs=1e-12)
    with pytest.raises(ValueError, match="scale"):
        M.psnr(sr, hr, "y-crop")
    with pytest.raises(ValueError, match="unknown metric convention"):
        M.psnr(sr, hr, "matlab")


# --------------------------------------------------------------------------- LPIPS

@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_published_values(weights_dir, net):
    ref = load_image(DATA / "ex_ref.png")
    for p in ("ex_p0", "ex_p1"):
        d = M.lpips_distance(load_image(DATA / f"{p}.png"), ref, net=net, device="cpu", weights_dir=weights_dir)
        assert round(d, 3) == PUBLISHED[(net, p)], (net, p, d)


def test_lpips_layer_maps_equal_lpips_forward(weights_dir):
    sr, hr = PAIRS["astronaut"]
    x, y = (t.float() for t in M.prepare(sr[:, :96, :128], hr[:, :96, :128]))
    model = M.get_lpips("alex", "cpu", weights_dir)
    with torch.no_grad():
        ref = float(model(x, y, normalize=True))
        ours = sum(float(m.mean()) for m in M.lpips_layer_maps(model, x, y))
        untiled = M.lpips_tiled(model, x, y, "alex", tile=None)
    assert ours == pytest.approx(ref, abs=1e-6)
    assert untiled == pytest.approx(ref, abs=1e-6)
    assert M.get_lpips("alex", "cpu", weights_dir) is model  # cached per (net, device, folder)


def test_tile_cores_partition():
    for length in (100, 320, 337, 1356, 2040):
        cores = M.tile_cores(length, 128, 96)
        assert cores[0][0] == 0 and cores[-1][1] == length
        assert all(a % 16 == 0 and b > a for a, b in cores)
        assert all(b == a2 for (_, b), (a2, _) in itertools.pairwise(cores))
    assert M.tile_cores(300, 128, 96) == [(0, 300)]


def test_lpips_tiled_equals_untiled(weights_dir):
    """Tiles aligned to the stride 16 with a context margin beyond the receptive-field reach
    (AlexNet conv5 reaches 66 px left / 81 px right of a core; margin 96): each core's
    per-layer maps equal the untiled ones, so the only difference is float32 rounding of
    the convolutions on different input sizes; measured ~1e-9, asserted below 1e-6."""
    hr = _photo("coffee")[:, :368, :384]
    sr = _degrade(hr, 4, 0.03)
    x, y = (t.float() for t in M.prepare(sr, hr))
    model = M.get_lpips("alex", "cpu", weights_dir)
    assert M.tile_cores(368, 160, 96) == [(0, 160), (160, 368)]  # 2 x 2 tiles
    with torch.no_grad():
        untiled = M.lpips_tiled(model, x, y, "alex", tile=None)
        tiled = M.lpips_tiled(model, x, y, "alex", tile=160, margin=96)
        too_thin = M.lpips_tiled(model, x, y, "alex", tile=160, margin=16)
    assert tiled == pytest.approx(untiled, abs=1e-6)
    assert abs(too_thin - untiled) > 1e-4  # without enough context tiling is visibly wrong


def test_lpips_vgg_tiled_equals_untiled(weights_dir):
    """VGG16 conv5_3 reaches 90 px left / 106 px right: margin 112; tiles along the width only."""
    hr = _photo("coffee")[:, :64, :400]
    sr = _degrade(hr, 5, 0.03)
    x, y = (t.float() for t in M.prepare(sr, hr))
    model = M.get_lpips("vgg", "cpu", weights_dir)
    assert len(M.tile_cores(400, 128, 112)) == 3
    with torch.no_grad():
        untiled = M.lpips_tiled(model, x, y, "vgg", tile=None)
        tiled = M.lpips_tiled(model, x, y, "vgg", tile=128, margin=112)
    assert tiled == pytest.approx(untiled, abs=1e-6)


def test_lpips_quantization_and_score(weights_dir):
    ref, p0 = load_image(DATA / "ex_ref.png"), load_image(DATA / "ex_p0.png")
    off = p0 + 0.4 / 255 * torch.sign(torch.randn(p0.shape, generator=torch.Generator().manual_seed(0)))
    r = M.score(off, ref, weights_dir=weights_dir, device="cpu")
    assert set(r) == {"psnr", "ssim", "lpips", "convention", "crop_border", "lpips_net"}
    assert r["convention"] == "ecdp" and r["lpips_net"] == "alex"
    assert r["lpips"] == M.lpips_distance(p0, ref, weights_dir=weights_dir, device="cpu")
    assert round(r["lpips"], 3) == 0.722


# --------------------------------------------------------------------------- folders and CLI

@pytest.fixture
def folders(tmp_path):
    hr_dir, sr_dir = tmp_path / "hr", tmp_path / "sr"
    ref = load_image(DATA / "ex_ref.png")
    for name in ("ex_p0", "ex_p1"):
        save_image(ref, hr_dir / f"{name}.png")
        save_image(load_image(DATA / f"{name}.png"), sr_dir / f"{name}.png")
    return sr_dir, hr_dir


def test_score_folders(weights_dir, folders):
    sr_dir, hr_dir = folders
    df = M.score_folders(sr_dir, hr_dir, weights_dir=weights_dir, device="cpu")
    assert list(df["image"]) == ["ex_p0.png", "ex_p1.png", "mean"]
    assert [round(v, 3) for v in df["lpips"][:2]] == [0.722, 0.138]
    assert df["psnr"].iloc[2] == pytest.approx(df["psnr"][:2].mean())
    assert set(df["convention"]) == {"ecdp"}
    (sr_dir / "ex_p1.png").unlink()
    with pytest.raises(ValueError, match="ex_p1"):
        M.score_folders(sr_dir, hr_dir, weights_dir=weights_dir)


def _cli(*args):
    from ecdp.cli import main

    return main(["metrics", *map(str, args)])


def test_cli_pair_prints_published_lpips(weights_dir, capsys, tmp_path):
    out_csv = tmp_path / "m.csv"
    assert _cli(DATA / "ex_p0.png", DATA / "ex_ref.png", "--weights-dir", weights_dir, "--device", "cpu",
                "--csv", out_csv) == 0
    out = capsys.readouterr().out
    lp = float(next(l for l in out.splitlines() if l.startswith("LPIPS")).split()[1])
    assert round(lp, 3) == 0.722
    assert "convention: ecdp" in out and "PSNR" in out and "SSIM" in out
    assert "0.72" in out_csv.read_text()
    assert _cli(DATA / "ex_p1.png", DATA / "ex_ref.png", "--weights-dir", weights_dir, "--lpips-net", "vgg",
                "--device", "cpu") == 0
    lp = float(next(l for l in capsys.readouterr().out.splitlines() if l.startswith("LPIPS")).split()[1])
    assert round(lp, 3) == 0.422


def test_cli_folders(weights_dir, folders, capsys):
    sr_dir, hr_dir = folders
    assert _cli(sr_dir, hr_dir, "--weights-dir", weights_dir, "--device", "cpu",
                "--convention", "y-crop", "--scale", "4") == 0
    out = capsys.readouterr().out
    assert "ex_p0.png" in out and "mean" in out and "convention: y-crop" in out and "crop 4 px" in out


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert _cli(bad, DATA / "ex_ref.png", "--lpips-net", "none") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.png" in err
    assert _cli(DATA / "ex_p0.png", DATA / "ex_ref.png", "--weights-dir", tmp_path) == 2
    assert "ecdp weights fetch" in capsys.readouterr().err
    assert _cli(DATA / "ex_p0.png", DATA / "ex_ref.png", "--convention", "y-crop", "--lpips-net", "none") == 2
    assert "scale" in capsys.readouterr().err


def test_cli_non_image_subprocess(tmp_path):
    bad = tmp_path / "data.txt"
    bad.write_text("hello")
    proc = subprocess.run([sys.executable, "-c", "import sys; from ecdp.cli import main; sys.exit(main())",
                           "metrics", str(bad), str(DATA / "ex_ref.png")], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "data.txt" in proc.stderr
