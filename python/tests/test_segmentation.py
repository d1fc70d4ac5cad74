"""Semantic segmentation end to end: fixtures/tasks/make_segmentation_fixture.py writes, into a
temporary folder, an LRASPP MobileNetV3 with 3 checkpoints, image and palette-mask folders, and
PyTorch's answers for the SWA model (about 10 s on 2 cores). For now these tests check what it
wrote; the `swa run --task segmentation` calls come where the TODO says."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# Under CI a missing dependency fails; elsewhere it skips.
if os.environ.get("CI"):
    import onnx
    import PIL  # noqa: F401
    import torchvision  # noqa: F401
    from safetensors import safe_open
else:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("PIL")
    pytest.importorskip("torchvision")
    safe_open = pytest.importorskip("safetensors").safe_open

GENERATOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "fixtures", "tasks",
                         "make_segmentation_fixture.py")
TRAIN, EVAL, CLASSES, SIZE = 48, 16, 4, 64


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    out = tmp_path_factory.mktemp("segmentation")
    r = subprocess.run([sys.executable, GENERATOR, str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{GENERATOR} failed:\n{r.stdout}\n{r.stderr}"
    return out


def test_the_generator_writes_images_masks_checkpoints_and_answers(seg):
    from PIL import Image
    for split, n in (("train", TRAIN), ("eval", EVAL)):
        images = sorted(os.listdir(seg / "images" / split))
        assert images == [f"{i:03d}.png" for i in range(n)]
        assert sorted(os.listdir(seg / "masks" / split)) == images
        for name in images[:4]:
            with Image.open(seg / "images" / split / name) as im, Image.open(seg / "masks" / split / name) as m:
                assert im.mode == "RGB" and m.mode == "P" and im.size == m.size
                assert set(np.unique(np.array(m))) <= {0, 1, 2, 3, 255}
    assert sorted(os.listdir(seg / "checkpoints")) == [f"epoch_{e:03d}.safetensors" for e in (1, 2, 3)]
    for f in ("model.onnx", "expected/swa_bn.safetensors", "expected/eval.json", "expected/eval_inputs.npy",
              "expected/eval_masks.npy"):
        assert (seg / f).stat().st_size > 0, f

    x, y = np.load(seg / "expected" / "eval_inputs.npy"), np.load(seg / "expected" / "eval_masks.npy")
    assert x.dtype == np.float32 and x.shape == (EVAL, 3, SIZE, SIZE)
    assert y.dtype == np.int64 and y.shape == (EVAL, SIZE, SIZE)
    assert set(np.unique(y)) == {0, 1, 2, 3, 255}

    ev = json.loads((seg / "expected" / "eval.json").read_text())
    assert (ev["classes"], ev["train_images"], ev["eval_images"]) == (CLASSES, TRAIN, EVAL)
    assert ev["pixels"] == int((y != 255).sum()) and ev["ignored"] == int((y == 255).sum())
    for m in [ev["swa"], *ev["checkpoints"].values()]:
        cm = np.array(m["confusion"])
        assert cm.shape == (CLASSES, CLASSES) and cm.sum() == ev["pixels"]
        assert cm.sum(1).tolist() == [int((y == c).sum()) for c in range(CLASSES)]  # rows: the target
    assert sorted(ev["checkpoints"]) == ["epoch_001", "epoch_002", "epoch_003"]


def test_the_onnx_keeps_batchnorm_and_the_state_dict_names(seg):
    model = onnx.load(str(seg / "model.onnx"))
    bn = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert len(bn) == json.loads((seg / "expected" / "eval.json").read_text())["batchnorm_layers"] > 0
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    shape = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    assert shape(model.graph.input[0]) == ["batch", 3, SIZE, SIZE]
    # the exporter declares only the batch of the logits: the rest comes out of a Resize, unnamed
    assert shape(model.graph.output[0])[0] == "batch" and len(shape(model.graph.output[0])) == 4
    with safe_open(str(seg / "checkpoints" / "epoch_003.safetensors"), "np") as f:
        keys = set(f.keys())
    # initializers are named as the state dict; equal ones are deduplicated through Identity nodes
    # whose outputs carry the other names, so every BatchNorm's scale, bias, mean and var is a key
    assert {i.name for i in model.graph.initializer} <= keys
    assert all(i in keys for n in bn for i in n.input[1:5])
    assert all(a.i == 0 for n in bn for a in n.attribute if a.name == "training_mode")


PREPROCESS = dict(resize=64, center_crop=64, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def test_swa_run_recalibrates_as_update_bn_and_counts_pixels_as_pytorch(seg, tmp_path):
    """`swa run --task segmentation` over the image and mask folders: statistics equal update_bn's
    (1e-4 relative, as the issue states), each checkpoint's and the SWA model's confusion matrix
    equal PyTorch's except pixels whose top-2 margin is below 1e-5 (counted by the generator)."""
    import swa
    from safetensors.numpy import load_file as load_np

    out = tmp_path / "run"
    r = swa.run(model=seg / "model.onnx", checkpoints=seg / "checkpoints", train_inputs=seg / "images" / "train",
                eval_inputs=seg / "images" / "eval", masks=seg / "masks" / "eval", task="segmentation",
                stats="torch", batch_size=8, out=out, gate="miou>=0.5", quiet=True, **PREPROCESS)
    ev = json.loads((seg / "expected" / "eval.json").read_text())
    ours, theirs = load_np(str(out / "swa.safetensors")), load_np(str(seg / "expected" / "swa_bn.safetensors"))
    checked = 0
    for k, v in theirs.items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            a, b = ours[k].astype(np.float64), v.astype(np.float64)
            # Relative to the tensor's scale; a mean that is float noise around 0 (~1e-8, the
            # inputs of a BatchNorm after a mean-free layer) is compared to 1e-6 absolute.
            assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max() or np.abs(a - b).max() <= 1e-6, k
            checked += 1
    assert checked == 2 * ev["batchnorm_layers"]
    # The report's figures, then the full matrix of the SWA model and each checkpoint's.
    assert abs(r.swa_recalibrated["miou"] - ev["swa"]["miou"]) < 1e-6 + ev["swa"]["near_ties"] / ev["pixels"]

    def confusion(model, weights=None):
        e = swa.evaluate(model, weights, inputs=seg / "images" / "eval", masks=seg / "masks" / "eval",
                         task="segmentation", quiet=True, **PREPROCESS)
        return np.array(e.confusion), e

    for name, expected, model, weights in [
        ("swa", ev["swa"], out / "model_swa.onnx", None),
        *[(k, v, seg / "model.onnx", seg / "checkpoints" / f"{k}.safetensors") for k, v in ev["checkpoints"].items()],
    ]:
        cm, e = confusion(model, weights)
        differ = int(np.abs(cm - np.array(expected["confusion"])).sum()) // 2
        assert differ <= expected["near_ties"], f"{name}: {differ} pixels differ, {expected['near_ties']} near ties"
        tp = np.diag(cm).astype(np.float64)
        union = cm.sum(0) + cm.sum(1) - tp
        assert abs(e.miou - (tp[union > 0] / union[union > 0]).mean()) < 1e-9
        assert abs(e.pixel_accuracy - tp.sum() / cm.sum()) < 1e-9


def test_masks_from_a_loader_count_as_the_mask_folder(seg):
    """The preprocessed tensors and masks through `batches=` (a DataLoader of (image, mask)) give
    the matrix the folders give: torchvision's mask transform is swa's, pixel for pixel."""
    import swa
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.from_numpy(np.load(seg / "expected" / "eval_inputs.npy"))
    y = torch.from_numpy(np.load(seg / "expected" / "eval_masks.npy"))
    ck = seg / "checkpoints" / "epoch_003.safetensors"
    folder = swa.evaluate(seg / "model.onnx", ck, inputs=seg / "images" / "eval", masks=seg / "masks" / "eval",
                          task="segmentation", quiet=True, **PREPROCESS)
    loader = swa.evaluate(seg / "model.onnx", ck, batches=DataLoader(TensorDataset(x, y), batch_size=5),
                          task="segmentation", quiet=True)
    assert loader.confusion == folder.confusion
    # Wrong targets name the batch.
    with pytest.raises(swa.Error, match="masks"):
        swa.evaluate(seg / "model.onnx", ck, batches=[(x[:4], y[:4, :32])], task="segmentation", quiet=True)
