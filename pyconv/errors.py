"""Exception types raised by pyconv.

Argument errors in the functional API use the built-in ``ValueError`` and
``TypeError`` (as NumPy and PyTorch do); model files and graphs raise the
types below, all subclasses of :class:`PyconvError`.
"""


class PyconvError(Exception):
    """Base class of pyconv's own errors."""


class ModelError(PyconvError, ValueError):
    """A model file or graph is malformed, inconsistent or unsupported."""


class UnsupportedOpError(ModelError):
    """A graph uses ops pyconv does not implement (all of them are listed)."""


class FormatVersionError(ModelError):
    """A model file was written by a newer pyconv format version."""


class InputError(PyconvError, ValueError):
    """Data given to a model does not match what the model expects."""


class ImageError(PyconvError, ValueError):
    """An image file cannot be read or decoded."""


class UnsafeFileError(ModelError):
    """A file asks for something pyconv refuses to do (e.g. unpickle objects)."""
