# Stage 5b: the sampler study, a quality evaluation: several samplers of one trained
# model (studies.samplers.variant, its first seed) scored on its test set, LPIPS / PSNR /
# SSIM and the distance to an accurate solver's image against NFE and seconds per image
# (ecdp/sampler_study.py; the samplers table and the LPIPS-vs-NFE / -seconds figures).


if SAM:

    rule sampler_study:
        """LPIPS / PSNR / SSIM against NFE and seconds per image for several samplers of one model."""
        input:
            outcome=lambda wc: GRID.outcome(RESULTS, GRID.cell(wc.dataset, wc.variant), int(wc.seed)),
            data=lambda wc: f"{DATA}/{wc.dataset}/.complete",
            weights=WEIGHTS_OK,
        output:
            summary=f"{RESULTS}/samplers/{{dataset}}/{{variant}}/seed{{seed}}.csv",
            per_image=f"{RESULTS}/samplers/{{dataset}}/{{variant}}/per_image_seed{{seed}}.csv",
        log:
            f"{RESULTS}/logs/samplers/{{dataset}}/{{variant}}/seed{{seed}}.log",
        benchmark:
            f"{RESULTS}/logs/benchmarks/samplers/{{dataset}}/{{variant}}/seed{{seed}}.tsv"
        threads: threads_for("samplers")
        resources:
            **resources_for("samplers", True),
        conda:
            ENV
        params:
            model=lambda wc: GRID.checkpoint(RESULTS, GRID.cell(wc.dataset, wc.variant), int(wc.seed)),
            samplers=SAM["samplers"],
            limit=SAM.get("limit"),
            lr_crop=SAM.get("lr_crop"),
            accurate=SAM.get("accurate"),
            convention=config["evaluation"]["convention"],
            device=DEVICE,
        script:
            "../scripts/sampler_study.py"


if SAM and SAM.get("students"):

    rule sampler_students:
        """The distilled students of the study's model (issue 17) on every seed: each with
        its own K-step sampler, scored against the HR image and against the teacher's
        accurate ODE solution of the same x(T) (the study's `accurate` solver)."""
        input:
            outcome=lambda wc: GRID.outcome(RESULTS, GRID.cell(wc.dataset, wc.variant), int(wc.seed)),
            students=lambda wc: [GRID.outcome(RESULTS, GRID.cell(wc.dataset, v), int(wc.seed)) for v in SAM["students"]],
            data=lambda wc: f"{DATA}/{wc.dataset}/.complete",
            weights=WEIGHTS_OK,
        output:
            summary=f"{RESULTS}/samplers/{{dataset}}/{{variant}}/students_seed{{seed}}.csv",
            per_image=f"{RESULTS}/samplers/{{dataset}}/{{variant}}/students_per_image_seed{{seed}}.csv",
        log:
            f"{RESULTS}/logs/samplers/{{dataset}}/{{variant}}/students_seed{{seed}}.log",
        benchmark:
            f"{RESULTS}/logs/benchmarks/samplers/{{dataset}}/{{variant}}/students_seed{{seed}}.tsv"
        threads: threads_for("samplers")
        resources:
            **resources_for("samplers", True),
        conda:
            ENV
        params:
            model=lambda wc: GRID.checkpoint(RESULTS, GRID.cell(wc.dataset, wc.variant), int(wc.seed)),
            students=lambda wc: {v: GRID.checkpoint(RESULTS, GRID.cell(wc.dataset, v), int(wc.seed))
                                 for v in SAM["students"]},
            samplers=[SAM["samplers"][SAM.get("accurate") or 0]],
            limit=SAM.get("limit"),
            lr_crop=SAM.get("lr_crop"),
            accurate=0,
            convention=config["evaluation"]["convention"],
            device=DEVICE,
        script:
            "../scripts/sampler_study.py"
