"""How models run in one process: device, precision, compile, CPU threads. Passed explicitly to every loader
(in the spirit of Beam's ``ModelHandler``), never held in module globals."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from unicurate.models.resolver import ModelUnavailable


def select_device(device: str = "auto", precision: str = "auto") -> tuple[str, str]:
    """('cuda'|'cpu', 'fp32'|'fp16'|'bf16') for the recipe's models.device / models.precision."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("models.device is 'cuda' but torch sees no CUDA device on this worker")
    dev = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if precision == "auto":
        precision = "fp16" if dev == "cuda" else "fp32"
    return dev, precision


@dataclass(frozen=True)
class Runtime:
    device: str = "cpu"  # resolved: "cuda" or "cpu"
    precision: str = "fp32"  # resolved: "fp32", "fp16" or "bf16"
    compile: bool = False  # CUDA only: torch.compile the vision towers (models.compile)
    cpu_threads: Optional[int] = None  # cap on this process's model threads; None = the libraries' defaults
    loads: Counter = field(default_factory=Counter, compare=False, repr=False)  # model name -> loads made with it

    def __post_init__(self):
        if self.cpu_threads is not None:
            object.__setattr__(self, "cpu_threads", max(1, int(self.cpu_threads)))

    @classmethod
    def for_models(cls, models_cfg, cpu_threads: Optional[int] = None) -> "Runtime":
        """The runtime a recipe's ``models`` section asks for on this machine (device 'auto' resolved here)."""
        device, precision = select_device(models_cfg.device, models_cfg.precision)
        return cls(device, precision, bool(models_cfg.compile), cpu_threads)

    @property
    def dtype(self):
        """The torch dtype of :attr:`precision`."""
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]

    def limit_threads(self) -> None:
        """Apply :attr:`cpu_threads` to torch's intra-op pool (``load_models`` does, before it builds a model).

        Several worker processes on one machine each default to one thread per core, so N processes run
        N x cores threads that fight over the cores (and onnxruntime's spinning pools burn CPU while waiting);
        the pipelines give each process cores / processes. torch's setting is process-wide, so it is applied
        here, once per load; onnxruntime sessions and RapidOCR read ``cpu_threads`` when they are created.
        None leaves the libraries' defaults.
        """
        if self.cpu_threads is not None:
            import torch

            torch.set_num_threads(self.cpu_threads)

    def loaded(self, name: str) -> None:
        """Count one load of model ``name`` (tests prove models load once per worker with :attr:`loads`)."""
        self.loads[name] += 1
