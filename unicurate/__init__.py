"""unicurate: training data for unified multimodal models, built with Apache Beam."""

import os as _os

# img2dataset imports albumentations, which otherwise phones home for updates.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
