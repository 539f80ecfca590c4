"""Snakemake script of the `sampler_study` and `sampler_students` rules: ecdp.sampler_study.sampler_study on
one checkpoint (and its distilled students).

The ecdp package and the weights folder come from the environment the Snakefile sets
(PYTHONPATH, ECDP_WEIGHTS_DIR)."""
import os

import torch

from ecdp.evaluation import atomic_write_text
from ecdp.sampler_study import sampler_study, summarize_sampler_study
from ecdp.training import not_trained_reason

sm = globals()["snakemake"]   # injected by the script directive of the sampler_study rule
torch.set_num_threads(sm.threads)
why = not_trained_reason(sm.input.outcome)
if why:   # no model: CSVs with no rows; the report says why (ecdp.report.tables.collect_failures)
    with open(sm.log[0], "w") as log:
        log.write(f"not computed: {why}\n")
    for path in (sm.output.per_image, sm.output.summary):
        atomic_write_text(path, "dataset,variant,sampler\n")
    raise SystemExit(0)
students = {}   # the students rule (sampler_students): distilled students of this model, if trained
for (label, ck), outcome in zip(dict(getattr(sm.params, "students", None) or {}).items(),
                                list(getattr(sm.input, "students", None) or [])):
    reason = not_trained_reason(outcome)
    if reason:
        print(f"student {label}: not computed: {reason}")
    else:
        students[label] = ck
with open(sm.log[0], "w") as log:
    images = sampler_study(sm.params.model, os.path.dirname(sm.input.data), [dict(s) for s in sm.params.samplers],
                           limit=sm.params.limit, lr_crop=sm.params.lr_crop, seed=int(sm.wildcards.seed),
                           convention=sm.params.convention, device=sm.params.device, per_image=True,
                           accurate=sm.params.accurate, students=students)
    df = summarize_sampler_study(images)
    for frame in (images, df):
        frame.insert(0, "seed", int(sm.wildcards.seed))
        frame.insert(0, "variant", sm.wildcards.variant)
        frame.insert(0, "dataset", sm.wildcards.dataset)
    log.write(df.to_string() + "\n")
atomic_write_text(sm.output.per_image, images.to_csv(index=False))
atomic_write_text(sm.output.summary, df.to_csv(index=False))
