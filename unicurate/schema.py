"""Arrow schemas of every shard kind, and the closed set of reject reasons.

Every shard unicurate writes is validated against one of these schemas; the
schema version is stored in the Parquet metadata and in ``manifest.json`` so a
reader can refuse data it does not understand.
"""

from __future__ import annotations

from enum import Enum

import pyarrow as pa

CURATED_SCHEMA_VERSION = "curated/2"  # 2: model score columns

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


class Reason(str, Enum):
    """Every reason a row can be rejected for. Closed: nothing else is written.

    The README section "What happens to bad input" documents each code.
    """

    # input
    INVALID_INPUT = "invalid_input"  # row unusable: missing/empty url, malformed line
    DUPLICATE_URL = "duplicate_url"  # same url (and source) seen earlier in the input
    # download
    INVALID_URL = "invalid_url"  # url cannot be parsed or has no host
    UNSUPPORTED_SCHEME = "unsupported_scheme"  # not http(s): file://, ftp://, data: ...
    BLOCKED_ADDRESS = "blocked_address"  # SSRF guard: loopback/private/link-local/...
    HTTP_ERROR = "http_error"  # 4xx / 5xx answer
    TOO_MANY_REDIRECTS = "too_many_redirects"  # a redirect loop, or a chain of more than 10 redirects
    TIMEOUT = "timeout"  # connect/read timeout or overall download deadline
    CONNECTION_ERROR = "connection_error"  # refused, reset, DNS failure, TLS error
    TOO_LARGE = "too_large"  # body larger than download.max_bytes
    ROBOTS_DISALLOWED = "robots_disallowed"  # X-Robots-Tag noai / noimageai opt-out
    EMPTY_RESPONSE = "empty_response"  # 2xx with an empty body
    DOWNLOAD_ERROR = "download_error"  # any other download failure (message in `error`)
    # decode
    NOT_AN_IMAGE = "not_an_image"  # bytes are not an image format we can identify
    DECODE_ERROR = "decode_error"  # identified but undecodable (truncated, corrupt)
    DECOMPRESSION_BOMB = "decompression_bomb"  # more pixels than resize.max_image_pixels
    # rule filters
    TOO_SMALL = "too_small"  # below filters.min_width / min_height
    ASPECT_RATIO = "aspect_ratio"  # above filters.max_aspect_ratio
    CAPTION_TOO_SHORT = "caption_too_short"  # fewer words than filters.caption_min_words
    CAPTION_TOO_LONG = "caption_too_long"  # more words than filters.caption_max_words
    INVALID_CAPTION = "invalid_caption"  # undecodable bytes (stored as U+FFFD) or control characters in the caption
    # model filters (scores are recorded for every row that reached the model stage)
    SCORE_ERROR = "score_error"  # the stored image could not be prepared for the models (message in `error`)
    LOW_CLIP_SCORE = "low_clip_score"  # image-caption CLIP cosine below the threshold / outside the top fraction
    LOW_AESTHETIC = "low_aesthetic"  # LAION aesthetic score below filters.aesthetic.min_score
    NSFW = "nsfw"  # nsfw_score above filters.nsfw.max_score
    WATERMARK = "watermark"  # watermark_score above filters.watermark.max_score
    TOO_MUCH_TEXT = "too_much_text"  # text_coverage above filters.text_coverage.max_coverage
    TOO_LITTLE_TEXT = "too_little_text"  # text_coverage below filters.text_coverage.min_coverage
    # dedup
    DUPLICATE = "duplicate"  # same image bytes (sha256) as an earlier row
    NEAR_DUPLICATE = "near_duplicate"  # perceptual hash within the distance of an earlier row

    @property
    def stage(self) -> Stage:
        return REASON_STAGE[self]


REASON_STAGE: dict[Reason, Stage] = {
    Reason.INVALID_INPUT: Stage.INPUT,
    Reason.DUPLICATE_URL: Stage.INPUT,
    Reason.INVALID_URL: Stage.DOWNLOAD,
    Reason.UNSUPPORTED_SCHEME: Stage.DOWNLOAD,
    Reason.BLOCKED_ADDRESS: Stage.DOWNLOAD,
    Reason.HTTP_ERROR: Stage.DOWNLOAD,
    Reason.TOO_MANY_REDIRECTS: Stage.DOWNLOAD,
    Reason.TIMEOUT: Stage.DOWNLOAD,
    Reason.CONNECTION_ERROR: Stage.DOWNLOAD,
    Reason.TOO_LARGE: Stage.DOWNLOAD,
    Reason.ROBOTS_DISALLOWED: Stage.DOWNLOAD,
    Reason.EMPTY_RESPONSE: Stage.DOWNLOAD,
    Reason.DOWNLOAD_ERROR: Stage.DOWNLOAD,
    Reason.NOT_AN_IMAGE: Stage.DECODE,
    Reason.DECODE_ERROR: Stage.DECODE,
    Reason.DECOMPRESSION_BOMB: Stage.DECODE,
    Reason.TOO_SMALL: Stage.FILTER,
    Reason.ASPECT_RATIO: Stage.FILTER,
    Reason.CAPTION_TOO_SHORT: Stage.FILTER,
    Reason.CAPTION_TOO_LONG: Stage.FILTER,
    Reason.INVALID_CAPTION: Stage.FILTER,
    Reason.SCORE_ERROR: Stage.SCORE,
    Reason.LOW_CLIP_SCORE: Stage.SCORE,
    Reason.LOW_AESTHETIC: Stage.SCORE,
    Reason.NSFW: Stage.SCORE,
    Reason.WATERMARK: Stage.SCORE,
    Reason.TOO_MUCH_TEXT: Stage.SCORE,
    Reason.TOO_LITTLE_TEXT: Stage.SCORE,
    Reason.DUPLICATE: Stage.DEDUP,
    Reason.NEAR_DUPLICATE: Stage.DEDUP,
}
assert set(REASON_STAGE) == set(Reason), "every reason needs a stage"

REASON_CODES = tuple(r.value for r in Reason)


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
    # model scores: null when the filter is not in the recipe or the row never reached the model stage
    pa.field("clip_score", pa.float32()),  # cosine(image, caption) of the recipe's CLIP model
    pa.field("aesthetic_score", pa.float32()),  # LAION improved aesthetic predictor, ~1-10
    pa.field("nsfw_score", pa.float32()),  # [0, 1]
    pa.field("watermark_score", pa.float32()),  # [0, 1], LAION-5B watermark detector
    pa.field("text_coverage", pa.float32()),  # [0, 1], share of the image covered by OCR text boxes
    pa.field("text_boxes", pa.int32()),  # number of OCR text boxes
    pa.field("ocr_text", pa.string()),  # recognised text (filters.text_coverage.recognize)
    pa.field("input_file", pa.string()),
    pa.field("input_row", pa.int64()),
    pa.field("metadata", pa.string()),  # JSON object of the input's extra columns
]

CURATED_SCHEMA = pa.schema(
    CURATED_FIELDS,
    metadata={b"unicurate.schema_version": CURATED_SCHEMA_VERSION.encode()},
)

CURATED_COLUMNS = tuple(f.name for f in CURATED_FIELDS)

# the columns the model filters write (unicurate/filters/scoring.py)
SCORE_COLUMNS = ("clip_score", "aesthetic_score", "nsfw_score", "watermark_score", "text_coverage", "text_boxes",
                 "ocr_text")

# --------------------------------------------------------------------------
# synthesis outputs (SYN_OUT/subject, SYN_OUT/edit, SYN_OUT/rejected, SYN_OUT/images)
# --------------------------------------------------------------------------
SYNTHESIS_SCHEMA_VERSION = "synthesis/1"

EDIT_TYPES = ("remove", "add", "recolor", "move", "resize", "background", "replace")


class SynReason(str, Enum):
    """Why a detected object, a subject sample, an edit triplet or a whole input image yields nothing.

    Closed, like :class:`Reason`; the README section "Synthesis" documents each code.
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
    pa.field("reference_image", pa.binary()),  # the subject cut out on a neutral background (PNG)
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
