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
