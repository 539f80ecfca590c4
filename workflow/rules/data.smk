# Stage 1: prepared datasets (ecdp data prepare), the layout of ecdp/data/paired.py.
# A dataset is ready when DATA/<name>/.complete exists (written last by `prepare`).


if FIXTURES:

    localrules: fixture_archives

    rule fixture_archives:
        """REHEARSAL only: small archives with the official names and layouts (ecdp/data/fixtures.py) and their sources file."""
        output:
            sources=config["data_sources"],
        log:
            f"{RESULTS}/logs/data/fixture_archives.log",
        benchmark:
            f"{RESULTS}/logs/benchmarks/fixtures/archives.tsv"
        conda:
            ENV
        params:
            folder=lambda wc, output: str(Path(output.sources).parent),   # = fixture_archives (common.smk)
        script:
            "../scripts/fixture_archives.py"


rule prepare_embedded:
    """The offline stand-ins (embedded-div2k, -imagenet, -celeba) from pip-wheel photos, sha256-verified."""
    output:
        [f"{DATA}/{name}/.complete" for name in ("embedded-div2k", "embedded-imagenet", "embedded-celeba")],
    log:
        f"{RESULTS}/logs/data/embedded.log",
    benchmark:
        f"{RESULTS}/logs/benchmarks/prepare/embedded.tsv"
    threads: threads_for("prepare")
    resources:
        **resources_for("prepare", False),
    conda:
        ENV
    params:
        root=lambda wc, output: str(Path(output[0]).parent.parent),   # DATA, from the output: DATA/<name>/.complete
    shell:
        "python -m ecdp.cli data prepare embedded --root {params.root:q} --workers {threads} --no-progress > {log:q} 2>&1"


rule prepare_dataset:
    """One registry dataset (div2k, imagenet, celeba, ...): download, verify, extract, degrade."""
    input:
        [config["data_sources"]] if FIXTURES else [],
    output:
        f"{DATA}/{{dataset}}/.complete",
    wildcard_constraints:
        dataset="(?!embedded-)[A-Za-z0-9_.-]+",
    log:
        f"{RESULTS}/logs/data/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/logs/benchmarks/prepare/{{dataset}}.tsv"
    threads: threads_for("prepare")
    resources:
        **resources_for("prepare", False),
    conda:
        ENV
    params:
        root=lambda wc, output: str(Path(output[0]).parent.parent),   # DATA, from the output: DATA/<name>/.complete
        cmd=lambda wc: (
            f"data prepare {shlex.quote(PREPARE[wc.dataset]['prepare'])} {PREPARE[wc.dataset].get('prepare_args', '')}"
            if PREPARE.get(wc.dataset, {}).get("prepare") else ""),
        known=lambda wc: "yes" if PREPARE.get(wc.dataset, {}).get("prepare") else "no",
        sources=f"--sources {shlex.quote(config['data_sources'])}" if config.get("data_sources") else "",
    shell:
        """
        if [ {params.known} = no ]; then
            printf "dataset %s has no 'prepare' entry in the config: prepare it into %s/%s yourself\\n" \
                {wildcards.dataset:q} {params.root:q} {wildcards.dataset:q} | tee {log:q} >&2
            exit 1
        fi
        python -m ecdp.cli {params.cmd} --root {params.root:q} {params.sources} --workers {threads} --no-progress \
            > {log:q} 2>&1
        """
