"""Snakemake script of the `sampler_study` rule: ecdp.timing.sampler_study on one checkpoint."""
import os
import sys

sys.path.insert(0, snakemake.params.repo)  # noqa: F821 - injected by Snakemake

if snakemake.params.weights_dir:  # noqa: F821
    os.environ["ECDP_WEIGHTS_DIR"] = os.path.expanduser(snakemake.params.weights_dir)  # noqa: F821

import torch  # noqa: E402

from ecdp.evaluation import atomic_write_text  # noqa: E402
from ecdp.timing import sampler_study  # noqa: E402

sm = snakemake  # noqa: F821
torch.set_num_threads(sm.threads)
with open(sm.log[0], "w") as log:
    df = sampler_study(sm.input.model, os.path.dirname(sm.input.data), [dict(s) for s in sm.params.samplers],
                       limit=sm.params.limit, lr_crop=sm.params.lr_crop, seed=int(sm.wildcards.seed),
                       convention=sm.params.convention, device=sm.params.device)
    df.insert(0, "variant", sm.wildcards.variant)
    df.insert(0, "dataset", sm.wildcards.dataset)
    log.write(df.to_string() + "\n")
atomic_write_text(sm.output[0], df.to_csv(index=False))
