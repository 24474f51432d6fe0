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
