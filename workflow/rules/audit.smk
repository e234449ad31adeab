# Contamination audit: every fitted model, embedding and judge against every evaluation set,
# read from the files each was trained on. A violation fails the run, and `bundle` needs it.


rule audit_contamination:
    input:
        contamination_inputs,
    output:
        table=report(
            f"{RUN}/tables/contamination.csv",
            caption="../report/audit_contamination.rst",
            category="Audit",
        ),
        other=multiext(f"{RUN}/tables/contamination", ".md", ".tex"),
    log:
        f"{LOGS}/audit_contamination/audit_contamination.log",
    conda:
        "../../envs/core.yaml"
    threads: scale_threads("audit_contamination")
    resources:
        **scale_resources("audit_contamination"),
    params:
        spec=lambda wildcards: json.dumps(contamination_spec(), sort_keys=True),
        stem=lambda wildcards, output: os.path.splitext(output.table)[0],
    shell:
        "prefgen audit-contamination --params '{{}}' --spec {params.spec:q}"
        " --table {params.stem:q} > {log} 2>&1"
