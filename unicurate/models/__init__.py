"""Model zoo: weight resolution, caches, loaders and tiny profiles. See issue 3."""
