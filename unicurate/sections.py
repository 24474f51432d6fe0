"""The base class of every recipe section.

It lives apart from ``config.py`` so that a module declaring its own options beside the code they configure (a
filter's section in its filter module) needs nothing from ``config.py``, which in turn assembles the recipe from
those declarations: the imports run one way.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One mapping of a recipe. Unknown keys are errors (a misspelt option never silently does nothing), and
    assignments are validated too (``--set`` and what-if change recipes after parsing)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
