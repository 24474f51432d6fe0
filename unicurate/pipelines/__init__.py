"""Beam pipelines (curate; synthesize later) and the plain code they wrap."""
