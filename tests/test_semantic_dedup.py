"""Semantic dedup (SemDeDup on CLIP image embeddings) and the embedding files a curate run writes.

The pipeline test plants near copies (re-encoded, cropped by ~1%) among generated scenes. The tiny profile's CLIP
has random weights, so distinct scenes sit up to ~0.997 cosine apart and copies above 0.999: the test's threshold
is 0.998 (a trained ViT-B/32 separates them at SemDeDup's usual 0.95)."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import base_recipe, output_rows
from unicurate.config import RecipeError, parse_recipe
from unicurate.filters import semantic_dedup as sd
from unicurate.manifests import embeddings as emb

THRESHOLD = 0.998


# ------------------------------------------------------------------ the decisions, on synthetic embeddings
def planted(n_groups: int, copies: int, dim: int = 64, seed: int = 0):
    """Members in groups of near copies (cosine ~0.99 within a group, ~0 across) and their group ids."""
    rng = np.random.default_rng(seed)
    members, group = [], []
    pos = 0
    for g in range(n_groups):
        base = rng.normal(size=dim)
        for _ in range(1 + (copies if g % 2 == 0 else 0)):
            v = base + 0.08 * rng.normal(size=dim)
            members.append(sd.Member(pos, f"k{pos}", float(rng.random()), sd.pack(v)))
            group.append(g)
            pos += 1
    return members, group


def losers_of(members, cfg):
    return dict(sd.decide(members, cfg))


def test_each_group_of_copies_keeps_its_best_member():
    members, group = planted(60, copies=2)
    cfg = sd.SemanticDedupConfig(threshold=0.9, cluster_rows=20)
    losers = losers_of(members, cfg)
    for g in set(group):
        ms = [m for m, gg in zip(members, group) if gg == g]
        best = max(ms, key=lambda m: (m.clip_score, -m.pos))
        assert best.pos not in losers
        for m in ms:
            if m is not best:
                assert losers[m.pos] == best.key  # a copy of the kept member of its group
    kept_keys = {m.key for m in members if m.pos not in losers}
    assert set(losers.values()) <= kept_keys  # duplicate_of always names a kept row
    assert len(members) - len(losers) == len(set(group))


def test_decisions_do_not_depend_on_order_or_batching():
    """Runners deliver members in any order and cut them into batches of any size: the clusters and the losers stay
    the same (faiss's BLAS path, from 20 rows a search, rounds differently from its per-row loop: not used)."""
    members, _ = planted(300, copies=3, seed=1, dim=32)
    cfg = sd.SemanticDedupConfig(threshold=0.9, cluster_rows=40, train_rows=400)
    first = losers_of(members, cfg)
    shuffled = members[:]
    random.Random(7).shuffle(shuffled)
    assert losers_of(shuffled, cfg) == first
    assert first  # there were copies to find
    centroids = sd.train_centroids([(m.key, m.embedding) for m in members], len(members), cfg)
    assert len(centroids) > 1
    whole = sd.assign(members, centroids)
    rng, pieces, start = random.Random(3), [], 0
    while start < len(members):
        size = rng.choice([1, 3, 19, 20, 64, 257])
        pieces += sd.assign(members[start:start + size], centroids)
        start += size
    assert pieces == whole
    assert dict(sd.decide(members, cfg)) == first


def test_chains_and_ties():
    """A chain a~b~c with a!~c: b is a copy of a; c is kept unless it is within the threshold of a kept row. Equal
    scores rank by input position."""
    e = np.eye(3)
    a, b = e[0], (e[0] + e[1]) / np.sqrt(2)
    c = e[1]
    ms = [sd.Member(0, "a", 0.5, sd.pack(a)), sd.Member(1, "b", 0.5, sd.pack(b)), sd.Member(2, "c", 0.5, sd.pack(c))]
    assert dict(sd.cluster_losers(ms, 0.7)) == {1: "a"}  # cos(a,b)=cos(b,c)=0.707, cos(a,c)=0
    assert dict(sd.cluster_losers(ms, 0.71)) == {}
    ms[2] = ms[2]._replace(clip_score=0.9)  # c now ranks first: b is its copy, a stays
    assert dict(sd.cluster_losers(ms, 0.7)) == {1: "c"}


def test_the_sample_is_drawn_by_key_hash():
    cfg = sd.SemanticDedupConfig(train_rows=1000)
    keys = [f"key{i}" for i in range(20000)]
    drawn = [k for k in keys if sd.in_sample(k, len(keys), cfg)]
    assert 800 < len(drawn) < 1200
    assert drawn == [k for k in keys if sd.in_sample(k, len(keys), cfg)]
    assert all(sd.in_sample(k, 1000, cfg) for k in keys[:1000])  # no more candidates than train_rows: all train


def test_recipes_need_clip_for_semantic_dedup_and_embeddings(tmp_path):
    data = base_recipe(tmp_path / "in.parquet", tmp_path / "out")
    with pytest.raises(RecipeError, match="clip_score"):
        parse_recipe({**data, "filters": {"semantic_dedup": {}}})
    with pytest.raises(RecipeError, match="clip_score"):
        parse_recipe({**data, "output": {**data["output"], "embeddings": True}})
    plain = parse_recipe({**data, "filters": {"clip_score": {}}})
    with_emb = parse_recipe({**data, "filters": {"clip_score": {}}, "output": {**data["output"], "embeddings": True}})
    assert plain.recipe_hash() != with_emb.recipe_hash()  # the units hold the embeddings: not an execution setting


# ------------------------------------------------------------------ the pipeline, on planted near copies
def planted_images(path, n: int = 36):
    """Generated scenes; later in the input, every third has a near copy (cropped by ~1%, re-encoded at quality
    85) and every sixth also an exact copy (same bytes, another caption: another clip_score) and a repeat of its
    url. Returns the rows (url, group, kind)."""
    from unicurate import sampleweb

    rng = np.random.default_rng(1)
    rows, later = [], []
    for i in range(n):
        img, caption = sampleweb._scene(rng, 320, 240)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=95)
        original = {"url": f"http://img.test/{i}.jpg", "caption": caption, "image": buf.getvalue(), "group": i,
                    "kind": "original"}
        rows.append(original)
        if i % 3 == 0:
            buf = io.BytesIO()
            img.crop((3, 2, 317, 238)).resize((320, 240)).save(buf, format="JPEG", quality=85)
            later.append({**original, "url": f"http://img.test/{i}-copy.jpg", "caption": caption + " again",
                          "image": buf.getvalue(), "kind": "near"})
        if i % 6 == 0:
            later.append({**original, "url": f"http://img.test/{i}-same.jpg", "caption": f"picture {i}",
                          "kind": "exact"})
            later.append({**original, "kind": "repeat"})
    rows += later
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory):
    from unicurate.run.execute import run_curate

    base = tmp_path_factory.mktemp("semantic")
    planted = planted_images(base / "in.parquet")
    data = base_recipe(base / "in.parquet", base / "out", input={"image_col": "image", "rows_per_unit": 20},
                       output={"rows_per_shard": 16, "embeddings": True, "keep_units": True,
                               "keep_rejected_images": True},
                       filters={"clip_score": {}, "aesthetic": {}, "dedup": {"exact": True},
                                "semantic_dedup": {"threshold": THRESHOLD, "cluster_rows": 8}})
    manifest = run_curate(parse_recipe(data), say=lambda _m: None)
    return base / "out", manifest, planted, data


def by_group(out, planted) -> dict[int, list[dict]]:
    """The output rows of each planted group, each with its planted kind (input order)."""
    rows = {(r["input_row"]): r for r in output_rows(out, columns=["key", "url", "status", "reject_reasons",
                                                                  "duplicate_of", "clip_score", "aesthetic_score",
                                                                  "input_row"])}
    groups: dict[int, list] = {}
    for i, p in enumerate(planted):
        groups.setdefault(p["group"], []).append({**rows[i], "kind": p["kind"]})
    return groups


def test_planted_copies_are_rejected_and_one_of_each_group_kept(semantic_run):
    """Each group keeps exactly one row: the best clip_score among the rows no other decision rejects (an exact
    copy loses to the earlier original whatever its score, a repeated url is never a candidate)."""
    out, manifest, planted, _ = semantic_run
    assert manifest["counts"]["inputs"] == len(planted)
    semantic = 0
    for members in by_group(out, planted).values():
        kept = [r for r in members if r["status"] == "kept"]
        assert len(kept) == 1, members  # one of each group; a distinct image is never a copy
        original = members[0]
        for r in members:
            if r["kind"] == "exact":
                assert r["reject_reasons"] == ["duplicate"] and r["duplicate_of"] == original["key"]
            elif r["kind"] == "repeat":
                assert r["reject_reasons"] == ["duplicate_url"]
        candidates = [r for r in members if r["kind"] in ("original", "near")]
        best = max(candidates, key=lambda r: r["clip_score"])
        assert kept[0]["key"] == best["key"]
        for r in candidates:
            if r is not best:
                assert r["reject_reasons"] == ["semantic_duplicate"] and r["duplicate_of"] == best["key"]
                semantic += 1
    assert semantic == 12 and manifest["funnel"]["reasons"] == {"semantic_duplicate": 12, "duplicate": 6,
                                                                  "duplicate_url": 6}
    exact_scores = [r["clip_score"] for ms in by_group(out, planted).values() for r in ms if r["kind"] == "exact"]
    best_scores = [max(r["clip_score"] for r in ms if r["kind"] != "repeat")
                   for ms in by_group(out, planted).values() if any(r["kind"] == "exact" for r in ms)]
    assert any(e == b for e, b in zip(exact_scores, best_scores))  # an exact copy was its group's best score


def test_embeddings_align_with_the_shards(semantic_run):
    from unicurate.manifests.validate import validate

    out, manifest, _, _ = semantic_run
    assert validate(str(out)).ok
    scores = {r["key"]: r["clip_score"] for r in output_rows(out, columns=["key", "clip_score"])}
    for status in ("kept", "rejected"):
        shards, sets = manifest["shards"][status], {e["index"]: e for e in manifest["embeddings"][status]}
        for index, shard in enumerate(shards):
            scored = [r["key"] for r in pq.read_table(out / shard["path"], columns=["key", "clip_score"]).to_pylist()
                      if r["clip_score"] is not None]
            if not scored:  # a shard without a scored row has no file set (an empty .npy has no dimension)
                assert index not in sets
                continue
            keys, vectors = emb.read(str(out), sets[index])
            assert keys == scored
            if status == "kept":
                assert keys == pq.read_table(out / shard["path"], columns=["key"]).column("key").to_pylist()
            img, txt = (vectors[k].astype(np.float32) for k in ("img_emb", "text_emb"))
            assert vectors["img_emb"].dtype == np.float16 and img.shape == txt.shape == (len(keys), img.shape[1])
            assert np.allclose(np.linalg.norm(img, axis=1), 1, atol=2e-3)
            # row i is row i's: the image-caption cosine of the stored vectors is the row's clip_score
            assert np.allclose(np.sum(img * txt, axis=1), [scores[k] for k in keys], atol=3e-3)


def test_a_broken_embedding_file_fails_validate(semantic_run, tmp_path):
    import shutil

    from unicurate.manifests.validate import validate

    out = tmp_path / "copy"
    shutil.copytree(semantic_run[0], out)
    entry = semantic_run[1]["embeddings"]["kept"][0]
    path = out / entry["files"]["img_emb"]["path"]
    np.save(path, np.load(path)[::-1])  # same size, rows swapped
    problems = validate(str(out)).problems
    assert any(entry["files"]["img_emb"]["path"] in p for p in problems)


def test_whatif_decides_semantic_duplicates_as_the_pipeline_did(semantic_run, tmp_path):
    from unicurate.manifests.validate import validate
    from unicurate.manifests.whatif import whatif

    out, manifest, _, _ = semantic_run
    before = {r["key"]: (r["reject_reasons"], r["duplicate_of"])
              for r in output_rows(out, columns=["key", "reject_reasons", "duplicate_of"])}
    summary = whatif(str(out), ["clip_score>=-1"], apply_to=str(tmp_path / "applied"))
    after = {r["key"]: (r["reject_reasons"], r["duplicate_of"])
             for r in output_rows(tmp_path / "applied", columns=["key", "reject_reasons", "duplicate_of"])}
    assert after == before  # the bound keeps every row: the same copies, the same kept members
    assert summary["applied"]["embeddings"] and validate(str(tmp_path / "applied")).ok


def test_whatif_that_rejects_a_kept_row_equals_a_fresh_run(semantic_run, tmp_path):
    """An aesthetic bound that rejects a group's kept row but not its near copy: the copy is kept instead, as a
    fresh run with that bound keeps it."""
    from unicurate.manifests.whatif import whatif
    from unicurate.run.execute import run_curate

    out, _manifest, planted, data = semantic_run
    groups = by_group(out, planted)
    pairs = [(k, r) for ms in groups.values() for k in ms if k["status"] == "kept"
             for r in ms if r["kind"] in ("original", "near") and r is not k
             and r["aesthetic_score"] > k["aesthetic_score"]]
    kept, copy = max(pairs, key=lambda p: p[1]["aesthetic_score"] - p[0]["aesthetic_score"])
    bound = (kept["aesthetic_score"] + copy["aesthetic_score"]) / 2
    whatif(str(out), [f"aesthetic_score>={bound!r}"], apply_to=str(tmp_path / "applied"))
    fresh = dict(data, output={**data["output"], "path": str(tmp_path / "fresh")},
                 filters={**data["filters"], "aesthetic": {"min_score": bound}})
    run_curate(parse_recipe(fresh), say=lambda _m: None)
    cols = ["key", "status", "reject_reasons", "duplicate_of"]
    applied = {r["key"]: r for r in output_rows(tmp_path / "applied", columns=cols)}
    assert applied == {r["key"]: r for r in output_rows(tmp_path / "fresh", columns=cols)}
    assert applied[kept["key"]]["reject_reasons"] == ["low_aesthetic"]
    assert applied[copy["key"]]["status"] == "kept" or applied[copy["key"]]["duplicate_of"] != kept["key"]


def test_a_rerun_resumes_every_unit_with_the_same_decisions_and_files(semantic_run):
    from unicurate.run.execute import run_curate

    out, manifest, _, data = semantic_run
    again = run_curate(parse_recipe(data), say=lambda _m: None)
    assert again["units"]["found_done"] == again["units"]["count"] > 1
    for field in ("shards", "embeddings"):
        assert json.dumps(again[field], sort_keys=True) == json.dumps(manifest[field], sort_keys=True)


def test_export_includes_the_embeddings(semantic_run, scored, tmp_path):
    import webdataset as wds

    from unicurate.manifests.export import ExportError, export

    out, manifest, _, _ = semantic_run
    dest = tmp_path / "wds"
    em = export(str(out), "webdataset", str(dest), kept_only=True, embeddings=True)
    exported = [s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in (dest / "train").glob("*.tar")),
                                                       shardshuffle=False, empty_check=False)]
    meta = sorted((dest / "embeddings" / "train" / "metadata").glob("*.parquet"))
    keys = [k for f in meta for k in pq.read_table(f).column("key").to_pylist()]
    assert keys == exported and len(keys) == manifest["counts"]["kept"]
    img = np.concatenate([np.load(f) for f in sorted((dest / "embeddings" / "train" / "img_emb").glob("*.npy"))])
    assert len(img) == len(keys) and em["embeddings"]
    assert not (dest / "embeddings" / "rejected").exists()
    with pytest.raises(ExportError, match="wrote no embeddings"):
        export(str(scored[0]), "webdataset", str(tmp_path / "x"), embeddings=True)
