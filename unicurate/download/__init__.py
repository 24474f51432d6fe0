"""Getting the images, without Beam: reading url lists (``ingest``), the URL and address policy (``netguard``),
and downloading + decoding + resizing one url (``fetch``, built on img2dataset's resizer).

Pipelines wrap these plain objects in Beam transforms; tests and notebooks call them directly.
"""
