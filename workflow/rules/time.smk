# Stage 5: cost.  Table 3 (seconds per 256x256 HR image and NFE of every diffusion
# method) is ONE job so that every method is timed on the same device, one after the
# other, each after warm-up runs; with threads = all cores it runs alone on a CPU
# machine.  (The sampler study, a quality evaluation, is samplers.smk.)

if T3:

    rule time_table3:
        """Table 3: `ecdp time` of each method's seed-0 checkpoint at 256x256 HR, one device, warm-up."""
        input:
            **table3_outcomes(),
        output:
            table3_outputs(),
        log:
            f"{RESULTS}/logs/time/table3.log",
        benchmark:
            f"{RESULTS}/logs/benchmarks/time/table3.tsv"
        threads: threads_for("time")
        resources:
            **resources_for("time", True),
        conda:
            ENV
        params:
            cmd=table3_command,
        shell:
            "( {params.cmd} ) > {log:q} 2>&1"
