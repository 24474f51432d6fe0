"""Manifests and shards: writing, reading, validation (stats, report and export build on these)."""
