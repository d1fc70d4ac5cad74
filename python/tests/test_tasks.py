"""Tasks beyond classification from Python: a DataLoader's targets (float rows, multi-hot rows) give
what `swa evaluate --task ...` gives on the files; a gate on any figure raises GateFailed; a metric
command written in Python scores the outputs."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import swa


def cli(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "swa")
    return json.loads(subprocess.run([exe, *map(str, args), "--json"], check=True, capture_output=True, text=True).stdout)


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_a_loaders_targets_give_the_figures_of_the_files(fixtures, task):
    d = os.path.join(fixtures, "tasks", task)
    model, ck = os.path.join(d, "model.onnx"), os.path.join(d, "checkpoints", "epoch_003.safetensors")
    x, y = np.load(os.path.join(d, "eval.npy")), np.load(os.path.join(d, "eval_targets.npy"))
    # Targets as the user's pipeline has them: float64 values, or float 0/1 rows.
    y = y.astype(np.float64) if task == "regression" else y.astype(np.float32)
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=48)
    ours = swa.evaluate(model, ck, batches=loader, task=task, quiet=True)
    theirs = cli("evaluate", "--model", model, "--weights", ck, "--inputs", os.path.join(d, "eval.npy"), "--labels",
                 os.path.join(d, "eval_targets.npy"), "--task", task)
    assert ours.to_dict().keys() == theirs.keys()
    for k, v in theirs.items():
        if isinstance(v, float):
            assert abs(ours[k] - v) <= 1e-6 * max(1.0, abs(v)), k  # float64 targets rounded to float32 once
        elif k not in ("per_output", "per_label"):
            assert ours[k] == v, k
    assert ours.task == task


def test_gates_on_any_figure_raise_gate_failed_with_the_result(fixtures):
    d = os.path.join(fixtures, "tasks", "regression")
    kw = dict(inputs=os.path.join(d, "eval.npy"), labels=os.path.join(d, "eval_targets.npy"), task="regression",
              quiet=True)
    model, ck = os.path.join(d, "model.onnx"), os.path.join(d, "checkpoints", "epoch_003.safetensors")
    ok = swa.evaluate(model, ck, gate=["rmse<=5", "r2>=0.1"], **kw)
    with pytest.raises(swa.GateFailed, match="rmse") as e:
        swa.evaluate(model, ck, gate="rmse<=0.01", **kw)
    assert e.value.result.rmse == ok.rmse
    with pytest.raises(swa.UsageError, match="miou"):
        swa.evaluate(model, ck, gate="miou>=0.5", **kw)


def test_a_metric_command_scores_the_outputs(fixtures, tmp_path):
    d = os.path.join(fixtures, "tasks", "regression")
    script = tmp_path / "metric.py"
    script.write_text("import json, sys\nimport numpy as np\n"
                      "o, y = np.load(sys.argv[1]), np.load(sys.argv[2])\n"
                      "print(json.dumps({'score': -float(np.abs(o - y).mean()), 'n': len(o)}))\n")
    r = swa.evaluate(os.path.join(d, "model.onnx"), os.path.join(d, "checkpoints", "epoch_003.safetensors"),
                     inputs=os.path.join(d, "eval.npy"), labels=os.path.join(d, "eval_targets.npy"),
                     metric_command=f"{sys.executable} {script} {{outputs}} {{labels}}", quiet=True)
    mae = swa.evaluate(os.path.join(d, "model.onnx"), os.path.join(d, "checkpoints", "epoch_003.safetensors"),
                       inputs=os.path.join(d, "eval.npy"), labels=os.path.join(d, "eval_targets.npy"),
                       task="regression", quiet=True).mae
    assert abs(r.score + mae) < 1e-6 and r.figures["n"] == 256
