"""The exceptions of ``import swa``: every one a :class:`swa.Error`, naming what failed."""

from __future__ import annotations

from typing import Any, Optional


class Error(Exception):
    """Something swa could not do. ``message`` says what and how to fix it (naming keyword
    arguments where the command line names flags); the attributes name what failed where known.

    Attributes:
        message: the whole message.
        path: the file (or ``<batches>`` for batches from Python) that failed, if one did.
        tensor: the tensor, for a :class:`TensorError`.
        node: the ONNX node, for a :class:`NodeError` (``op`` is its operator).
        keyword: the keyword argument whose value is wrong, for a :class:`UsageError` about one.
        batch: the index of the batch that failed (from 0), for a :class:`BatchError`.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Optional[str] = None,
        tensor: Optional[str] = None,
        node: Optional[str] = None,
        op: Optional[str] = None,
        keyword: Optional[str] = None,
        batch: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.tensor = tensor
        self.node = node
        self.op = op
        self.keyword = keyword
        self.batch: Optional[int] = int(batch) if batch is not None and str(batch).isdigit() else None

    def __reduce__(self) -> tuple[Any, ...]:
        # pickled with its fields (multiprocessing, Ray): rebuilt by _rebuild
        return (_rebuild, (type(self), self.args, self.__dict__.copy()))


class UsageError(Error, ValueError):
    """Arguments that do not go together, or a value swa cannot use."""


class InputError(Error):
    """A file is missing, unreadable, or not what it should be (a checkpoint, a model, samples)."""


class TensorError(InputError):
    """A tensor of a checkpoint or model cannot be used (shape, dtype, non-finite values)."""


class NodeError(Error):
    """A node of the ONNX model cannot be used, or failed on the data (NaN reaching a BatchNorm)."""


class BatchError(Error, ValueError):
    """A batch from Python is not what the model takes (shape, dtype, NaN, missing labels), or
    the iterable raised: ``batch`` is its index, and ``__cause__`` the Python exception, if any."""


class OnnxRuntimeError(Error):
    """ONNX Runtime could not be found or loaded, or failed to run the model."""


class GateFailed(Error):
    """A threshold given to the call (``min_accuracy=``) was not met; ``result`` holds the result."""

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


def _rebuild(cls: type, args: tuple[Any, ...], fields: dict[str, Any]) -> Error:
    e = cls.__new__(cls)
    Exception.__init__(e, *args)
    e.__dict__.update(fields)
    return e


class SwaWarning(UserWarning):
    """What swa noticed and went past (the command line's ``swa: warning:`` lines)."""


# Tracebacks name them as users import them: swa.BatchError.
for _class in (Error, UsageError, InputError, TensorError, NodeError, BatchError, OnnxRuntimeError, GateFailed, SwaWarning):
    _class.__module__ = "swa"

