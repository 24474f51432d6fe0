"""What a finished run says: its Beam counters and stage wall times, and the funnel as text (the curate funnel,
the synthesis funnel)."""

from __future__ import annotations

from unicurate.manifests.embeddings import describe as describe_embeddings


def _uncalibrated_line(manifest: dict, what: str) -> list[str]:
    if not manifest.get("uncalibrated"):
        return []
    names = ", ".join(m["name"] for m in manifest.get("models", []) if not m.get("calibrated"))
    return [f"WARNING: UNCALIBRATED {what}: {names} have tiny random weights (tests/demo only)"]


def counters(result) -> dict:
    """unicurate's Beam counters (model loads, batches, ...) summed over workers, and the wall-clock span of
    the fetch/model/synthesize stages (``fetch_seconds``, ...); {} when unavailable."""
    try:
        from apache_beam.metrics.metric import MetricsFilter

        res = result.metrics().query(MetricsFilter().with_namespace("unicurate"))
        out: dict = {}
        for c in res.get("counters", []):
            val = c.committed if c.committed is not None else c.attempted
            out[c.key.metric.name] = out.get(c.key.metric.name, 0) + (val or 0)
        spans: dict[str, list] = {}
        for d in res.get("distributions", []):
            name = d.key.metric.name
            val = d.committed if d.committed is not None else d.attempted
            if name.endswith("_span_ms") and val is not None and val.count:
                lo, hi = spans.get(name, [val.min, val.max])
                spans[name] = [min(lo, val.min), max(hi, val.max)]
        for name, (lo, hi) in spans.items():
            out[name[: -len("_span_ms")] + "_seconds"] = round((hi - lo) / 1000.0, 3)
        return out
    except Exception:  # noqa: BLE001 - metrics are informative only
        return {}


STAGE_LABELS = {"units": "work units",
                "synthesize": "synthesis", "write": "write shards"}


def stage_times(metrics: dict) -> str:
    """'stage wall time: work units 4.61 s, ...' (first start to last end over all workers)."""
    parts = [f"{label} {metrics[f'{k}_seconds']:.2f} s" for k, label in STAGE_LABELS.items()
             if metrics.get(f"{k}_seconds") is not None]
    return f"  (stage wall time, first batch start to last batch end over all workers: {', '.join(parts)})" \
        if parts else ""


def format_funnel(manifest: dict) -> str:
    """The funnel as a text table: stages with counts and percentages, then reasons."""
    funnel = manifest["funnel"]
    total = max(1, funnel["inputs"])
    lines = _uncalibrated_line(manifest, "scores")
    width = max(len(s["label"]) for s in funnel["stages"]) + 2
    lines.append(f"{'stage':<{width}}{'rows':>8}{'%':>8}")
    lines.append(f"{'inputs':<{width}}{funnel['inputs']:>8}{100.0:>7.1f}%")
    for s in funnel["stages"]:
        lines.append(f"{s['label']:<{width}}{s['rows']:>8}{100.0 * s['rows'] / total:>7.1f}%")
    if funnel["reasons"]:
        lines.append("")
        lines.append("reject reasons (a row can have several):")
        for code, n in funnel["reasons"].items():
            lines.append(f"  {code:<22}{n:>8}")
    filters = manifest.get("model_filters") or []
    if filters:
        from unicurate.schema import FILTER_REASONS

        lines.append("")
        lines.append("model filters (rows rejected by each; a row can fail several):")
        for name in filters:
            n = sum(funnel["reasons"].get(code, 0) for code in FILTER_REASONS.get(name, ()))
            lines.append(f"  {name:<22}{n:>8}")
        if manifest.get("clip_score_cutoff") is not None:
            lines.append(f"  (clip_score keep_top_fraction cutoff: {manifest['clip_score_cutoff']:.4f})")
    met = manifest.get("_metrics") or {}
    lines += _run_lines(met, "  ", f"{met.get('model_batches', 0)} batches, {met.get('model_rows', 0)} rows scored, "
                                   f"{met.get('score_errors', 0)} score errors")
    c = manifest["counts"]
    lines.append("")
    lines.append(f"kept {c['kept']} + rejected {c['rejected']} = {c['kept'] + c['rejected']} of {c['inputs']} inputs")
    embeddings = describe_embeddings(manifest)
    if embeddings:
        lines.append(embeddings)
    return "\n".join(lines)


def _run_lines(met: dict, indent: str, batches: str) -> list[str]:
    """How the run went, from its Beam counters: the model loads (and ``batches``, what they served), the stage
    wall times."""
    lines = []
    if met.get("model_loads"):
        lines.append(f"{indent}(models loaded {met['model_loads']} time(s), once per worker process; {batches})")
    times = stage_times(met)
    if times:
        lines.append(times)
    return lines


def format_synthesis_funnel(manifest: dict) -> str:
    """Images by outcome, objects, subjects and edits per type with their reject reasons."""
    f = manifest["funnel"]
    lines = _uncalibrated_line(manifest, "models")
    lines.append(f"images: {f['images']} in: " + ", ".join(f"{k} {v}" for k, v in f["image_status"].items()))
    o = f["objects"]
    lines.append(f"objects: {o['detected']} detected, {o['accepted']} passed the mask checks, "
                 f"{o['rejected']} rejected")
    for code, n in o["reasons"].items():
        lines.append(f"  {code:<22}{n:>8}")
    lines.append(f"subject samples: {f['subjects']}")
    lines.append("")
    lines.append(f"{'edit type':<12}{'written':>9}{'rejected':>10}  reasons")
    for t, e in f["edits"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in e["reasons"].items())
        lines.append(f"{t:<12}{e['written']:>9}{e['rejected']:>10}  {reasons}")
    met = manifest.get("_metrics") or {}
    lines += _run_lines(met, "", f"{met.get('model_batches', 0)} batches")
    c = manifest["counts"]
    lines.append("")
    lines.append(f"{c['inputs']} input images -> {c['images']} image rows; {c['subject']} subject samples, "
                 f"{c['edit']} edit triplets, {c['rejected']} rejected candidates")
    return "\n".join(lines)

