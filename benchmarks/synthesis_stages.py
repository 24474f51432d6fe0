"""Per-stage synthesis time per image with the default-size architectures (random weights).

    python -m benchmarks.synthesis_stages [--images 2] [--size 512] [--sam-arch vit_h] [--device auto]

Builds GroundingDINO SwinT-OGC (6+6 layers, 900 queries, 800 px input) with a
BERT-base-sized text encoder and SAM (ViT-H by default) with seeded random
weights: the compute of the real models without their weights (none can be
downloaded here). Then times, per image, on one batch:

* detect  - GroundingDetector.detect (preprocessing + forward + box/phrase post-processing)
* segment - SamSegmenter.segment (resize/pad + image encoder + prompt/mask decoder + post-processing)
* edit    - all seven edit types + the subject reference for one object (a drawn mask: random
            weights give meaningless masks, and edit cost depends on the mask, not the weights)
* encode  - PNG encoding of everything one object's samples write

and reports which share of the total is spent outside the two model forward
passes (the hooks time GroundingDINO's forward, SAM's image encoder, prompt
encoder and mask decoder). Prints one JSON object, then a table. Figures are
for this machine only; run it on the target worker type for capacity planning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from benchmarks.common import self_peak_mb  # noqa: E402


def _timed(module, name, acc):
    orig = module.forward

    def forward(*a, **kw):
        t = time.perf_counter()
        try:
            return orig(*a, **kw)
        finally:
            acc[name] += time.perf_counter() - t

    module.forward = forward


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--size", type=int, default=512, help="image width (height = 3/4 of it)")
    ap.add_argument("--sam-arch", default="vit_h", choices=["vit_h", "vit_l", "vit_b"])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)

    import torch

    from unicurate.config import parse_recipe
    from unicurate.models.runtime import Runtime, select_device
    from unicurate.models.zoo import ModelSpec
    from unicurate.synthesis import edits as ed
    from unicurate.synthesis.edit_types.add import add
    from unicurate.synthesis.edit_types.background import background
    from unicurate.synthesis.edit_types.move import move
    from unicurate.synthesis.edit_types.recolor import recolor
    from unicurate.synthesis.edit_types.remove import remove
    from unicurate.synthesis.edit_types.replace import replace
    from unicurate.synthesis.edit_types.resize import resize
    from unicurate.synthesis import subject as sj
    from unicurate.synthesis.grounding import GroundingDinoDetector, SamSegmenter
    from unicurate.synthesis.synthesizer import encode_image, encode_mask

    device, precision = select_device(args.device)
    runtime = Runtime(device, precision)
    t0 = time.perf_counter()
    bert = ModelSpec("text_encoder", "BERT-base-sized, random", "transformers", "tiny://bench",
                     options={"layers": 12, "hidden": 768, "seed": 0})
    det = GroundingDinoDetector(
        ModelSpec("grounding_dino", "GroundingDINO SwinT-OGC, random", "groundingdino", "tiny://bench",
                  arch="SwinT-OGC", options={"config": "GroundingDINO_SwinT_OGC.py", "image_size": 800,
                                             "full_size": True}),
        None, runtime, parts={"text_encoder": (bert, None)}, box_threshold=0.0, max_objects=4)
    seg = SamSegmenter(ModelSpec("sam", f"SAM {args.sam_arch}, random", "segment_anything", "tiny://bench",
                                 arch=args.sam_arch, options={"full_size": True}), None, runtime)
    build_s = time.perf_counter() - t0
    fwd: dict = defaultdict(float)
    _timed(det.model, "detect_forward", fwd)
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        _timed(getattr(seg.model, part), "segment_forward", fwd)

    w, h = args.size, args.size * 3 // 4
    rng = np.random.default_rng(0)
    images, masks, boxes = [], [], []
    for k in range(args.images):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        x0, y0 = w // 4 + 10 * k, h // 4
        box = np.array([x0, y0, x0 + w // 3, y0 + h // 3], np.float32)
        m = np.zeros((h, w), bool)
        m[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = True
        img[m] = (230, 20, 20)
        images.append(img)
        masks.append(m)
        boxes.append(box)
    captions = ["a red square on a noisy background"] * args.images
    recipe = parse_recipe({"pipeline": "synthesize", "input": {"path": "x"}, "output": {"path": "y"}})
    tel = ed.TeleaInpainter(recipe.edits.inpaint_radius)

    # one warm-up batch (allocations, lazy init), then the timed batch
    det.detect(images[:1], captions[:1])
    seg.segment(images[:1], [[boxes[0]]])
    fwd.clear()

    stage: dict = {}
    t = time.perf_counter()
    dets = det.detect(images, captions)
    stage["detect"] = time.perf_counter() - t
    t = time.perf_counter()
    seg.segment(images, [[d.box for d in ds] or [b] for ds, b in zip(dets, boxes)])
    stage["segment"] = time.perf_counter() - t
    outputs = []
    t = time.perf_counter()
    for img, m, box in zip(images, masks, boxes):
        other, om = images[-1], masks[-1]
        removed = remove(img, m, box, "square", tel)
        res = [removed, add(removed, box, "square"), recolor(img, m, "blue", "square"),
               move(img, m, box, w // 8, 0, "square", tel), resize(img, m, box, 0.6, "square", tel),
               background(img, m, other, "square", "p"), replace(img, m, box, "square", other, om, "square", "p", tel)]
        outputs.append((res, sj.reference_image(img, m, box)))
    stage["edit"] = time.perf_counter() - t
    t = time.perf_counter()
    for res, ref in outputs:
        encode_image(ref)
        for e in res:
            encode_image(e.source), encode_image(e.target), encode_mask(e.region)
    stage["encode"] = time.perf_counter() - t

    n = args.images
    total = sum(stage.values())
    forwards = fwd["detect_forward"] + fwd["segment_forward"]
    result = {
        "benchmark": "synthesis_stages", "device": device, "precision": precision, "torch_threads":
        torch.get_num_threads(), "cpus": os.cpu_count(), "images": n, "image_size": [w, h],
        "sam_arch": args.sam_arch, "gdino": "SwinT-OGC 800px, 900 queries", "weights": "random (seeded)",
        "build_seconds": round(build_s, 2),
        "seconds_per_image": {k: round(v / n, 4) for k, v in stage.items()},
        "forward_seconds_per_image": {"detect": round(fwd["detect_forward"] / n, 4),
                                      "segment": round(fwd["segment_forward"] / n, 4)},
        "total_seconds_per_image": round(total / n, 4),
        "share_outside_model_forwards": round(1 - forwards / total, 4),
        "peak_rss_mb": self_peak_mb(),
    }
    print(json.dumps(result))
    print()
    print(f"{'stage':<10}{'s/image':>10}{'share':>8}")
    for k, v in stage.items():
        print(f"{k:<10}{v / n:>10.3f}{v / total:>8.1%}")
    print(f"{'total':<10}{total / n:>10.3f}")
    print(f"model forwards: detect {fwd['detect_forward'] / n:.3f} s, segment {fwd['segment_forward'] / n:.3f} s "
          f"per image; outside the forwards: {1 - forwards / total:.1%} of the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
