"""swa from Python: average checkpoints, refit BatchNorm statistics from your own DataLoader,
evaluate, and make soups, with the engine of the ``swa`` command.

Every function mirrors a command and takes its options as keyword arguments named as the flags
are (``--save-weights`` → ``save_weights=``, ``--from`` → ``from_=``); it returns what the command
prints with ``--json`` as a :class:`Result`, and raises a :class:`swa.Error` subclass naming what
failed. Where the command takes ``--inputs`` (``--train-inputs``, ``--eval-inputs``, ...), the
function also takes ``batches=`` (``train_batches=``, ``eval_batches=``, ...): any iterable of
batches, such as a ``torch.utils.data.DataLoader``. Weights may be given as a dict of name →
tensor (``model.state_dict()``). Results are files; load weights back with
``state = model.state_dict(); state.update(safetensors.torch.load_file(path));
model.load_state_dict(state)`` (docs/guide.md, section 5, says why through ``state_dict()``).

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
    "average", "recalibrate", "evaluate", "run", "soup", "ensemble", "swag", "inspect", "merge_stats", "merge_eval",
    "doctor",
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
        if name.startswith("__") or name == "_data":
            raise AttributeError(name)
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

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle, copy and deepcopy (multiprocessing, joblib, Ray) rebuild it from its data
        return (type(self), (self._data,))


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


class EnsembleResult(Result):
    """The members alone and their ensemble (:func:`ensemble`)."""


class SwagResult(Result):
    """SWAG's moments, its samples alone and their model average (:func:`swag`)."""


class InspectResult(Result):
    """What :func:`inspect` found."""


class DoctorResult(Result):
    """Which ONNX Runtime swa finds, and how."""


_KEYWORDS = {command: {k[0]: k for k in keywords} for command, keywords in _native.describe()}


# Options of the images swa reads itself: batches from Python come preprocessed.
_IMAGE_OPTIONS = ("resize", "center_crop", "mean", "std", "preset", "image_column", "label_column",
                  "skip_bad_images", "max_image_pixels", "seed")


def _is_iterator(value: Any) -> bool:
    try:
        return iter(value) is value
    except TypeError:
        return False


def _check(command: str, kwargs: dict[str, Any]) -> None:
    """What only Python calls can get wrong, refused before anything runs."""
    given = lambda k: kwargs.get(k) is not None and kwargs.get(k) is not False
    batches = [k for k in kwargs if k.endswith("batches") and kwargs[k] is not None]
    for key in batches:
        stem = key[: -len("batches")]
        if given(stem + "inputs"):
            raise UsageError(f"give {key}= or {stem}inputs=, not both: they are the same samples", keyword=key)
        if given(stem + "labels"):
            raise UsageError(f"{stem}labels= labels files; {key}= carry their labels in the batches: leave "
                             f"{stem}labels= out", keyword=stem + "labels")
    for key, size in (("batches", "batch_size"), ("train_batches", "batch_size")):
        if key in batches and given(size):
            raise UsageError(f"{size}= does not apply to {key}=: batches are taken as the iterable makes them (a "
                             f"DataLoader's batch_size is read from it); leave {size}= out", keyword=size)
    if batches and not any(given(k) for k in kwargs if k.endswith("inputs")):
        for option in _IMAGE_OPTIONS:
            if given(option):
                raise UsageError(f"{option}= applies to samples swa reads from files (inputs=); batches from Python "
                                 f"are fed to the model as they are: do this in your transform", keyword=option)
    # Commands that read a set more than once (every checkpoint or soup candidate evaluated, or
    # recalibrated) cannot read a generator.
    again = {
        "run": ["eval_batches", "select_batches"],
        "soup": ["eval_batches", "select_batches", "train_batches"],
        "ensemble": ["eval_batches", "train_batches"],
        "swag": ["eval_batches", "train_batches"],
    }
    if command == "run" and any(given(k) for k in ("recalibrate_each", "soup", "ensemble", "swag")):
        again["run"].append("train_batches")
    for key in again.get(command, []):
        if key in batches and _is_iterator(kwargs[key]):
            raise UsageError(f"{key}= is an iterator (a generator), which can be read once, and swa.{command}() reads "
                             f"it once per model: give a re-iterable object (a DataLoader, a list of batches)",
                             keyword=key)


def _call(command: str, result: type, kwargs: dict[str, Any]) -> Any:
    quiet = kwargs.pop("quiet", False)
    if not isinstance(quiet, bool):
        raise TypeError(f"quiet= takes True or False, not {quiet!r}")
    keywords = _KEYWORDS[command]
    _check(command, kwargs)
    # A DataLoader says its batch size (the summary reports the batches' own size anyway).
    for source, size in (("batches", "batch_size"), ("train_batches", "batch_size"), ("eval_batches", "eval_batch_size")):
        loader = kwargs.get(source)
        if loader is not None and size in keywords and kwargs.get(size) is None:
            n = getattr(loader, "batch_size", None)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                kwargs[size] = n
    checkpoints = kwargs.get("checkpoints")
    if checkpoints is not None and not isinstance(checkpoints, (str, bytes, os.PathLike, Mapping, list, tuple)):
        try:
            kwargs["checkpoints"] = list(checkpoints)  # Path.glob(...), a set, a generator of paths
        except TypeError:
            pass
    with tempfile.TemporaryDirectory(prefix="swa-state-dicts-") as tmp:
        names: dict[str, str] = {}

        def saved(value: Any, label: str, number: int) -> Any:
            if not isinstance(value, Mapping):
                return value
            # Numbered by position from 1, as epoch_1, epoch_2... would be.
            path = os.path.join(tmp, f"state_dict_{number}.safetensors")
            try:
                _native.save_tensors(dict(value), path, label)
            except OSError as e:
                raise InputError(f"{label}: writing it to a temporary file for the call: {e}", path=label) from e
            except Exception as e:
                hint = ""
                if any(k in value for k in ("state_dict", "model", "model_state_dict", "epoch")):
                    hint = " (a training checkpoint? give its state dict: ckpt[\"state_dict\"])"
                raise UsageError(f"{e}{hint}", keyword=label.split("[")[0]) from e
            names[path] = f"{label} (a state dict)"
            return path

        for key in ("weights", "checkpoints"):
            value = kwargs.get(key)
            if isinstance(value, Mapping):
                kwargs[key] = saved(value, key, 1)
            elif key == "checkpoints" and isinstance(value, (list, tuple)):
                dicts = [isinstance(v, Mapping) for v in value]
                if any(dicts) and not all(dicts):
                    raise UsageError("checkpoints= mixes files and state dicts: their order would be the files' "
                                     "numbers against positions; give all as files or all as state dicts (in order, "
                                     "oldest first)", keyword="checkpoints")
                kwargs[key] = [saved(v, f"{key}[{k}]", k + 1) for k, v in enumerate(value)]
        in_place = [k for k, v in kwargs.items() if k.endswith("batches") and _fresh_batches(v)]
        try:
            text, code, said, failure = _native.call(command, kwargs, quiet, in_place)
        except Error as e:
            raise _renamed(e, names, command) from e.__cause__
    for w in said:
        warnings.warn(_rename(w, names), SwaWarning, stacklevel=3)
    out = result(json.loads(_rename(text, names)))
    # doctor's exit code 1 (no usable ONNX Runtime) is its answer, in the result
    if code == 1 and command != "doctor":
        raise GateFailed(failure or f"swa.{command.replace('-', '_')}(): the threshold was not met", out)
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


def _renamed(e: Error, names: dict[str, str], command: str) -> Error:
    message = _rename(e.message, names)
    if "required arguments were not provided" in message:
        # the files' keyword is named; batches are the other way to give the samples
        for key in _KEYWORDS[command]:
            if key.endswith("batches"):
                files = key[: -len("batches")] + "inputs"
                message = message.replace(f"{files}=", f"{key}= (or {files}=)")
    e.message = message
    e.args = (message,)
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


def ensemble(**opts: Any) -> EnsembleResult:
    """The checkpoint ensemble (``swa ensemble``): the mean of the members' predictions on
    ``eval_batches=`` / ``eval_inputs=``, with stored statistics and, given ``train_batches=`` /
    ``train_inputs=``, recalibrated ones."""
    return _call("ensemble", EnsembleResult, opts)


def swag(**opts: Any) -> SwagResult:
    """SWAG from the checkpoints (``swa swag``): the model average of ``swag_samples=`` samples,
    each with BatchNorm refitted on ``train_batches=`` / ``train_inputs=``."""
    return _call("swag", SwagResult, opts)


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


def _document() -> None:
    """Gives each function the command's keywords as its signature and its help in its docstring,
    so that ``help(swa.recalibrate)`` and a notebook's ``?`` list them as the stubs do."""
    import inspect as _inspect

    functions = {"average": average, "recalibrate": recalibrate, "evaluate": evaluate, "run": run, "soup": soup,
                 "inspect": inspect, "merge-stats": merge_stats, "merge-eval": merge_eval, "doctor": doctor}
    for command, function in functions.items():
        own = _inspect.signature(function).parameters
        params = [p for p in own.values() if p.kind is not _inspect.Parameter.VAR_KEYWORD]
        named = {p.name for p in params} | {"file" if "path" in own else ""}
        lines = ["", "", "Keywords (the flags of `swa " + command + "`):"]
        for key, flag, kind, value_name, help_, choices, _required in _KEYWORDS[command].values():
            if key not in named:
                default = False if kind == "switch" else None
                params.append(_inspect.Parameter(key, _inspect.Parameter.KEYWORD_ONLY, default=default))
            text = " ".join(help_.split()) or "(no help)"
            if choices:
                text += " One of: " + ", ".join(choices) + "."
            lines.append(f"    {'path' if key == 'file' and 'path' in own else key} ({flag}): {text}")
        if not any(p.name == "quiet" for p in params):
            params.append(_inspect.Parameter("quiet", _inspect.Parameter.KEYWORD_ONLY, default=False))
        order = {_inspect.Parameter.POSITIONAL_OR_KEYWORD: 0, _inspect.Parameter.KEYWORD_ONLY: 1}
        params.sort(key=lambda p: order.get(p.kind, 2))
        function.__signature__ = _inspect.Signature(params, return_annotation=_inspect.signature(function).return_annotation)
        function.__doc__ = (function.__doc__ or "") + "\n".join(lines)


_document()

