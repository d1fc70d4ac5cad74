"""swa from Python: average checkpoints, refit BatchNorm statistics from your own DataLoader,
evaluate, and make soups, with the engine of the ``swa`` command.

Every function mirrors a command and takes its options as keyword arguments named as the flags
are (``--save-weights`` → ``save_weights=``, ``--from`` → ``from_=``); it returns what the command
prints with ``--json`` as a :class:`Result`, and raises a :class:`swa.Error` subclass naming what
failed. Where the command takes ``--inputs`` (``--train-inputs``, ``--eval-inputs``, ...), the
function also takes ``batches=`` (``train_batches=``, ``eval_batches=``, ...): any iterable of
batches, such as a ``torch.utils.data.DataLoader``. Weights may be given as a dict of name →
tensor (``model.state_dict()``). Results are files; load weights back with
``model.load_state_dict(safetensors.torch.load_file(path))``.

    >>> import swa
    >>> swa.average(["runs/exp1/checkpoints"], "swa.safetensors", from_=30)
    >>> swa.recalibrate("model.onnx", "swa.safetensors", batches=train_loader,
    ...                 stats="torch", output="model_swa.onnx", save_weights="swa_bn.safetensors")
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any, Iterator

from . import _native
from ._errors import (
    BatchError,
    Error,
    GateFailed,
    InputError,
    NodeError,
    OnnxRuntimeError,
    SwaWarning,
    TensorError,
    UsageError,
)

__all__ = [
    "average", "recalibrate", "evaluate", "run", "soup", "inspect", "merge_stats", "merge_eval", "doctor",
    "Result", "Error", "UsageError", "InputError", "TensorError", "NodeError", "BatchError",
    "OnnxRuntimeError", "GateFailed", "SwaWarning", "__version__",
]

__version__ = _native.VERSION.split()[-1]


def _environment() -> None:
    """Tells ONNX Runtime's search this environment (the interpreter's path does not say it)."""
    _native.set_environment(sys.prefix)


_environment()


class Result(Mapping):
    """What a command printed with ``--json``: fields as attributes (``r.layers[0].mean_shift``)
    and as keys; :meth:`to_dict` gives plain dicts and lists."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_data", dict(data))

    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self._data[name])
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r} (fields: {', '.join(self._data)})") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __getitem__(self, key: str) -> Any:
        return _wrap(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Result):
            return self._data == other._data
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._data))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in list(self._data.items())[:8])
        more = ", ..." if len(self._data) > 8 else ""
        return f"{type(self).__name__}({fields}{more})"

    def to_dict(self) -> dict[str, Any]:
        """The result as plain dicts, lists and numbers (a copy)."""
        return json.loads(json.dumps(self._data))


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return Result(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class AverageResult(Result):
    """What :func:`average` did."""


class RecalibrateResult(Result):
    """What :func:`recalibrate` (and :func:`merge_stats`) did."""


class EvaluateResult(Result):
    """The metrics of :func:`evaluate` (and :func:`merge_eval`)."""


class RunResult(Result):
    """The report of :func:`run` (``report.json``)."""


class SoupResult(Result):
    """What :func:`soup` chose and wrote."""


class InspectResult(Result):
    """What :func:`inspect` found."""


class DoctorResult(Result):
    """Which ONNX Runtime swa finds, and how."""


_KEYWORDS = {command: {k[0]: k for k in keywords} for command, keywords in _native.describe()}


def _call(command: str, result: type, kwargs: dict[str, Any]) -> Any:
    quiet = bool(kwargs.pop("quiet", False))
    keywords = _KEYWORDS[command]
    for key in list(kwargs):
        files = key[: -len("batches")] + "inputs"
        if key.endswith("batches") and kwargs[key] is not None and kwargs.get(files) is not None:
            raise UsageError(f"give {key}= or {files}=, not both: they are the same samples", keyword=key)
    # A DataLoader says its batch size: the summary reports it, and a pass takes its batches as
    # they come whatever the batch size.
    for source, size in (("batches", "batch_size"), ("train_batches", "batch_size"), ("eval_batches", "eval_batch_size")):
        loader = kwargs.get(source)
        if loader is not None and size in keywords and kwargs.get(size) is None:
            n = getattr(loader, "batch_size", None)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                kwargs[size] = n
    with tempfile.TemporaryDirectory(prefix="swa-state-dicts-") as tmp:
        names: dict[str, str] = {}

        def saved(value: Any, label: str, k: int) -> Any:
            if not isinstance(value, Mapping):
                return value
            path = os.path.join(tmp, f"state_dict_{k}.safetensors")
            _native.save_tensors(dict(value), path, label)
            names[path] = f"{label} (a state dict)"
            return path

        for key in ("weights", "checkpoints"):
            value = kwargs.get(key)
            if isinstance(value, Mapping):
                kwargs[key] = saved(value, key, 0)
            elif isinstance(value, (list, tuple)):
                kwargs[key] = [saved(v, f"{key}[{k}]", k) for k, v in enumerate(value)]
        in_place = [k for k, v in kwargs.items() if k.endswith("batches") and _fresh_batches(v)]
        try:
            text, code, said = _native.call(command, kwargs, quiet, in_place)
        except Error as e:
            raise _renamed(e, names) from e.__cause__
    for w in said:
        warnings.warn(_rename(w, names), SwaWarning, stacklevel=3)
    out = result(json.loads(text))
    if code == 1:
        raise GateFailed(f"swa.{command.replace('-', '_')}(): the threshold was not met (min_accuracy)", out)
    return out


def _fresh_batches(loader: Any) -> bool:
    """Whether every batch of `loader` is new memory, which swa may then read in place (zero-copy):
    a torch DataLoader collating with default_collate (a new tensor per batch). Other iterables'
    arrays are copied: swa reads the next batches while ONNX Runtime runs one, and a generator
    that refills one array would change a batch being read."""
    data = sys.modules.get("torch.utils.data")
    if data is None or not isinstance(loader, data.DataLoader):
        return False
    return loader.batch_size is not None and loader.collate_fn is data.default_collate


def _rename(text: str, names: dict[str, str]) -> str:
    for path, label in names.items():
        text = text.replace(path, label)
    return text


def _renamed(e: Error, names: dict[str, str]) -> Error:
    if not names:
        return e
    e.message = _rename(e.message, names)
    e.args = (e.message,)
    if e.path in names:
        e.path = names[e.path]
    return e


def average(checkpoints: Any, output: Any, **opts: Any) -> AverageResult:
    """Averages checkpoints into one SWA model (``swa average``). ``checkpoints``: files,
    directories, or state dicts (name → tensor). See the stub for every option."""
    return _call("average", AverageResult, {"checkpoints": checkpoints, "output": output, **opts})


def recalibrate(model: Any, weights: Any = None, *, batches: Any = None, output: Any = None, **opts: Any) -> RecalibrateResult:
    """Refits the BatchNorm statistics of ``model`` with ``weights`` bound, over ``batches`` (any
    iterable of batches) or ``inputs=`` (files), and writes ``output`` (ONNX) and, with
    ``save_weights=``, the tensors under the checkpoint's names (``swa recalibrate``)."""
    return _call("recalibrate", RecalibrateResult, {"model": model, "weights": weights, "batches": batches, "output": output, **opts})


def evaluate(model: Any, weights: Any = None, *, batches: Any = None, **opts: Any) -> EvaluateResult:
    """Accuracy, top-k and loss of ``model`` (with ``weights`` bound) on ``batches`` of
    ``(inputs, labels)`` or on ``inputs=`` files (``swa evaluate``)."""
    return _call("evaluate", EvaluateResult, {"model": model, "weights": weights, "batches": batches, **opts})


def run(**opts: Any) -> RunResult:
    """Averages, recalibrates and evaluates every checkpoint and the SWA model, and writes the
    report (``swa run``): ``model=``, ``checkpoints=``, ``train_batches=`` / ``train_inputs=``,
    ``eval_batches=`` / ``eval_inputs=``, ``out=``..."""
    return _call("run", RunResult, opts)


def soup(**opts: Any) -> SoupResult:
    """Chooses checkpoints to average by held-out accuracy (``swa soup``)."""
    return _call("soup", SoupResult, opts)


def inspect(path: Any, **opts: Any) -> InspectResult:
    """Lists a checkpoint's or model's tensors and BatchNorm layers (``swa inspect``)."""
    return _call("inspect", InspectResult, {"file": path, **opts})


def merge_stats(partials: Any, **opts: Any) -> RecalibrateResult:
    """Merges the partial statistics of sharded recalibrations into the model (``swa merge-stats``)."""
    return _call("merge-stats", RecalibrateResult, {"partials": partials, **opts})


def merge_eval(partials: Any, **opts: Any) -> EvaluateResult:
    """Merges the partial results of sharded evaluations (``swa merge-eval``)."""
    return _call("merge-eval", EvaluateResult, {"partials": partials, **opts})


def doctor() -> DoctorResult:
    """Which ONNX Runtime swa finds (and how), its version and providers (``swa doctor``)."""
    return _call("doctor", DoctorResult, {})
