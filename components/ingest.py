from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest(
    data_params: dict,
    ingest_params: dict,
    tracking_params: dict,
    profile: str,
    pipeline_run_id: str,
    data_version: str,
    dataset: dsl.Output[dsl.Dataset],
):
    """ingest: read Kermany and Cohen layouts (or generate phantom data) into a manifest.

    Reads params data, ingest. Quarantines bad files with a reason, collapses duplicates and
    writes manifest.csv, quarantine.csv, duplicates.csv and the images to the dataset artifact.
    """
    from cxrflow.steps import run_ingest, step_params

    params = step_params(profile, data=data_params, ingest=ingest_params, tracking=tracking_params)
    out = run_ingest(params, dataset.path, pipeline_run_id, data_version)
    dataset.metadata.update(
        {"manifest_hash": out["provenance"]["manifest_hash"], "origin": out["provenance"]["origin"]}
    )
