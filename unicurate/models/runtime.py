"""How models run in one process: device, precision, compile, CPU threads. Passed explicitly to every loader
(in the spirit of Beam's ``ModelHandler``), never held in module globals."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Runtime:
    device: str = "cpu"  # resolved: "cuda" or "cpu"
    precision: str = "fp32"  # resolved: "fp32", "fp16" or "bf16"
    compile: bool = False  # CUDA only: torch.compile the vision towers (models.compile)
    cpu_threads: Optional[int] = None  # cap on this process's model threads; None = the libraries' defaults
    loads: Counter = field(default_factory=Counter, compare=False, repr=False)  # model name -> loads made with it

    @classmethod
    def for_models(cls, models_cfg, cpu_threads: Optional[int] = None) -> "Runtime":
        """The runtime a recipe's ``models`` section asks for on this machine (device 'auto' resolved here)."""
        from unicurate.models.loaders import select_device

        device, precision = select_device(models_cfg.device, models_cfg.precision)
        return cls(device, precision, bool(models_cfg.compile), cpu_threads)
