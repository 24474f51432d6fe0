"""The driver-side run check: a finished pipeline is declared done only once its output holds every input row
exactly once; until then its folder reads as unfinished (no manifest), and a failed check leaves its numbers in
``OUT/run-check-failed.json`` (``manifest.CHECK_REPORT_NAME``)."""

from __future__ import annotations

from typing import Optional

from unicurate.manifests import manifest as mf
from unicurate.manifests.validate import check_run


class RunCheckFailed(RuntimeError):
    """A finished pipeline's output does not hold every input row exactly once: the run is not declared done."""


def check_and_publish(out_dir: str, expected_inputs: int, result, pipeline, extra: Optional[dict] = None) -> dict:
    """Publish the pending manifest a finished pipeline wrote, once the driver has compared its own count of the
    input rows (``expected_inputs``, made before the pipeline) with that manifest and with the rows the written
    shards hold; returns the manifest.

    A difference raises :class:`RunCheckFailed`: no manifest is published, so the folder reads as unfinished, and
    the numbers (with the elements per PCollection of ``result``, where rows went missing) go to the check report.
    """
    try:
        manifest = mf.read_manifest(out_dir, mf.PENDING_MANIFEST_NAME)
    except FileNotFoundError:
        raise RunCheckFailed(f"the pipeline ended without writing its manifest to {out_dir}: the run is incomplete; "
                             "rerun the same command") from None
    problems = check_run(out_dir, manifest, expected_inputs)
    if problems:
        _fail_check(out_dir, expected_inputs, manifest, problems, element_counts(result, pipeline))
    manifest.update(extra or {})
    mf.publish_manifest(out_dir, manifest)
    return manifest


def mark_unfinished(out_dir: str) -> None:
    """Before a run writes anything into ``out_dir``: no manifest (published or pending) and no check report of
    an earlier run stays, so a run that does not finish leaves a folder that reads as unfinished."""
    mf.remove_manifest(out_dir)
    mf.delete_if_exists(mf.join(out_dir, mf.CHECK_REPORT_NAME))


def element_counts(result, pipeline) -> dict[str, int]:
    """Elements of each PCollection as the workers counted them, named by the transform that produced it
    (``CurateUnits``, ``KeyByUrl``, ``GroupBySha``, ...): where rows went missing when a run's check
    fails. Beam's local runner reports them per PCollection (the public metrics query drops that label);
    {} where the runner does not."""
    from apache_beam.metrics import monitoring_infos as mi

    by_stage = getattr(result, "_monitoring_infos_by_stage", None) or {}
    try:
        names = {}
        for t in pipeline.to_runner_api().components.transforms.values():
            if not t.subtransforms:  # leaves: a composite's outputs are its last leaf's
                for tag, pid in t.outputs.items():
                    names[pid] = t.unique_name if tag in ("None", "out") or len(t.outputs) == 1 \
                        else f"{t.unique_name}[{tag}]"
    except Exception:  # noqa: BLE001 - diagnostics only
        return {}
    out: dict[str, int] = {}
    for stage, infos in by_stage.items():
        if not stage:
            continue  # '' holds the pipeline-wide metrics, not a stage's
        for info in infos:
            pid = info.labels.get("PCOLLECTION") if info.urn == mi.ELEMENT_COUNT_URN else None
            if pid is not None:
                name = names.get(pid, pid)
                out[name] = out.get(name, 0) + int(mi.extract_counter_value(info))
    return dict(sorted(out.items()))


def _fail_check(out_dir: str, expected_inputs: int, manifest: dict, problems: list[str],
                counts_by_pcollection: dict[str, int]) -> None:
    report = mf.join(out_dir, mf.CHECK_REPORT_NAME)
    mf.write_json_atomic(report, {"expected_inputs": expected_inputs, "problems": problems,
                                  "counts": manifest.get("counts"),
                                  "elements_per_pcollection": counts_by_pcollection,
                                  "pipeline_manifest": manifest})
    mf.delete_if_exists(mf.join(out_dir, mf.PENDING_MANIFEST_NAME))
    raise RunCheckFailed(
        f"the run's output does not account for every input row, so it is not declared done (no manifest written; "
        f"details in {report}):\n  " + "\n  ".join(problems)
        + "\nThis is a bug in unicurate or the runner; please report it with that file. Rerunning the same command "
          "rewrites the output.")


def has_pending_manifest(out_dir: str) -> bool:
    """The pipeline's last stage wrote its manifest: every stage had finished."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(mf.join(out_dir, mf.PENDING_MANIFEST_NAME))

