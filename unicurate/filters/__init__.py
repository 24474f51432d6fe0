"""Filters: plain batched objects (no Beam) that score rows and decide reject reasons."""

from unicurate.filters.base import Columns, Filter
from unicurate.filters.rules import AspectRatioFilter, CaptionFilter, SizeFilter, rule_filters

__all__ = ["Columns", "Filter", "AspectRatioFilter", "CaptionFilter", "SizeFilter", "rule_filters"]
