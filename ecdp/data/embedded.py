"""Real photos that ship inside pip wheels: the data of the offline ``default`` profile.

Every file is read once, its bytes checked against the sha256 hard-coded here
(computed from scikit-image 0.26.0, scikit-learn 1.9.1 and matplotlib 3.11.2; the
scikit-image values equal those of ``skimage.data._registry.registry``), and the
image decoded from those same bytes.  A file that does not match is refused
(:class:`ecdp.data.download.ChecksumError`): a different package version that
changed a photo changes the benchmark, and must be noticed.

All nine scikit-image photos named in ``reference/datasets.md`` are shipped in the
0.26 wheel (``immunohistochemistry`` is the file ``ihc.png``), so none is dropped.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .download import ChecksumError

__all__ = ["EmbeddedImage", "SOURCES", "TEST_NAMES", "locate", "read_verified", "load_verified"]


@dataclass(frozen=True)
class EmbeddedImage:
    name: str
    package: str          # importable package holding the file
    relpath: str          # path inside the package folder
    sha256: str
    license: str

    @property
    def file(self) -> str:
        return f"{self.package}/{self.relpath}"


SOURCES: tuple[EmbeddedImage, ...] = (
    EmbeddedImage("astronaut", "skimage", "data/astronaut.png",
                  "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
                  "public domain (NASA, Eileen Collins)"),
    EmbeddedImage("chelsea", "skimage", "data/chelsea.png",
                  "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
                  "CC0 (Stefan van der Walt)"),
    EmbeddedImage("coffee", "skimage", "data/coffee.png",
                  "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
                  "CC0 (Rachel Michetti)"),
    EmbeddedImage("rocket", "skimage", "data/rocket.jpg",
                  "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
                  "public domain (SpaceX)"),
    EmbeddedImage("motorcycle_left", "skimage", "data/motorcycle_left.png",
                  "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
                  "Middlebury 2014 stereo benchmark (Scharstein et al.); no license stated by scikit-image"),
    EmbeddedImage("motorcycle_right", "skimage", "data/motorcycle_right.png",
                  "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
                  "Middlebury 2014 stereo benchmark (Scharstein et al.); no license stated by scikit-image"),
    EmbeddedImage("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg",
                  "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
                  "public domain (NASA)"),
    EmbeddedImage("retina", "skimage", "data/retina.jpg",
                  "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
                  "CC0 (Mikael Haggstrom, Wikimedia Commons)"),
    EmbeddedImage("immunohistochemistry", "skimage", "data/ihc.png",
                  "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
                  "no known copyright restrictions (CMMI)"),
    EmbeddedImage("china", "sklearn", "datasets/images/china.jpg",
                  "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
                  "CC BY 2.0 (danielbuechele, Flickr)"),
    EmbeddedImage("flower", "sklearn", "datasets/images/flower.jpg",
                  "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
                  "CC BY 2.0 (vultilion, Flickr)"),
    EmbeddedImage("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
                  "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
                  "public domain (US Navy)"),
)

#: the fixed test photos of every embedded set (a cat face, an object, a human face)
TEST_NAMES = ("chelsea", "coffee", "grace_hopper")


_DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def package_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(_DISTRIBUTIONS.get(package, package))
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_dir(package: str) -> Path | None:
    """The installed package folder, found without importing it (sklearn and
    matplotlib take seconds to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate(src: EmbeddedImage) -> Path:
    """Path of the file inside its installed package."""
    folder = _package_dir(src.package)
    if folder is None:
        raise FileNotFoundError(f"{src.name}: package {src.package!r} is not installed "
                                f"(pip install {_DISTRIBUTIONS.get(src.package, src.package)})")
    path = folder / src.relpath
    if not path.is_file():
        raise FileNotFoundError(f"{src.name}: {path} not found in the installed {src.package} package")
    return path


def read_verified(src: EmbeddedImage) -> bytes:
    """The file's bytes, after checking their sha256."""
    path = locate(src)
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != src.sha256:
        raise ChecksumError(f"{src.name}: {path} has sha256 {got}, expected {src.sha256} "
                            f"({src.package} {package_version(src.package)}); refusing to use it")
    return data


def decode(data: bytes) -> torch.Tensor:
    """Image bytes -> (3, H, W) float32 in [0, 1] (8-bit RGB)."""
    with Image.open(io.BytesIO(data)) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_verified(src: EmbeddedImage) -> torch.Tensor:
    return decode(read_verified(src))
