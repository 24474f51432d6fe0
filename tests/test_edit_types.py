"""The edit type registry: every type is complete, and schema, config, checks and synthesizer all derive from it."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest

import unicurate.synthesis.edit_types as edit_types
from unicurate.config import ChecksConfig, EditsConfig, RecipeError, parse_recipe
from unicurate.schema import EDIT_TYPES, SynReason
from unicurate.synthesis import checks as ck
from unicurate.synthesis import edits as ed
from unicurate.synthesis.edit_types import NAMES, REGISTRY, EditContext, NoPartner
from unicurate.synthesis.grounding import GroundedObject

from conftest import syn_base_recipe
from test_synthesis_ops import scene


def _slots(template: str) -> set[str]:
    """The slots a template is filled from (``{a_phrase}`` is ``phrase`` with its article)."""
    return {name.removeprefix("a_") for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_module_declares_one_complete_edit_type():
    modules = sorted(p.stem for p in Path(edit_types.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(NAMES) == modules  # one module per type, named as the type
    assert len({s.order for s in REGISTRY.values()}) == len(REGISTRY)
    for name, spec in REGISTRY.items():
        assert spec.name == name and callable(spec.make)
        assert len(spec.templates) >= 2 and len(set(spec.templates)) == len(spec.templates), name
        slots = [_slots(t) for t in spec.templates]
        assert all("phrase" in s for s in slots) and all(s == slots[0] for s in slots), name  # same slots each
        assert spec.redetect in (None, "gone", "present")
        tid, text = spec.instruction("seed", **{s: "cup" for s in slots[0]})
        assert tid.startswith(f"{name}/") and "cup" in text


def test_schema_and_config_derive_from_the_registry():
    assert EDIT_TYPES == NAMES == ("remove", "add", "recolor", "move", "resize", "background", "replace")
    assert EditsConfig().types == list(NAMES)
    with pytest.raises(RecipeError) as info:
        parse_recipe(syn_base_recipe("in", "out", edits={"types": ["remove", "blur"]}))
    assert "edits.types" in str(info.value) and all(n in str(info.value) for n in NAMES)


def _context(image_count: int = 2) -> EditContext:
    """An object of image 0 and, when there are more images, partners with an accepted object each."""
    rows, images, accepted = {}, {}, {}
    for j in range(image_count):
        img, mask, box = scene(box=(40 + 10 * j, 60, 110 + 10 * j, 130), seed=j)
        rows[j], images[j] = {"key": f"img{j}"}, img
        accepted[j] = [(GroundedObject(0, box, 0.9, "red square", mask, 0.95, 0.97), None)]
    obj = accepted[0][0][0]
    return EditContext(index=0, obj=obj, phrase="red square", seed_text="0:img0:0", config=EditsConfig(),
                       inpainter=ed.TeleaInpainter(5), rows=rows, images=images, accepted=accepted)


@pytest.mark.parametrize("name", NAMES)
def test_every_edit_type_makes_its_triplet_and_its_checks_apply(name):
    spec = REGISTRY[name]
    res = spec.make(_context())
    assert res.edit_type == name and res.template_id.startswith(f"{name}/")
    assert res.source.shape == res.target.shape and res.region.shape == res.source.shape[:2]
    assert np.any(res.source != res.target)
    assert spec.make(_context()).params == res.params  # the same seed draws the same parameters
    if spec.local:
        assert ck.change_outside(res.source, res.target, res.region) == 0.0
    cfg = ChecksConfig(min_clip_similarity=None, max_clip_similarity=None, max_change_outside=0.01)
    outside = ck.reasons_for(res, cfg, 0.35, redetect=None, clip_sim=None, outside=0.5)
    assert (outside == [SynReason.CHANGE_OUTSIDE_MASK.value]) == spec.local
    gone = {"gone": [SynReason.STILL_DETECTED.value], "present": [], None: []}[spec.redetect]
    assert ck.reasons_for(res, cfg, 0.35, redetect=0.9, clip_sim=None, outside=0.0) == gone
    absent = {"gone": [], "present": [SynReason.NOT_DETECTED.value], None: []}[spec.redetect]
    assert ck.reasons_for(res, cfg, 0.35, redetect=0.0, clip_sim=None, outside=0.0) == absent


def test_types_that_need_a_partner_say_so_when_alone():
    for name in ("background", "replace"):
        with pytest.raises(NoPartner):
            REGISTRY[name].make(_context(image_count=1))


def test_remove_and_add_share_one_inpainting_per_object():
    ctx = _context()
    removed, added = REGISTRY["remove"].make(ctx), REGISTRY["add"].make(ctx)
    assert REGISTRY["remove"].make(ctx) is removed
    assert added.source is removed.target and added.target is removed.source
