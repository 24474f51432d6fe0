"""What an edit type declares (:class:`EditTypeSpec`) and what it is given (:class:`EditContext`).

This module imports neither the recipe classes nor the models, so ``schema.py``
and ``config.py`` can read the registry without an import cycle and without
loading torch or OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional

import numpy as np

from unicurate.synthesis import templates as tp
from unicurate.synthesis.edits import EditResult, Inpainter

if TYPE_CHECKING:
    from unicurate.config import EditsConfig
    from unicurate.synthesis.grounding import GroundedObject


class NoPartner(Exception):
    """The edit needs another image or subject of the run and there is none (recorded as ``no_partner``)."""


@dataclass
class EditContext:
    """One accepted object of one image, and everything an edit of it may draw on.

    ``seed_text`` seeds every choice (template, colour, direction, scale,
    partner), so a rerun makes the same triplets. ``rows``, ``images`` and
    ``accepted`` hold the partner candidates, keyed by image index: this
    batch's images, and earlier batches' at negative indices.
    """

    index: int  # this image's key in rows / images / accepted
    obj: GroundedObject
    phrase: str  # the cleaned phrase the instructions name
    seed_text: str
    config: EditsConfig
    inpainter: Inpainter
    rows: dict[int, dict]
    images: dict[int, np.ndarray]
    accepted: dict[int, list]  # index -> [(GroundedObject, mask metrics or None)]
    _shared: dict[str, EditResult] = field(default_factory=dict, init=False, repr=False)

    @property
    def image(self) -> np.ndarray:
        return self.images[self.index]

    @property
    def dilation(self) -> dict[str, Any]:
        """Keyword arguments of the operations that inpaint the dilated mask."""
        return {"dilation": self.config.dilation, "min_dilation_px": self.config.min_dilation_px}

    def once(self, name: str, make: Callable[[], EditResult]) -> EditResult:
        """``make()`` computed once per object: work two edit types share (remove and its reverse, add)."""
        if name not in self._shared:
            self._shared[name] = make()
        return self._shared[name]


@dataclass(frozen=True)
class EditTypeSpec:
    """One edit type, declared as ``EDIT_TYPE`` in the module of its name.

    ``make`` draws the type's parameters from the context (seeded) and runs its
    operation; it raises :class:`NoPartner` when the type needs a partner that
    the run lacks. ``local``: the edit may change only its region, so the share
    of pixels changed outside it is checked (``checks.max_change_outside``).
    ``redetect``: after the edit the phrase must be ``"gone"`` from the object's
    box or ``"present"`` in it (``checks.redetect``); None = not re-detected.
    ``order`` places the type in ``edits.types``' default (the rotation order
    of the types tried per object) and in reports.
    """

    name: str
    order: int
    templates: tuple[str, ...]
    make: Callable[[EditContext], EditResult]
    local: bool
    redetect: Optional[Literal["gone", "present"]] = None

    def instruction(self, seed_text: str, **slots) -> tuple[str, str]:
        """(template_id, instruction): one of the type's templates, chosen by ``seed_text``, slots filled."""
        return tp.render(self.name, self.templates, seed_text, **slots)
