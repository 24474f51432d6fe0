"""Model stage: unicurate's CLIP scoring in the curate pipeline versus the raw batched forward (the limit).

    python -m benchmarks.model_stage [--images 512] [--batch 32] [--processes 2] [--device auto]

Both sides use the same model: open_clip ``ViT-B-32`` with seeded random weights
(the compute of the real model; no weights can be downloaded here), written
once as a ``.safetensors`` file and loaded by both through open_clip.

* **raw**: a tight loop of ``encode_image`` + ``encode_text`` on pre-made
  batches (images preprocessed and captions tokenized before the clock starts),
  under ``torch.inference_mode()``, after one warm-up batch; fp16 on CUDA. The
  limit a pipeline can approach.
* **pipeline**: ``unicurate run`` on a curate recipe whose input is already
  downloaded shards (parquet with an ``image`` column of 384 px JPEGs, read
  through ``input.image_col``; no network), with only the ``clip_score`` filter,
  the model given as ``models.overrides.clip`` (the path real weights take), on
  the DirectRunner with ``direct_num_workers`` = processes. Timed from pipeline
  start to manifest (as ``unicurate run`` prints it: includes Beam start-up, the
  model load in each worker, reading, decoding, preprocessing and writing).

Reports images/s for each, the ratio pipeline/raw, the wall time of the units
stage (reading, decoding, preprocessing and the forwards of every work unit, first
unit start to last unit end across workers), and peak RSS per process.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (bench_env, cache_dir, corpus, parse_run_log, run_and_report, run_measured, self_peak_mb,
                               table, unicurate_cmd)

ARCH = "ViT-B-32"


def random_weights(dest: Path) -> Path:
    """open_clip ViT-B-32 with seeded random weights, saved once as safetensors."""
    path = dest / "open_clip-ViT-B-32-random-seed0.safetensors"
    if path.exists():
        return path
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.rename(path)
    return path


def shards(n: int, dest: Path) -> Path:
    """n already-downloaded images as one parquet file (url, caption, image: 384 px JPEG bytes)."""
    path = dest / f"shard-{n}-384.parquet"
    if path.exists():
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder = corpus(n, seed=0, dest=cache_dir() / f"jpegs-{n}-s0")
    urls, caps, imgs = [], [], []
    for i, p in enumerate(sorted(folder.glob("*.jpg"))[:n]):
        with Image.open(p) as im:
            im = im.convert("RGB")
            s = 384 / min(im.size)
            im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=92)
        urls.append(f"https://example.invalid/img/{p.name}")
        caps.append(f"a generated test photo number {i} with smooth colours")
        imgs.append(buf.getvalue())
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.table({"url": urls, "caption": caps, "image": pa.array(imgs, pa.binary())}), tmp,
                   row_group_size=256)
    tmp.rename(path)
    return path


# ------------------------------------------------------------------ (a) raw forward, in its own process
def raw(weights: str, shard: str, images: int, batch: int, device: str) -> dict:
    import open_clip
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    from unicurate.models.runtime import Runtime, select_device

    dev, precision = select_device(device)
    dtype = Runtime(dev, precision).dtype
    # QuickGELU, as unicurate's CLIP loader builds it (the default profile's OpenAI weights use it)
    model, _, preprocess = open_clip.create_model_and_transforms(ARCH, pretrained=weights, force_quick_gelu=True)
    model = model.eval().to(device=dev, dtype=dtype)
    tok = open_clip.get_tokenizer(ARCH)
    t = pq.read_table(shard, columns=["caption", "image"]).slice(0, batch * 2)
    pix = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in t.column("image").to_pylist()])
    tokens = tok(t.column("caption").to_pylist())
    batches = [(pix[i:i + batch].to(dev, dtype=dtype), tokens[i:i + batch].to(dev))
               for i in range(0, len(pix), batch)]

    def step(x, tk):
        fi = torch.nn.functional.normalize(model.encode_image(x).float(), dim=-1)
        ft = torch.nn.functional.normalize(model.encode_text(tk).float(), dim=-1)
        return (fi * ft).sum(-1).cpu()  # the CLIP score, brought back to the host as the pipeline does

    with torch.inference_mode():
        step(*batches[0])  # warm-up
        done, k = 0, 0
        start = time.perf_counter()
        while done < images:
            x, tk = batches[k % len(batches)]
            step(x, tk)
            done += len(x)
            k += 1
        seconds = time.perf_counter() - start
    return {"images": done, "seconds": round(seconds, 3), "images_per_s": round(done / seconds, 2),
            "device": dev, "precision": precision, "torch_threads": torch.get_num_threads(),
            "peak_rss_mb": self_peak_mb()}


# ------------------------------------------------------------------ (b) the pipeline
def pipeline(weights: Path, shard: Path, images: int, batch: int, processes: int, device: str,
             workdir: Path) -> dict:
    import yaml

    out = workdir / "scored"
    shutil.rmtree(out, ignore_errors=True)
    recipe = {
        "pipeline": "curate", "name": "bench-model-stage",
        "input": {"path": str(shard), "image_col": "image", "carry_columns": "none"},
        "output": {"path": str(out), "rows_per_shard": 1000},
        "resize": {"image_size": 384, "resize_mode": "keep_ratio", "resize_only_if_bigger": True,
                   "skip_reencode": True, "encode_format": "jpg", "encode_quality": 92},
        "filters": {"clip_score": {"min_score": -1.0}, "dedup": {"exact": False, "near": False}},
        "models": {"profile": "default", "device": device, "batch_size": batch,
                   "overrides": {"clip": {"uri": str(weights), "arch": ARCH}}},
        "runner": {"profile": "local", "direct_num_workers": processes,
                   "direct_running_mode": "multi_processing" if processes > 1 else "in_memory"},
    }
    path = workdir / "bench-model-stage.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    wall, log, mem = run_measured(unicurate_cmd() + ["run", str(path)], workdir)
    manifest = json.loads((out / "manifest.json").read_text())
    import pyarrow.parquet as pq

    scored = sum(pq.read_table(f, columns=["clip_score"]).column("clip_score").drop_null().__len__()
                 for f in out.glob("*/*.parquet"))
    if scored != images:
        raise RuntimeError(f"the pipeline scored {scored} of {images} images:\n{log[-3000:]}")
    pipeline_s, stages = parse_run_log(log)
    pipeline_s = pipeline_s or wall
    model_s = stages.get("work units")
    return {"images": manifest["counts"]["inputs"], "scored": scored, "seconds": round(pipeline_s, 2),
            "wall_seconds": round(wall, 2), "images_per_s": round(images / pipeline_s, 2),
            "model_stage_seconds": model_s,
            "model_stage_images_per_s": round(images / model_s, 2) if model_s else None,
            "processes": processes, **mem.summary()}


def bench(images: int, batch: int, processes: int, device: str, workdir: Path) -> dict:
    cache = cache_dir()
    weights = random_weights(cache)
    shard = shards(images, cache)
    res = subprocess.run([sys.executable, "-m", "benchmarks.model_stage", "--raw", str(weights), str(shard),
                          "--images", str(images), "--batch", str(batch), "--device", device],
                         capture_output=True, text=True, env=bench_env(),
                         cwd=str(Path(__file__).resolve().parent.parent))
    if res.returncode != 0:
        raise RuntimeError(f"raw forward failed:\n{res.stderr[-3000:]}")
    a = json.loads(res.stdout.strip().splitlines()[-1])
    b = pipeline(weights, shard, images, batch, processes, device, workdir)
    return {"benchmark": "model_stage_vs_raw_forward", "model": f"open_clip {ARCH}, random weights",
            "images": images, "batch": batch, "device": a["device"], "precision": a["precision"],
            "raw": a, "pipeline": b, "ratio": round(b["images_per_s"] / a["images_per_s"], 3),
            "stage_ratio": round(b["model_stage_images_per_s"] / a["images_per_s"], 3)
            if b.get("model_stage_images_per_s") else None}


def print_table(r: dict) -> None:
    a, b = r["raw"], r["pipeline"]
    print(table(["CLIP ViT-B-32", "images", "seconds", "images/s", "peak RSS MB"], [
        [f"raw encode_image+encode_text ({a['torch_threads']} threads)", a["images"], f"{a['seconds']:.1f}",
         f"{a['images_per_s']:.1f}", f"{a['peak_rss_mb']:.0f}"],
        [f"unicurate pipeline ({b['processes']} worker(s))", b["images"], f"{b['seconds']:.1f}",
         f"{b['images_per_s']:.1f}", f"driver {b['peak_rss_mb']['driver']:.0f}; workers "
         + (", ".join(f"{m:.0f}" for m in b["peak_rss_mb"]["workers"]) or "in driver")],
        ["  of which the units stage (decode + preprocess + forward)", "", f"{b['model_stage_seconds'] or 0:.1f}",
         f"{b['model_stage_images_per_s'] or 0:.1f}", ""],
    ]))
    print(f"ratio pipeline / raw forward: {r['ratio']:.2f}x (units stage alone: {r['stage_ratio'] or 0:.2f}x; "
          f"{r['device']}/{r['precision']}, batch {r['batch']})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--raw", nargs=2, metavar=("WEIGHTS", "SHARD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.raw:
        print(json.dumps(raw(args.raw[0], args.raw[1], args.images, args.batch, args.device)))
        return 0
    run_and_report("unicurate-bench-model-",
                   lambda workdir: bench(args.images, args.batch, args.processes, args.device, workdir), print_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
