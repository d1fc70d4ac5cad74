"""Checkpoint ensembles, SWAG and temperature scaling from Python, with the data in DataLoaders:
the figures equal the PyTorch references of fixtures/swag (make_swag_fixture.py) as the files'
do (tests/swa/swag.rs)."""

import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import swa


@pytest.fixture
def cnn(fixtures):
    d = os.path.join(fixtures, "cnn")

    def loader(split, batch):
        x = torch.from_numpy(np.load(os.path.join(d, f"{split}.npy")))
        labels = os.path.join(d, f"{split}_labels.npy")
        y = torch.from_numpy(np.load(labels)) if os.path.exists(labels) else torch.zeros(len(x), dtype=torch.int64)
        return DataLoader(TensorDataset(x, y), batch_size=batch)

    expected = json.load(open(os.path.join(fixtures, "swag", "expected.json")))
    return d, loader, expected


def figures(got, expected, prefix, tol):
    assert abs(got["loss"] - expected[f"{prefix}_nll"]) <= tol
    assert got["top1"] == pytest.approx(expected[f"{prefix}_top1"], abs=1e-12)
    assert abs(got["ece"] - expected[f"{prefix}_ece"]) <= tol
    assert abs(got["brier"] - expected[f"{prefix}_brier"]) <= tol


def test_an_ensemble_of_dataloaders_equals_pytorchs(cnn):
    d, loader, expected = cnn
    r = swa.ensemble(model=os.path.join(d, "model.onnx"), checkpoints=os.path.join(d, "checkpoints"),
                     eval_batches=loader("eval", 100), train_batches=loader("train", 64), stats="torch", quiet=True)
    figures(r.stored, expected, "ensemble", 1e-6)
    figures(r.recalibrated, expected, "ensemble_recalibrated", 1e-5)
    assert len(r.members) == 8


def test_swag_from_given_draws_averages_like_pytorch(cnn, fixtures):
    d, loader, expected = cnn
    r = swa.swag(model=os.path.join(d, "model.onnx"), checkpoints=os.path.join(d, "checkpoints"),
                 eval_batches=loader("eval", 100), train_batches=loader("train", 64), stats="torch", rank=5,
                 swag_samples=3, draws=os.path.join(fixtures, "swag", "draws.npy"), quiet=True)
    figures(r.evaluation, expected, "bma", 1e-5)
    assert [s.sample for s in r.drawn] == [0, 1, 2]


def test_a_temperature_fitted_on_a_dataloader_equals_an_f64_pytorch_fit(cnn):
    d, loader, expected = cnn
    r = swa.evaluate(os.path.join(d, "model.onnx"), os.path.join(d, "expected", "swa_bn_torch.safetensors"),
                     batches=loader("eval", 100), temperature="fit", calibration_batches=loader("select", 50),
                     quiet=True)
    want = expected["temperature_torch_stats"]
    assert abs(r.temperature.value - want["temperature"]) <= 1e-4
    assert abs(r.loss - want["eval_nll_after"]) <= 1e-5
    assert r.temperature.before.loss > r.loss


def test_run_compares_swa_with_the_ensemble_and_swag(cnn, tmp_path):
    d, loader, _ = cnn
    r = swa.run(model=os.path.join(d, "model.onnx"), checkpoints=os.path.join(d, "checkpoints"), from_=4,
                train_batches=loader("train", 64), eval_batches=loader("eval", 100), ensemble=True, swag=True,
                swag_samples=2, out=str(tmp_path / "run"), quiet=True)
    names = [c["name"] for c in r.comparison]
    assert any(n.startswith("ensemble of 5") for n in names) and any(n.startswith("SWAG") for n in names)
    with pytest.raises(swa.UsageError, match="at least two checkpoints"):
        swa.ensemble(model=os.path.join(d, "model.onnx"), checkpoints=os.path.join(d, "checkpoints"), last=1,
                     eval_batches=loader("eval", 100), quiet=True)
