"""All performance comparisons in one invocation: a table on stdout and one JSON file.

    python -m benchmarks.run [--quick] [--device auto|cpu|cuda] [--json PATH] [--only ingest,model,synthesis]

1. ingest vs img2dataset (``benchmarks/ingest.py``): the same loopback web of
   generated JPEGs (300-1500 px), img2dataset's ``download()`` against the curate
   pipeline with download + resize + rule filters. Target: ratio >= 1.0.
2. model stage vs raw forward (``benchmarks/model_stage.py``): open_clip ViT-B-32
   (random weights) in the curate pipeline on already-downloaded shards against a
   tight loop of batched ``encode_image`` + ``encode_text``. Target: ratio >= 0.8.
3. synthesis (``benchmarks/synthesis_stages.py``): per-stage time per image at the
   default architecture sizes (random weights) and the share outside the model
   forwards. Target: <= 30%.
4. peak RSS per process for each (driver and workers).

``--quick`` (under 10 minutes on 2 CPU cores): 300 images for ingest, 128 for the
model stage, one synthesis image with SAM ViT-B. The full run: 2000, 1024, and one
image with SAM ViT-H (the default). ``--device cuda`` runs the model stage and
synthesis on the GPU (fp16), so the same script gives GPU figures where one exists.
Compare ratios, not absolute figures: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import ingest, model_stage
from benchmarks.common import run_and_report, table

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"ingest": ("ratio", ">=", 1.0), "model": ("ratio", ">=", 0.8),
           "synthesis": ("share_outside_model_forwards", "<=", 0.30)}
SIZES = {"quick": {"ingest": 300, "model": 128, "synthesis": (1, "vit_b")},
         "full": {"ingest": 2000, "model": 1024, "synthesis": (1, "vit_h")}}


def machine(device: str) -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        info["memory_gb"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    import torch

    info["torch"] = torch.__version__
    info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["device_requested"] = device
    return info


def synthesis(images: int, sam_arch: str, device: str) -> dict:
    res = subprocess.run([sys.executable, "-m", "benchmarks.synthesis_stages", "--images", str(images),
                          "--sam-arch", sam_arch, "--device", device], capture_output=True, text=True,
                         cwd=str(ROOT), env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    if res.returncode != 0:
        raise RuntimeError(f"synthesis_stages failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[0])


def verdict(name: str, result: dict) -> dict:
    field, op, bound = TARGETS[name]
    value = result.get(field)
    met = value is not None and (value >= bound if op == ">=" else value <= bound)
    return {"measure": field, "value": value, "target": f"{op} {bound}", "met": met}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: under 10 minutes on 2 CPU cores")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--only", default="ingest,model,synthesis")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="worker processes (both tools)")
    ap.add_argument("--threads", type=int, default=16, help="download threads per process (both tools)")
    ap.add_argument("--json", help="where to write the JSON (default benchmarks/results-run-{quick,full}-DEVICE.json)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in only:
        if s not in TARGETS:
            ap.error(f"--only: unknown {s!r}; choose from {', '.join(TARGETS)}")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: torch sees no CUDA device here")
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    started = time.monotonic()
    results: dict = {"benchmark": "unicurate performance", "mode": mode, "machine": machine(args.device),
                     "results": {}, "targets": {}}
    device = "cuda" if results["machine"]["cuda"] and args.device != "cpu" else "cpu"
    out = Path(args.json) if args.json else ROOT / "benchmarks" / f"results-run-{mode}-{device}.json"

    def bench(workdir: Path) -> dict:
        if "ingest" in only:
            print(f"[bench] 1/3 ingest: {sizes['ingest']} JPEGs, img2dataset then unicurate ...", file=sys.stderr,
                  flush=True)
            (workdir / "ingest").mkdir()
            results["results"]["ingest"] = ingest.bench(sizes["ingest"], args.processes, args.threads,
                                                        workdir / "ingest")
        if "model" in only:
            print(f"[bench] 2/3 model stage: CLIP ViT-B-32 on {sizes['model']} images, raw then pipeline ...",
                  file=sys.stderr, flush=True)
            (workdir / "model").mkdir()
            results["results"]["model"] = model_stage.bench(sizes["model"], 32, args.processes, args.device,
                                                            workdir / "model")
        if "synthesis" in only:
            n, arch = sizes["synthesis"]
            print(f"[bench] 3/3 synthesis: {n} image(s), GroundingDINO SwinT-OGC + SAM {arch} ...", file=sys.stderr,
                  flush=True)
            results["results"]["synthesis"] = synthesis(n, arch, args.device)
        for name, r in results["results"].items():
            results["targets"][name] = verdict(name, r)
        results["seconds"] = round(time.monotonic() - started, 1)
        return results

    def print_tables(results: dict) -> None:
        m = results["machine"]
        print(f"unicurate benchmarks ({mode}) on {m.get('cpu', '?')}, {m['cpus']} CPUs, {m.get('memory_gb', '?')} GB"
              f"{', ' + m['cuda'] if m.get('cuda') else ', no GPU'}; {results['seconds']:.0f} s; JSON: {out}")
        res = results["results"]
        if "ingest" in res:
            print()
            ingest.print_table(res["ingest"])
        if "model" in res:
            print()
            model_stage.print_table(res["model"])
        if "synthesis" in res:
            s = res["synthesis"]
            print()
            print(table(["synthesis stage", "s / image", "share"],
                        [[k, f"{v:.3f}", f"{v / s['total_seconds_per_image']:.1%}"]
                         for k, v in s["seconds_per_image"].items()]
                        + [["total", f"{s['total_seconds_per_image']:.3f}", ""]]))
            print(f"outside the model forwards: {s['share_outside_model_forwards']:.1%} ({s['gdino']}, SAM "
                  f"{s['sam_arch']}, {s['device']}/{s['precision']}; peak RSS {s.get('peak_rss_mb', 0):.0f} MB)")
        print()
        print(table(["comparison", "measured", "target", "met"],
                    [[k, f"{v['value']:.3f}" if v["value"] is not None else "-", v["target"],
                      "yes" if v["met"] else "NO"]
                     for k, v in results["targets"].items()]))

    run_and_report("unicurate-bench-", bench, print_tables, json_path=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
