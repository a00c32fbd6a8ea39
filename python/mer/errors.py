"""Exception hierarchy of MER.

Every error that MER raises on purpose is a `MerError`, so a caller can catch them all with one
clause. The Rust binding raises these same classes. Built-in exceptions are kept where they fit,
for example `FileNotFoundError` for a missing model file.
"""


class MerError(Exception):
    """Base class of every error that MER raises on purpose."""


class ModelFormatError(MerError):
    """A model file is malformed: bad magic, truncated data, or missing or invalid metadata."""


class UnsupportedModelError(MerError):
    """A model file is valid, but it uses an architecture, tokenizer or tensor type MER lacks."""


class ExpertReadError(MerError):
    """Reading an expert's weights from the model file failed."""


class BudgetError(MerError):
    """The RAM budget is too small for the resident weights and the requested slots."""


class ContextFullError(MerError):
    """The context window is full: no more tokens fit in the KV cache."""
