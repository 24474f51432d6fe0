"""Arrow schemas of every shard kind, and the closed set of reject reasons.

Every shard unicurate writes is validated against one of these schemas; the
schema version is stored in the Parquet metadata and in ``manifest.json`` so a
reader can refuse data it does not understand.

The curated schema is the core columns plus each registered filter's columns
(``unicurate/filters/``). Adding a filter adds nullable columns only, so it does
not change the version: a curated/2 shard written before a filter existed lacks
that filter's columns and is still curated/2. :func:`curated_shard_problems` is
the rule every reader and ``validate`` apply (core columns exact, filter
columns optional, nothing unknown, schema order), and readers see an absent
filter column as typed nulls (``unicurate.manifests.curated``). Removing or
retyping a column, or making one required, is what needs a new version.
"""

from __future__ import annotations

from enum import Enum

import pyarrow as pa

from unicurate.filters import registry as filter_registry
from unicurate.synthesis.edit_types import NAMES as _EDIT_TYPE_NAMES

CURATED_SCHEMA_VERSION = "curated/2"  # 2: model score columns; a new filter's columns are additive (see above)

KEPT = "kept"
REJECTED = "rejected"
STATUSES = (KEPT, REJECTED)


class Stage(str, Enum):
    """Where in the funnel a row can be rejected (in funnel order)."""

    INPUT = "input"
    DOWNLOAD = "download"
    DECODE = "decode"
    FILTER = "filter"
    SCORE = "score"
    DEDUP = "dedup"


_CORE_REASONS: tuple[tuple[Stage, str, str], ...] = (
    # (stage, code, what it means); the filters declare theirs in their modules (unicurate/filters/)
    (Stage.INPUT, "invalid_input", "row unusable: missing/empty url, malformed line"),
    (Stage.INPUT, "duplicate_url", "same url (and source) seen earlier in the input"),
    (Stage.DOWNLOAD, "invalid_url", "url cannot be parsed or has no host"),
    (Stage.DOWNLOAD, "unsupported_scheme", "not http(s): file://, ftp://, data: ..."),
    (Stage.DOWNLOAD, "blocked_address", "SSRF guard: loopback/private/link-local/..."),
    (Stage.DOWNLOAD, "http_error", "4xx / 5xx answer"),
    (Stage.DOWNLOAD, "too_many_redirects", "a redirect loop, or a chain of more than 10 redirects"),
    (Stage.DOWNLOAD, "timeout", "connect/read timeout or overall download deadline"),
    (Stage.DOWNLOAD, "connection_error", "refused, reset, DNS failure, TLS error"),
    (Stage.DOWNLOAD, "too_large", "body larger than download.max_bytes"),
    (Stage.DOWNLOAD, "robots_disallowed", "X-Robots-Tag noai / noimageai opt-out"),
    (Stage.DOWNLOAD, "empty_response", "2xx with an empty body"),
    (Stage.DOWNLOAD, "download_error", "any other download failure (message in `error`)"),
    (Stage.DECODE, "not_an_image", "bytes are not an image format we can identify"),
    (Stage.DECODE, "decode_error", "identified but undecodable (truncated, corrupt)"),
    (Stage.DECODE, "decompression_bomb", "more pixels than resize.max_image_pixels"),
    # model filters record their scores for every row that reached the model stage
    (Stage.SCORE, "score_error", "the stored image could not be prepared for the models (message in `error`)"),
    (Stage.DEDUP, "duplicate", "same image bytes (sha256) as an earlier row"),
    (Stage.DEDUP, "near_duplicate", "perceptual hash within the distance of an earlier row"),
    (Stage.DEDUP, "semantic_duplicate", "CLIP image embedding within filters.semantic_dedup.threshold cosine of a "
                                        "kept row with a higher clip_score (SemDeDup; `duplicate_of` names it)"),
)


def _declared_reasons() -> list[tuple[Stage, str, str]]:
    """The core reasons and every filter's, in funnel order: by stage, the core ones first within a stage, then
    the filters' in their registered order."""
    declared = list(_CORE_REASONS) + [(Stage(spec.stage), r.code, r.doc)
                                      for spec in filter_registry.specs() for r in spec.reasons]
    codes = [code for _, code, _ in declared]
    clash = sorted({c for c in codes if codes.count(c) > 1})
    if clash:
        raise ValueError(f"reason code(s) {clash} declared twice (by a filter and the core reasons)")
    stages = list(Stage)
    return sorted(declared, key=lambda d: stages.index(d[0]))


class _ReasonCode(str, Enum):
    """The base of :data:`Reason`: what each code knows about itself."""

    @property
    def stage(self) -> Stage:
        return REASON_STAGE[self]

    @property
    def doc(self) -> str:
        """What the code means, for people (the reason table of the docs is generated from it)."""
        return REASON_DOCS[self]


_DECLARED = _declared_reasons()
Reason = _ReasonCode("Reason", [(code.upper(), code) for _, code, _ in _DECLARED], module=__name__, qualname="Reason")
Reason.__doc__ = """Every reason a row can be rejected for (``Reason.TOO_SMALL`` ...). Closed: nothing else is written.

Built from the core reasons above and the reasons each registered filter declares, so a filter's codes exist
exactly when the filter does."""

REASON_STAGE: dict[Reason, Stage] = {Reason(code): stage for stage, code, _ in _DECLARED}
REASON_DOCS: dict[Reason, str] = {Reason(code): doc for _, code, doc in _DECLARED}
REASON_CODES = tuple(r.value for r in Reason)
FILTER_REASONS: dict[str, tuple[str, ...]] = {  # filter name -> the reason codes it gives
    spec.name: tuple(r.code for r in spec.reasons) for spec in filter_registry.specs()}


def reason(code: str) -> Reason:
    """Look up a reason code; raises ValueError for codes outside the closed set."""
    return Reason(code)


# --------------------------------------------------------------------------
# curated sample shards (OUT/kept/*.parquet and OUT/rejected/*.parquet)
# --------------------------------------------------------------------------
CURATED_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("url", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("source", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("reject_reasons", pa.list_(pa.string()), nullable=False),
    pa.field("error", pa.string()),
    pa.field("duplicate_of", pa.string()),
    pa.field("image", pa.binary()),
    pa.field("image_format", pa.string()),
    pa.field("original_format", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("original_width", pa.int32()),
    pa.field("original_height", pa.int32()),
    pa.field("download_bytes", pa.int64()),
    pa.field("sha256", pa.string()),
    pa.field("phash", pa.string()),
    pa.field("caption_words", pa.int32()),
    # each filter's columns, in funnel order (unicurate/filters/): null when the filter is not in the recipe or
    # the row never reached it
    *(pa.field(c.name, c.type) for spec in filter_registry.specs() for c in spec.columns),
    pa.field("input_file", pa.string()),
    pa.field("input_row", pa.int64()),
    pa.field("metadata", pa.string()),  # JSON object of the input's extra columns
]

CURATED_SCHEMA = pa.schema(
    CURATED_FIELDS,
    metadata={b"unicurate.schema_version": CURATED_SCHEMA_VERSION.encode()},
)

CURATED_COLUMNS = tuple(f.name for f in CURATED_FIELDS)
# filter columns: declared by a registered filter, so absent from shards written before that filter was added;
# core columns: every other one, which every curated/2 shard has
CURATED_FILTER_COLUMNS = frozenset(c.name for spec in filter_registry.specs() for c in spec.columns)
CURATED_CORE_COLUMNS = tuple(c for c in CURATED_COLUMNS if c not in CURATED_FILTER_COLUMNS)


def _describe(f: pa.Field) -> str:
    return f"{f.type}" + ("" if f.nullable else " not null")


def shard_schema_problems(got: pa.Schema, expected: pa.Schema, optional: frozenset[str] = frozenset()) -> list[str]:
    """What keeps a shard's schema ``got`` from being ``expected`` ([] = it is), metadata aside.

    Every column of ``expected`` must be there, with its exact type and nullability, except those named in
    ``optional``, which may be absent; every column there must be one of ``expected``'s, in ``expected``'s order.
    Each message names the column, so a damaged or foreign shard says what is wrong with it.
    """
    want = {f.name: f for f in expected}
    problems: list[str] = []
    seen: set[str] = set()
    for f in got:
        w = want.get(f.name)
        if f.name in seen:
            problems.append(f"column {f.name!r} appears twice")
        elif w is None:
            problems.append(f"unknown column {f.name!r} ({_describe(f)})")
        elif not f.equals(w):
            problems.append(f"column {f.name!r} is {_describe(f)}, not {_describe(w)}")
        seen.add(f.name)
    problems += [f"missing {'core ' if optional else ''}column {n!r} ({_describe(want[n])})"
                 for n in expected.names if n not in seen and n not in optional]
    if not problems:
        in_order = [n for n in expected.names if n in seen]
        wrong = next((i for i, (a, b) in enumerate(zip(got.names, in_order)) if a != b), None)
        if wrong is not None:
            problems.append(f"columns out of order: column {wrong} is {got.names[wrong]!r}, the schema's order puts "
                            f"{in_order[wrong]!r} there")
    return problems


def curated_shard_problems(got: pa.Schema) -> list[str]:
    """The curated/2 rule ([] = a valid curated shard schema): every core column with its exact type, each filter
    column either absent (the shard predates that filter; readers see typed nulls) or with its registered type,
    no other column, in :data:`CURATED_SCHEMA` order."""
    return shard_schema_problems(got, CURATED_SCHEMA, CURATED_FILTER_COLUMNS)


# the columns the model filters write (unicurate/filters/scoring.py)
SCORE_COLUMNS = tuple(c.name for spec in filter_registry.specs("score") for c in spec.columns)

# --------------------------------------------------------------------------
# synthesis outputs (SYN_OUT/subject, SYN_OUT/edit, SYN_OUT/rejected, SYN_OUT/images)
# --------------------------------------------------------------------------
SYNTHESIS_SCHEMA_VERSION = "synthesis/1"

EDIT_TYPES = _EDIT_TYPE_NAMES  # one module per type in unicurate/synthesis/edit_types/


class SynReason(str, Enum):
    """Why a detected object, a subject sample, an edit triplet or a whole input image yields nothing.

    Closed, like :class:`Reason`; docs/reasons.md lists each code.
    """

    # image level (the `images` table)
    IMAGE_ERROR = "image_error"  # the curated image could not be decoded (message in `error`)
    NO_OBJECT = "no_object"  # the detector found nothing above box_threshold for the caption
    ALL_REJECTED = "all_rejected"  # objects were found, but every candidate failed its checks
    # object level: mask quality (synthesis/quality.py)
    LOW_PRED_IOU = "low_pred_iou"  # SAM's predicted IoU below quality.min_pred_iou
    LOW_STABILITY = "low_stability"  # SAM stability score below quality.min_stability
    MASK_TOO_SMALL = "mask_too_small"  # mask area below quality.min_mask_area (share of the image)
    MASK_TOO_LARGE = "mask_too_large"  # mask area above quality.max_mask_area
    BOX_TOO_SMALL = "box_too_small"  # box area below quality.min_box_area
    BOX_TOO_LARGE = "box_too_large"  # box area above quality.max_box_area
    FRAGMENTED = "fragmented"  # largest connected component below quality.min_largest_component share
    TOO_MANY_CONTOURS = "too_many_contours"  # more outer contours than quality.max_contours
    BAD_PHRASE = "bad_phrase"  # the detected phrase has no word left once cleaned (templates.normalise_phrase)
    # edit level (synthesis/checks.py)
    STILL_DETECTED = "still_detected"  # remove: the phrase is still detected in the edited region
    NOT_DETECTED = "not_detected"  # add: the phrase is not detected in the region it was added to
    CLIP_TOO_DIFFERENT = "clip_too_different"  # source/target CLIP similarity below checks.min_clip_similarity
    CLIP_TOO_SIMILAR = "clip_too_similar"  # source/target CLIP similarity above checks.max_clip_similarity
    CHANGE_OUTSIDE_MASK = "change_outside_mask"  # local edit changed pixels outside the dilated mask
    NO_PARTNER = "no_partner"  # background/replace: no other image/subject of the run to take from
    EDIT_ERROR = "edit_error"  # the edit raised (message in `error`)


SYN_REASON_CODES = tuple(r.value for r in SynReason)
IMAGE_STATUSES = ("produced", "no_object", "all_rejected", "image_error")

_BOX = pa.list_(pa.float32(), 4)  # xyxy, normalised to [0, 1] by the image's width/height

SUBJECT_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("source_key", pa.string(), nullable=False),  # the curated row's key
    pa.field("object_index", pa.int32(), nullable=False),
    pa.field("phrase", pa.string()),
    pa.field("box", _BOX),
    pa.field("mask", pa.binary()),  # PNG, 1 bit, target image size
    pa.field("reference_image", pa.binary()),  # the subject cut out on a neutral background (image_format)
    pa.field("target_image", pa.binary()),  # the full curated image
    pa.field("image_format", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("instruction", pa.string()),
    pa.field("template_id", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("augmentations", pa.string()),  # JSON list of what was applied to the reference
    pa.field("detection_score", pa.float32()),
    pa.field("pred_iou", pa.float32()),
    pa.field("stability_score", pa.float32()),
    pa.field("mask_area", pa.float32()),  # share of the image
    pa.field("largest_component", pa.float32()),
]

EDIT_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("source_key", pa.string(), nullable=False),
    pa.field("object_index", pa.int32(), nullable=False),
    pa.field("edit_type", pa.string(), nullable=False),
    pa.field("instruction", pa.string()),
    pa.field("template_id", pa.string()),
    pa.field("source_image", pa.binary()),
    pa.field("target_image", pa.binary()),
    pa.field("mask", pa.binary()),  # PNG: the region the edit may change (dilated)
    pa.field("image_format", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("phrase", pa.string()),
    pa.field("box", _BOX),
    pa.field("caption", pa.string()),
    pa.field("params", pa.string()),  # JSON: colour, offset, scale, partner key, inpainter ...
    pa.field("partner_key", pa.string()),  # background/replace: the other image's key
    pa.field("detection_score", pa.float32()),
    pa.field("pred_iou", pa.float32()),
    pa.field("stability_score", pa.float32()),
    pa.field("clip_similarity", pa.float32()),  # CLIP image-image cosine(source, target)
    pa.field("change_outside", pa.float32()),  # share of pixels outside the dilated mask that changed
    pa.field("redetect_score", pa.float32()),  # best detection of the phrase in the region after the edit
]

SYN_REJECTED_FIELDS: list[pa.Field] = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("source_key", pa.string(), nullable=False),
    pa.field("object_index", pa.int32()),
    pa.field("kind", pa.string(), nullable=False),  # object | edit
    pa.field("edit_type", pa.string()),
    pa.field("reject_reasons", pa.list_(pa.string()), nullable=False),
    pa.field("error", pa.string()),
    pa.field("phrase", pa.string()),
    pa.field("box", _BOX),
    pa.field("mask", pa.binary()),
    pa.field("source_image", pa.binary()),  # only with output.keep_rejected_images
    pa.field("target_image", pa.binary()),  # only with output.keep_rejected_images
    pa.field("instruction", pa.string()),
    pa.field("params", pa.string()),
    pa.field("detection_score", pa.float32()),
    pa.field("pred_iou", pa.float32()),
    pa.field("stability_score", pa.float32()),
    pa.field("mask_area", pa.float32()),
    pa.field("box_area", pa.float32()),
    pa.field("largest_component", pa.float32()),
    pa.field("contours", pa.int32()),
    pa.field("clip_similarity", pa.float32()),
    pa.field("change_outside", pa.float32()),
    pa.field("redetect_score", pa.float32()),
]

IMAGE_FIELDS: list[pa.Field] = [
    pa.field("source_key", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),  # produced | no_object | all_rejected | image_error
    pa.field("reject_reasons", pa.list_(pa.string()), nullable=False),  # empty when produced
    pa.field("error", pa.string()),
    pa.field("caption", pa.string()),
    pa.field("prompt", pa.string()),  # what the detector was given
    pa.field("detections", pa.int32(), nullable=False),
    pa.field("objects_accepted", pa.int32(), nullable=False),
    pa.field("subjects", pa.int32(), nullable=False),
    pa.field("edits", pa.int32(), nullable=False),
    pa.field("rejected", pa.int32(), nullable=False),
]


def _syn_schema(fields: list[pa.Field], kind: str) -> pa.Schema:
    return pa.schema(fields, metadata={b"unicurate.schema_version": SYNTHESIS_SCHEMA_VERSION.encode(),
                                       b"unicurate.kind": kind.encode()})


SUBJECT_SCHEMA = _syn_schema(SUBJECT_FIELDS, "subject")
EDIT_SCHEMA = _syn_schema(EDIT_FIELDS, "edit")
SYN_REJECTED_SCHEMA = _syn_schema(SYN_REJECTED_FIELDS, "rejected")
IMAGE_SCHEMA = _syn_schema(IMAGE_FIELDS, "images")
SYNTHESIS_SCHEMAS: dict[str, pa.Schema] = {"subject": SUBJECT_SCHEMA, "edit": EDIT_SCHEMA,
                                           "rejected": SYN_REJECTED_SCHEMA, "images": IMAGE_SCHEMA}
SYNTHESIS_DIRS = tuple(SYNTHESIS_SCHEMAS)

SCHEMAS: dict[str, pa.Schema] = {CURATED_SCHEMA_VERSION: CURATED_SCHEMA}


def schema_for(version: str) -> pa.Schema:
    try:
        return SCHEMAS[version]
    except KeyError:
        raise ValueError(
            f"unknown schema version {version!r}; this unicurate understands {sorted(SCHEMAS)}"
        ) from None


def shard_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.parquet"


def shard_index(name: str) -> int:
    """The index of a shard from its file name (:func:`shard_name`'s inverse)."""
    return int(name.removeprefix("part-").split("-of-")[0])
