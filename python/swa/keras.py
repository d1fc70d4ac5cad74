"""Export a Keras 3 model (TensorFlow backend) to ONNX with its BatchNormalization layers kept as
ONNX ``BatchNormalization`` nodes, so that ``swa`` can refit their statistics.

Neither export Keras offers keeps them: Keras 3 computes BatchNormalization as ``tf.nn.batch_normalization``
(a multiply and an add, which tf2onnx folds into constants), and tf2onnx's ``remove_back_to_back``
optimizer folds a BatchNormalization that follows a Conv into the Conv's weights. ``export_onnx``
runs tf2onnx with Keras's inference-mode batch normalisation computed by
``tf.compat.v1.nn.fused_batch_norm`` (TensorFlow's ``FusedBatchNormV3``, the same arithmetic:
``(x - mean) / sqrt(var + epsilon) * gamma + beta``), which tf2onnx converts to ``BatchNormalization``,
and without that optimizer's Conv + BatchNormalization folding (its other folds, such as
Transpose pairs, still run). The model's outputs are unchanged (checked, with ``check=``, against
``model.predict``: within 1e-5, relative to the largest output).

A BatchNormalization layer with ``center=False`` or ``scale=False`` has no beta or gamma variable:
its node gets constant zeros or ones, which swa's binding recognises as such.

Besides ``pip install swa-tool`` (in the environment that trains the model), it needs TensorFlow,
Keras 3 and tf2onnx (``pip install tensorflow keras tf2onnx``)::

    python -m swa.keras model.keras model.onnx           # or, in Python:
    >>> from swa.keras import export_onnx
    >>> export_onnx(model, "model.onnx")
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, Sequence

__all__ = ["export_onnx", "fused_batch_norm"]


@contextlib.contextmanager
def fused_batch_norm() -> Iterator[None]:
    """Within this context, Keras's TensorFlow backend computes inference-mode batch normalisation
    of 4-D float32 inputs (channels last or first) with ``FusedBatchNormV3``."""
    import tensorflow as tf
    from keras.src.backend.tensorflow import nn as tf_nn

    original = tf_nn.batch_normalization

    def batch_normalization(x, mean, variance, axis, offset=None, scale=None, epsilon=1e-3):
        rank = len(x.shape)
        if rank == 4 and x.dtype == tf.float32 and axis in (-1, 1, 3):
            channels = mean.shape[0]
            scale = tf.ones([channels], tf.float32) if scale is None else scale
            offset = tf.zeros([channels], tf.float32) if offset is None else offset
            data_format = "NCHW" if axis == 1 else "NHWC"
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, scale, offset, mean, variance, epsilon=epsilon, data_format=data_format, is_training=False
            )
            return y
        return original(x, mean, variance, axis, offset, scale, epsilon)

    tf_nn.batch_normalization = batch_normalization
    try:
        yield
    finally:
        tf_nn.batch_normalization = original


def export_onnx(
    model: Any,
    path: str,
    *,
    input_signature: Sequence[Any] | None = None,
    opset: int = 17,
    check: Any = None,
) -> Any:
    """Writes ``model`` (a Keras 3 model, or the path of a ``.keras`` file) to ``path`` as ONNX with
    one ``BatchNormalization`` node per BatchNormalization layer; returns the ONNX ModelProto.

    ``input_signature`` defaults to the model's inputs with a free batch dimension, named as the
    Keras inputs are. ``check``: an array (or list of arrays) of inputs on which ONNX Runtime's
    outputs are compared with ``model.predict`` (needs onnxruntime). Raises ``ValueError`` if a
    BatchNormalization layer did not become a node (a layer on a 2-D or 5-D input stays folded).
    """
    import keras
    import tensorflow as tf
    import tf2onnx

    if isinstance(model, str):
        model = keras.saving.load_model(model)
    if input_signature is None:
        input_signature = [
            tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=t.name.split(":")[0]) for t in model.inputs
        ]
    from tf2onnx.optimizer import back_to_back_optimizer

    folds = back_to_back_optimizer._func_map
    conv_bn = ("Conv", "BatchNormalization")
    fold = folds.pop(conv_bn, None)
    try:
        with fused_batch_norm():
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=input_signature, opset=opset, output_path=path)
    finally:
        if fold is not None:
            folds[conv_bn] = fold
    layers = [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    nodes = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    if len(nodes) != len(layers):
        raise ValueError(
            f"{len(layers)} BatchNormalization layers but {len(nodes)} BatchNormalization nodes in {path}: "
            "only layers on 4-D float32 inputs are exported as nodes"
        )
    if check is not None:
        import numpy as np
        import onnxruntime as ort

        inputs = check if isinstance(check, (list, tuple)) else [check]
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        got = session.run(None, {i.name: np.asarray(x) for i, x in zip(session.get_inputs(), inputs)})[0]
        want = model.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)
        want = np.asarray(want)
        diff = float(np.max(np.abs(want - got)))
        scale = max(1.0, float(np.max(np.abs(want))))
        if diff > 1e-5 * scale:
            raise ValueError(
                f"ONNX Runtime's outputs differ from Keras's by {diff:g} (more than 1e-5 of the largest output, {scale:g})"
            )
    return proto


def _layers(model: Any) -> Iterator[Any]:
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0].startswith("-"):
        print("usage: python -m swa.keras MODEL.keras OUT.onnx", file=sys.stderr)
        return 2
    export_onnx(args[0], args[1])
    print(f"wrote {args[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
