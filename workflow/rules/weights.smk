# Stage 2: pretrained LPIPS (AlexNet) and quality-loss (VGG) weights, online or offline
# (ecdp weights fetch; idempotent, sha256-verified).  The flag file (WEIGHTS_OK,
# common.smk) records that the weights folder was filled for this results folder.


rule fetch_weights:
    """LPIPS v0.1 and VGG backbone weights into $ECDP_WEIGHTS_DIR (config weights.dir)."""
    output:
        touch(WEIGHTS_OK),
    log:
        f"{RESULTS}/logs/weights.log",
    benchmark:
        f"{RESULTS}/logs/benchmarks/weights/fetch.tsv"
    conda:
        ENV
    params:
        offline="--offline" if config["weights"].get("offline") else "",
    shell:
        "python -m ecdp.cli weights fetch {params.offline} > {log:q} 2>&1"
