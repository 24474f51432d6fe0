"""The Synthesizer (stub grounding with known masks), the tiny GroundingDINO + SAM, and the Beam pipeline."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import syn_base_recipe
from unicurate.config import parse_recipe
from unicurate.manifests.validate import validate
from unicurate.schema import EDIT_TYPES, SynReason
from unicurate.synthesis.grounding import Detection, GroundedObject
from unicurate.synthesis.synthesizer import Synthesizer, decode_image, decode_mask, encode_image

from test_synthesis_ops import RED, StubDetector, scene


def syn_recipe(tmp_path=None, **sections) -> object:
    edits = {"per_object": 7, **sections.pop("edits", {})}
    return parse_recipe(syn_base_recipe(tmp_path or "in", tmp_path or "out", edits=edits, **sections))


class StubGrounder:
    """Test-only grounding: the drawn red square is 'detected' and 'segmented' exactly."""

    def __init__(self, detector=None):
        self.detector = detector or StubDetector([])

    def ground(self, images, captions):
        out = []
        for img, cap in zip(images, captions):
            if "nothing" in cap:
                out.append([])
                continue
            mask = np.all(img == RED, axis=-1)
            if "huge" in cap:
                mask = np.ones(mask.shape, bool)
                mask[:5] = False
            ys, xs = np.nonzero(mask)
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            out.append([GroundedObject(0, box, 0.8, "red square", mask, 0.95, 0.97)])
        return out


def rows(n=3, caption="a red square on a gradient"):
    out = []
    for k in range(n):
        img, _, _ = scene(box=(30 + 20 * k, 50, 100 + 20 * k, 120), seed=k)
        out.append({"key": f"img{k}", "caption": caption, "image": encode_image(img)})
    return out


def test_every_edit_type_and_subject_from_known_masks():
    syn = Synthesizer(syn_recipe(), grounder=StubGrounder())
    results = syn.process(rows(3))
    assert [r.image["status"] for r in results] == ["produced"] * 3
    for r in results:
        assert {e["edit_type"] for e in r.edit} == set(EDIT_TYPES)
        assert len(r.subject) == 1 and r.rejected == []
        assert r.image["subjects"] == 1 and r.image["edits"] == len(EDIT_TYPES)
        s = r.subject[0]
        ref = decode_image(s["reference_image"])
        assert np.all(ref[ref.shape[0] // 2, ref.shape[1] // 2] == RED)
        assert "red square" in s["instruction"] and s["caption"] in s["instruction"]
        assert s["box"] == pytest.approx([(30 + 20 * int(r.image["source_key"][-1])) / 300, 0.25,
                                          (100 + 20 * int(r.image["source_key"][-1])) / 300, 0.6])
        for e in r.edit:
            src, tgt, m = decode_image(e["source_image"]), decode_image(e["target_image"]), decode_mask(e["mask"])
            if e["edit_type"] != "background":  # stored (lossless) images change only inside the stored mask
                assert not np.any(src != tgt, axis=-1)[~m].any(), e["edit_type"]
            assert e["change_outside"] is not None and e["template_id"].startswith(e["edit_type"] + "/")
            if e["edit_type"] in ("background", "replace"):
                assert e["partner_key"] and e["partner_key"] != r.image["source_key"]


def test_every_image_is_accounted_for():
    syn = Synthesizer(syn_recipe(), grounder=StubGrounder())
    batch = rows(1) + rows(1, caption="nothing here") + rows(1, caption="a huge red square")
    batch[1]["key"], batch[2]["key"] = "none", "huge"
    batch.append({"key": "broken", "caption": "a red square", "image": b"not an image"})
    res = {r.image["source_key"]: r for r in syn.process(batch)}
    assert res["img0"].image["status"] == "produced"
    assert res["none"].image["status"] == "no_object" and res["none"].image["reject_reasons"] == ["no_object"]
    huge = res["huge"]
    assert huge.image["status"] == "all_rejected"
    assert huge.image["reject_reasons"][0] == "all_rejected" and "mask_too_large" in huge.image["reject_reasons"]
    assert huge.rejected[0]["kind"] == "object" and huge.rejected[0]["mask_area"] > 0.9
    assert res["broken"].image["status"] == "image_error" and "cannot decode" in res["broken"].image["error"]


def test_redetection_in_the_synthesizer_rejects_with_reasons():
    """A detector that still sees the object after removal: remove rejected, add kept (stub detector)."""
    _, _, box = scene(box=(30, 50, 100, 120))
    det = StubDetector([Detection(box, 0.9, "red square")])
    recipe = syn_recipe(edits={"types": ["remove", "add"], "per_object": 2}, checks={"redetect": True})
    r = Synthesizer(recipe, grounder=StubGrounder(det)).process(rows(1))[0]
    assert [e["edit_type"] for e in r.edit] == ["add"]
    assert [(x["edit_type"], x["reject_reasons"]) for x in r.rejected] == [("remove", [SynReason.STILL_DETECTED.value])]
    assert r.rejected[0]["redetect_score"] == pytest.approx(0.9)


def test_partners_come_from_earlier_batches_when_a_batch_has_one_image():
    syn = Synthesizer(syn_recipe(edits={"types": ["background", "replace"], "per_object": 2}),
                      grounder=StubGrounder())
    first = syn.process(rows(1))[0]
    assert sorted(x["reject_reasons"][0] for x in first.rejected) == ["no_partner", "no_partner"]
    second = syn.process([dict(rows(2)[1])])[0]
    assert sorted(e["edit_type"] for e in second.edit) == ["background", "replace"]
    assert {e["partner_key"] for e in second.edit} == {"img0"}


# ------------------------------------------------------------------ tiny models
@pytest.fixture(scope="module")
def tiny_synth():
    lax = {"min_pred_iou": 0.0, "min_stability": 0.0, "min_mask_area": 0.0, "max_mask_area": 1.0,
           "min_box_area": 0.0, "max_box_area": 1.0, "min_largest_component": 0.0, "max_contours": 1000}
    return Synthesizer(syn_recipe(checks={"clip_similarity": True}, quality=lax))


def test_tiny_grounding_dino_and_sam_shapes(tiny_synth):
    g = tiny_synth.grounder
    imgs = [scene(seed=k)[0] for k in range(2)] + [scene(h=120, w=90)[0]]
    objs = g.ground(imgs, ["a red square on a gradient", "a red square", ""])
    assert objs[2] == []  # no caption, no prompt, no detection
    for img, os_ in zip(imgs[:2], objs[:2]):
        assert 0 < len(os_) <= tiny_synth.recipe.grounding.max_objects
        for o in os_:
            h, w = img.shape[:2]
            assert o.mask.shape == (h, w) and o.mask.dtype == bool
            assert 0 <= o.box[0] < o.box[2] <= w and 0 <= o.box[1] < o.box[3] <= h
            assert o.score > tiny_synth.recipe.grounding.box_threshold
            assert all(word in "a red square on a gradient" for word in o.phrase.split())
            assert np.isfinite(o.pred_iou) and 0.0 <= o.stability <= 1.0
    names = {r["name"]: r for r in tiny_synth.records}
    assert {"grounding_dino", "text_encoder", "sam", "clip", "inpainter"} <= set(names)
    assert all(not names[n]["calibrated"] for n in ("grounding_dino", "text_encoder", "sam", "clip"))
    loads = dict(tiny_synth.runtime.loads)
    assert loads == {"grounding_dino": 1, "sam": 1, "clip": 1}
    tiny_synth.process(rows(2))
    assert dict(tiny_synth.runtime.loads) == loads  # batches reuse the loaded models


def test_tiny_clip_similarity_is_recorded(tiny_synth):
    res = tiny_synth.process(rows(2))
    assert not [r.image for r in res if r.image["status"] != "produced"]
    sims = [e["clip_similarity"] for r in res for e in r.edit]
    assert sims and all(s is not None and -1.0 <= s <= 1.0001 for s in sims)


# ------------------------------------------------------------------ pipeline
def test_synthesize_pipeline_on_a_curate_run(curated, tmp_path):
    from unicurate.run.execute import run_synthesize

    cur_out, cur_manifest = curated
    out = tmp_path / "syn"
    recipe = syn_recipe(input={"path": str(cur_out), "max_images": 6},
                        output={"path": str(out), "images_per_shard": 4},
                        quality={"min_pred_iou": 0.0, "min_stability": 0.0})
    said = []
    m = run_synthesize(recipe, say=said.append)
    assert any("UNCALIBRATED" in s for s in said)
    assert m["kind"] == "synthesis" and m["counts"]["inputs"] == 6 == m["counts"]["images"]
    assert len(m["shards"]["images"]) == 2 and m["_metrics"]["model_loads"] == 1
    assert m["source"]["path"] == str(cur_out) and m["source"]["kept"] == cur_manifest["counts"]["kept"]
    rep = validate(str(out))
    assert rep.ok, rep.problems
    images = pq.read_table(out / "images").to_pylist()
    kept = sorted(pq.read_table(cur_out / "kept", columns=["key"]).column("key").to_pylist())[:6]
    assert sorted(r["source_key"] for r in images) == kept
    # tamper: drop an images/ row's shard -> validate names the problem
    next((out / "images").glob("part-*.parquet")).unlink()
    bad = validate(str(out))
    assert not bad.ok and any("missing" in p for p in bad.problems)


def test_synthesize_refuses_a_folder_that_is_not_a_curate_run(tmp_path):
    from unicurate.download.ingest import InputError
    from unicurate.run.execute import run_synthesize

    with pytest.raises(InputError, match="not found"):
        run_synthesize(syn_recipe(input={"path": str(tmp_path / "nowhere")},
                                  output={"path": str(tmp_path / "o")}), say=lambda _m: None)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "manifest.json").write_text(json.dumps({"kind": "synthesis", "schema_version": "synthesis/1"}))
    with pytest.raises(InputError, match="synthesize reads curate outputs"):
        run_synthesize(syn_recipe(input={"path": str(tmp_path / "x")}, output={"path": str(tmp_path / "o")}),
                       say=lambda _m: None)


def test_synthesize_recipe_errors_name_the_field():
    from unicurate.config import RecipeError, load_recipe

    with pytest.raises(Exception, match="edits.types"):
        syn_recipe(edits={"types": ["remove", "teleport"]})
    with pytest.raises(Exception, match="unknown colour"):
        syn_recipe(edits={"colors": ["octarine"]})
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("/nonexistent.yaml")


def test_text_encoder_folder_through_the_resolver(tmp_path):
    from unicurate.models import zoo
    from unicurate.models.resolver import ModelUnavailable

    local = tmp_path / "bert"
    local.mkdir()
    r = syn_recipe(models={"profile": "default", "cache_dir": str(tmp_path / "cache"), "offline": True,
                           "overrides": {"text_encoder": {"uri": str(local)}}})
    spec = {s.name: s for s in zoo.synthesis_specs(r)}["text_encoder"]
    assert zoo.locate(spec, r.models) == local  # a local BERT folder is used as it is
    r = syn_recipe(models={"profile": "default", "cache_dir": str(tmp_path / "cache"), "offline": True})
    specs = {s.name: s for s in zoo.synthesis_specs(r)}
    assert zoo.presence(specs["text_encoder"], str(tmp_path / "cache")) == "missing"
    with pytest.raises(ModelUnavailable, match="text_encoder.*bert-base-uncased/config.json.*offline"):
        zoo.locate(specs["text_encoder"], r.models)
    # each file lands in one cache folder, which is what GroundingDINO is given
    for f in spec.options["files"]:
        p = tmp_path / "cache" / "hf" / "google-bert" / "bert-base-uncased" / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    assert zoo.presence(specs["text_encoder"], str(tmp_path / "cache")) == "cached"
    assert zoo.locate(specs["text_encoder"], r.models) == p.parent
    sam_b = syn_recipe(models={"profile": "default"}, grounding={"sam_arch": "vit_b"})
    sam = {s.name: s for s in zoo.synthesis_specs(sam_b)}["sam"]
    assert sam.arch == "vit_b" and sam.uri.endswith("sam_vit_b_01ec64.pth")
