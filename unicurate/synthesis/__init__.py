"""Synthesis of subject-driven samples and editing triplets (GroundingDINO + SAM). See issue 4."""
