"""Filters: plain batched objects (no Beam) that score rows and decide reject reasons.

One module per filter; each declares its filters in the registry (:mod:`unicurate.filters.registry`), from which
the recipe, the schema, the reasons, what-if and stats derive.
"""

from unicurate.filters.base import Columns, Filter
from unicurate.filters.rules import AspectRatioFilter, CaptionFilter, SizeFilter, rule_filters

__all__ = ["Columns", "Filter", "AspectRatioFilter", "CaptionFilter", "SizeFilter", "rule_filters"]
