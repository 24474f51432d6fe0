"""Semantic dedup and embeddings inside a whole curate run, at scale: N generated web images plus planted near copies.

    python -m benchmarks.semantic_curate [--images 10000] [--copies 500] [--processes 2] [--json FILE]

The ingest benchmark's corpus and loopback web (``benchmarks.ingest``), plus ``--copies`` near copies of its first
images (cropped by ~1% and re-encoded at quality 85, as the tests plant them), curated by one ``unicurate run`` on
``--processes`` local worker processes with the tiny CLIP scoring every image, ``output.embeddings: true`` and
``filters.semantic_dedup`` (threshold 0.998: the tiny model's random weights put distinct generated images up to
~0.997 apart; a trained CLIP uses ~0.95). Checks: every input row is in exactly one output row, the folder
validates (embedding files included), the url list is byte-identical afterwards, how many planted copies were
rejected as ``semantic_duplicate`` of their original, and how many other rows were (the tiny model's false
positives). Records time and peak RSS per process.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

from benchmarks.common import cache_dir, corpus, run_and_report, run_measured, serve, table, unicurate_cmd, \
    validate_output
from benchmarks.ingest import ingest_recipe, write_recipe, write_url_list

THRESHOLD = 0.998


def plant_copies(folder: Path, dest: Path, copies: int) -> dict[str, str]:
    """``dest``: the corpus's images (linked) plus near copies of the first ``copies`` of them, named
    ``zz-copy-<name>`` (so they come after every original in the url list); returns {copy name: original name}."""
    from PIL import Image

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    names = sorted(p.name for p in folder.glob("*.jpg"))
    for n in names:
        (dest / n).symlink_to(folder / n)
    planted = {}
    for n in names[:copies]:
        with Image.open(folder / n) as im:
            w, h = im.size
            dx, dy = max(1, w // 100), max(1, h // 100)
            buf = io.BytesIO()
            im.convert("RGB").crop((dx, dy, w - dx, h - dy)).resize((w, h)).save(buf, format="JPEG", quality=85)
        (dest / f"zz-copy-{n}").write_bytes(buf.getvalue())
        planted[f"zz-copy-{n}"] = n
    return planted


def bench(images: int, copies: int, processes: int, threads: int, workdir: Path) -> dict:
    import pyarrow.parquet as pq

    folder = corpus(images, seed=0, dest=cache_dir() / f"jpegs-{images}-s0")
    web = workdir / "web"
    planted = plant_copies(folder, web, copies)
    urls = workdir / "urls.parquet"
    out = workdir / "unicurate-out"
    shutil.rmtree(out, ignore_errors=True)
    with serve(web) as base:
        n_rows = write_url_list(web, base, urls)
        before = hashlib.sha256(urls.read_bytes()).hexdigest()
        recipe = ingest_recipe(urls, out, processes, threads, shard_rows=1000)
        recipe["filters"].update(clip_score={}, semantic_dedup={"threshold": THRESHOLD})
        recipe["output"]["embeddings"] = True
        recipe["models"]["batch_size"] = 64
        path = write_recipe(recipe, workdir / "bench-semantic.yaml")
        wall, _log, mem = run_measured(unicurate_cmd() + ["run", str(path)], workdir, role_of=None)
    after = hashlib.sha256(urls.read_bytes()).hexdigest()
    ok, said = validate_output(out)
    manifest = json.loads((out / "manifest.json").read_text())
    rows = [r for sub in ("kept", "rejected") for f in sorted((out / sub).glob("*.parquet"))
            for r in pq.read_table(f, columns=["key", "url", "reject_reasons", "duplicate_of"]).to_pylist()]
    by_name = {r["url"].rsplit("/", 1)[1]: r for r in rows}
    semantic = [r for r in rows if "semantic_duplicate" in r["reject_reasons"]]
    found = sum(1 for c, o in planted.items()
                if "semantic_duplicate" in by_name[c]["reject_reasons"] and by_name[c]["duplicate_of"] == by_name[o]["key"]
                or "semantic_duplicate" in by_name[o]["reject_reasons"] and by_name[o]["duplicate_of"] == by_name[c]["key"])
    involved = set(planted) | set(planted.values())
    others = sum(1 for r in semantic if r["url"].rsplit("/", 1)[1] not in involved)
    c = manifest["counts"]
    emb_rows = {s: sum(e["rows"] for e in manifest["embeddings"][s]) for s in ("kept", "rejected")}
    return {"benchmark": "semantic_curate", "images": images, "copies": copies, "processes": processes,
            "threads": threads, "threshold": THRESHOLD, "seconds": round(wall, 1), "inputs": n_rows,
            "counts": c, "every_row_once": c["inputs"] == n_rows == c["kept"] + c["rejected"] == len(rows),
            "validates": ok, "validate_said": said.strip().splitlines()[-1] if said else "",
            "input_unchanged": before == after, "planted_found": found,
            "semantic_duplicates": len(semantic), "other_rows_rejected_as_copies": others,
            "embedding_rows": emb_rows, "reasons": manifest["funnel"]["reasons"], **mem.summary()}


def print_table(r: dict) -> None:
    print(table(["measure", "value"], [
        ["rows (images + planted copies)", f"{r['inputs']} ({r['images']} + {r['copies']})"],
        ["kept + rejected", f"{r['counts']['kept']} + {r['counts']['rejected']} (every row once: "
                            f"{r['every_row_once']})"],
        ["validates (embedding files included)", r["validates"]],
        ["url list unchanged", r["input_unchanged"]],
        ["planted copies found", f"{r['planted_found']} / {r['copies']}"],
        ["other rows rejected as copies (tiny CLIP)", r["other_rows_rejected_as_copies"]],
        ["embedding rows kept / rejected", f"{r['embedding_rows']['kept']} / {r['embedding_rows']['rejected']}"],
        ["wall", f"{r['seconds']} s"],
        ["peak RSS driver / largest worker", f"{r['peak_rss_mb']['driver']} / {r['peak_rss_mb'].get('max_worker')} MB"],
    ]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--copies", type=int, default=500)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    def run(workdir: Path) -> dict:
        return bench(args.images, args.copies, args.processes, args.threads, workdir)

    r = run_and_report("semantic_curate", run, print_table, json_path=args.json, tag="semantic")
    good = r["every_row_once"] and r["validates"] and r["input_unchanged"]
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
