from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(params: dict, dataset: dsl.Output[dsl.Dataset]):
    """ingest: read the configured sources (or generate phantom data) into a manifest.

    Reads params data, ingest. Quarantines bad files with a reason, lists excluded rows,
    collapses duplicates and writes manifest.csv, quarantine.csv, excluded.csv, duplicates.csv
    and the images to the dataset artifact. Cached when data.version pins the data.
    """
    from cxrflow.steps import current_pipeline_run, run_ingest, step_params

    out = run_ingest(step_params(params), dataset.path, current_pipeline_run())
    dataset.metadata.update(
        {k: out["provenance"][k] for k in ("manifest_hash", "origin", "data_version")}
    )
