"""MER runs Mixture-of-Experts GGUF language models on a CPU, streaming expert weights from SSD.

    >>> import mer
    >>> m = mer.Model()                      # the default model, downloaded on first use
    >>> "".join(m.generate("The capital of France is", max_tokens=8, temperature=0))
"""

from ._core import __version__
from .errors import (
    BudgetError,
    ContextFullError,
    ExpertReadError,
    MerError,
    ModelFormatError,
    UnsupportedModelError,
)
from .model import Generation, Model
from .sampling import Sampler, SamplerSettings

__all__ = [
    "BudgetError",
    "ContextFullError",
    "ExpertReadError",
    "Generation",
    "MerError",
    "Model",
    "ModelFormatError",
    "Sampler",
    "SamplerSettings",
    "UnsupportedModelError",
    "__version__",
]
