"""`import swa` against PyTorch: recalibration from a DataLoader equals update_bn on the same
batches (1e-5 relative, max |ours - torch| / max |torch| per BatchNorm tensor), evaluation from a
loader gives the CLI's counts, multi-input and token-id models, in-memory state dicts, bad
batches, Ctrl-C, and the stubs."""

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

import swa

RTOL = 1e-5


def export(model, args, path, input_names, dynamic=True):
    model.eval()
    axes = {n: {0: "batch"} for n in input_names} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, path, dynamo=False, input_names=input_names, output_names=["logits"],
                          dynamic_axes=axes, training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)


def assert_bn_equal(ours_path, model, names=None):
    """Every running_mean / running_var of `model` equals the file's, within RTOL of its scale."""
    ours = load_file(ours_path)
    state = model.state_dict()
    checked = 0
    for k, v in state.items():
        if not (k.endswith("running_mean") or k.endswith("running_var")):
            continue
        key = names(k) if names else k
        a, b = ours[key].double().numpy(), v.double().numpy()
        err = np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)
        assert err <= RTOL, f"{k}: relative error {err:.2e}"
        checked += 1
    assert checked > 0
    return checked


def cnn_model(fixtures, epoch=8):
    from make_fixtures import ResCNN
    m = ResCNN()
    ck = os.path.join(fixtures, "cnn", "checkpoints", f"epoch_{epoch:03d}.safetensors")
    m.load_state_dict(load_file(ck))
    return m, ck


@pytest.mark.parametrize("shuffle", [False, True])
def test_recalibrate_from_a_loader_equals_update_bn_on_the_fixture(fixtures, tmp_path, shuffle):
    model, ck = cnn_model(fixtures)
    x = torch.from_numpy(np.load(os.path.join(fixtures, "cnn", "train.npy")))
    loader = lambda: DataLoader(TensorDataset(x), batch_size=64, shuffle=shuffle,
                                generator=torch.Generator().manual_seed(7))
    r = swa.recalibrate(os.path.join(fixtures, "cnn", "model.onnx"), ck, batches=loader(), stats="torch",
                        output=tmp_path / "m.onnx", save_weights=tmp_path / "m.safetensors", quiet=True)
    assert (r.samples, r.batches, r.batch_size) == (500, 8, 64)
    update_bn(loader(), model)
    assert assert_bn_equal(tmp_path / "m.safetensors", model) == 12


def test_recalibrate_from_a_loader_equals_update_bn_on_the_mlp_fixture(fixtures, tmp_path):
    from make_fixtures import MLP
    model = MLP()
    ck = os.path.join(fixtures, "mlp", "checkpoints", "epoch_006.safetensors")
    model.load_state_dict(load_file(ck))
    x = torch.from_numpy(np.load(os.path.join(fixtures, "mlp", "train.npy")))
    loader = lambda: DataLoader(TensorDataset(x), batch_size=32)
    swa.recalibrate(os.path.join(fixtures, "mlp", "model.onnx"), ck, batches=loader(), stats="torch",
                    output=tmp_path / "m.onnx", save_weights=tmp_path / "m.safetensors", quiet=True)
    update_bn(loader(), model)
    assert assert_bn_equal(tmp_path / "m.safetensors", model) >= 2


def test_recalibrate_resnet18_from_a_loader_with_its_state_dict_in_memory(tmp_path):
    torchvision = pytest.importorskip("torchvision") if not os.environ.get("CI") else __import__("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    export(model, (torch.zeros(2, 3, 32, 32),), str(tmp_path / "resnet18.onnx"), ["input"])
    x = torch.randn(192, 3, 32, 32)
    loader = lambda: DataLoader(TensorDataset(x, torch.zeros(192, dtype=torch.long)), batch_size=64)
    r = swa.recalibrate(tmp_path / "resnet18.onnx", model.state_dict(), batches=loader(), stats="torch",
                        output=tmp_path / "out.onnx", save_weights=tmp_path / "out.safetensors", quiet=True)
    assert r.samples == 192 and len(r.layers) == 20
    update_bn(loader(), model)
    assert assert_bn_equal(tmp_path / "out.safetensors", model) == 40


def test_evaluate_from_a_loader_gives_the_counts_of_the_command_on_the_files(fixtures, tmp_path):
    model_path = os.path.join(fixtures, "cnn", "model.onnx")
    _, ck = cnn_model(fixtures)
    x, y = (np.load(os.path.join(fixtures, "cnn", f)) for f in ("eval.npy", "eval_labels.npy"))
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=50)
    ours = swa.evaluate(model_path, ck, batches=loader, quiet=True)
    cli = subprocess.run([os.path.join(os.path.dirname(sys.executable), "swa"), "evaluate", "--model", model_path,
                          "--weights", ck, "--inputs", os.path.join(fixtures, "cnn", "eval.npy"), "--labels",
                          os.path.join(fixtures, "cnn", "eval_labels.npy"), "--json"],
                         check=True, capture_output=True, text=True)
    theirs = json.loads(cli.stdout)
    assert ours.to_dict() == theirs
    assert ours.samples == 300 and ours.correct == theirs["correct"] > 200


class TwoInputs(nn.Module):
    """An image and a scalar feature, each through a BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.feature = nn.Linear(1, 4)
        self.bn_feature = nn.BatchNorm1d(4)
        self.fc = nn.Linear(12, 5)

    def forward(self, image, feature):
        a = torch.relu(self.bn(self.conv(image))).mean((2, 3))
        b = torch.relu(self.bn_feature(self.feature(feature)))
        return self.fc(torch.cat([a, b], 1))


class ByName(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, batch):
        return self.m(batch["image"], batch["feature"])


def test_a_two_input_model_recalibrates_from_dict_batches(tmp_path):
    torch.manual_seed(1)
    model = TwoInputs()
    export(model, (torch.zeros(2, 3, 8, 8), torch.zeros(2, 1)), str(tmp_path / "two.onnx"), ["image", "feature"])
    images, features = torch.randn(96, 3, 8, 8) * 2 + 1, torch.randn(96, 1) * 3 - 2
    batches = lambda: [{"image": images[i:i + 32], "feature": features[i:i + 32], "id": i} for i in range(0, 96, 32)]
    swa.recalibrate(tmp_path / "two.onnx", model.state_dict(), batches=batches(), stats="torch",
                    output=tmp_path / "out.onnx", save_weights=tmp_path / "out.safetensors", quiet=True)
    update_bn(batches(), ByName(model))
    assert assert_bn_equal(tmp_path / "out.safetensors", model) == 4
    # ...and from tuples of arrays in the model's order, numpy this time
    swa.recalibrate(tmp_path / "two.onnx", model.state_dict(), stats="torch", output=tmp_path / "out2.onnx",
                    batches=[(images[i:i + 32].numpy(), features[i:i + 32].numpy()) for i in range(0, 96, 32)],
                    save_weights=tmp_path / "out2.safetensors", quiet=True)
    assert_bn_equal(tmp_path / "out2.safetensors", model)


class TextNet(nn.Module):
    """Token ids → embeddings → Conv1d → BatchNorm1d → classes."""

    def __init__(self, vocab=50):
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.conv = nn.Conv1d(16, 24, 3, padding=1)
        self.bn = nn.BatchNorm1d(24)
        self.fc = nn.Linear(24, 3)

    def forward(self, input_ids):
        h = self.conv(self.embed(input_ids).transpose(1, 2))
        return self.fc(torch.relu(self.bn(h)).mean(2))


def test_a_text_model_recalibrates_from_a_tokenised_datasets_dataset(tmp_path):
    datasets = pytest.importorskip("datasets") if not os.environ.get("CI") else __import__("datasets")
    torch.manual_seed(2)
    model = TextNet()
    export(model, (torch.zeros(2, 12, dtype=torch.long),), str(tmp_path / "text.onnx"), ["input_ids"])
    words = "the a model average weights batch norm swa loss epoch data train eval sample".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, rng.integers(3, 12))) for _ in range(80)]
    vocab = {w: i + 1 for i, w in enumerate(words)}
    ds = datasets.Dataset.from_dict({"text": texts, "label": [i % 3 for i in range(80)]})
    ds = ds.map(lambda r: {"input_ids": ([vocab[w] for w in r["text"].split()] + [0] * 12)[:12]})
    ds = ds.with_format("torch", columns=["input_ids", "label"])
    swa.recalibrate(tmp_path / "text.onnx", model.state_dict(), batches=ds.iter(batch_size=16), stats="torch",
                    output=tmp_path / "out.onnx", save_weights=tmp_path / "out.safetensors", quiet=True)
    update_bn(DataLoader(TensorDataset(ds[:]["input_ids"]), batch_size=16), model)
    assert assert_bn_equal(tmp_path / "out.safetensors", model) == 2


def test_average_of_state_dicts_in_memory_is_their_mean(fixtures, tmp_path):
    from make_fixtures import ResCNN
    dicts = [load_file(os.path.join(fixtures, "cnn", "checkpoints", f"epoch_{e:03d}.safetensors")) for e in (5, 6, 7)]
    r = swa.average(dicts, tmp_path / "swa.safetensors", quiet=True)
    assert r.n_models == 3
    out = load_file(tmp_path / "swa.safetensors")
    for k, v in dicts[0].items():
        if v.is_floating_point() and "running" not in k:  # BatchNorm statistics: the newest's
            mean = sum(d[k].double() for d in dicts) / 3
            assert torch.equal(out[k], mean.float()), k
    ResCNN().load_state_dict(out)


def bad(fixtures, tmp_path, batches, **kw):
    model, ck = cnn_model(fixtures)
    with pytest.raises(swa.BatchError) as e:
        f = swa.evaluate if kw.pop("evaluate", False) else swa.recalibrate
        out = {} if f is swa.evaluate else {"output": tmp_path / "out.onnx", "save_weights": tmp_path / "w.safetensors"}
        f(os.path.join(fixtures, "cnn", "model.onnx"), ck, batches=batches, quiet=True, **out, **kw)
    assert os.listdir(tmp_path) == [], "nothing is written"
    return e.value


def test_bad_batches_name_the_batch_and_what_was_expected(fixtures, tmp_path):
    x = torch.randn(64, 3, 16, 16)
    e = bad(fixtures, tmp_path, [x, torch.randn(64, 3, 8, 8)])
    assert e.batch == 1 and "has shape [64, 3, 8, 8], but the model expects [?, 3, 16, 16]" in str(e), e
    e = bad(fixtures, tmp_path, [x, x.double()])
    assert e.batch == 1 and "is float64, but the model takes float32" in str(e), e
    e = bad(fixtures, tmp_path, [x[0]])
    assert e.batch == 0 and "one sample, not a batch?" in str(e), e
    y = x.clone()
    y[5, 1, 2, 3] = float("nan")
    e = bad(fixtures, tmp_path, [x, y])
    assert e.batch == 1 and "holds NaN" in str(e) and "(sample 5 of the batch)" in str(e), e
    e = bad(fixtures, tmp_path, [x, "not an array"])
    assert e.batch == 1 and "not an array or tensor" in str(e), e

    def raising():
        yield x
        raise OSError("the disk went away")

    e = bad(fixtures, tmp_path, raising())
    assert e.batch == 1 and "OSError: the disk went away" in str(e) and isinstance(e.__cause__, OSError), e
    e = bad(fixtures, tmp_path, iter([]))
    assert "yielded no batches" in str(e), e
    e = bad(fixtures, tmp_path, [x, x], evaluate=True)
    assert e.batch == 0 and "has no labels" in str(e), e
    e = bad(fixtures, tmp_path, [(x, torch.zeros(3, dtype=torch.long))], evaluate=True)
    assert "one label per sample" in str(e), e


def test_an_iterator_read_twice_is_refused_and_errors_name_keywords(fixtures, tmp_path):
    onnx = os.path.join(fixtures, "cnn", "model.onnx")
    _, ck = cnn_model(fixtures)
    x = np.load(os.path.join(fixtures, "cnn", "eval.npy"))[:100]
    y = np.load(os.path.join(fixtures, "cnn", "eval_labels.npy"))[:100]
    with pytest.raises(swa.UsageError, match="give batches= or inputs=, not both"):
        swa.recalibrate(onnx, batches=[x], inputs="x.npy", output=tmp_path / "o.onnx")
    # swa.run evaluates every checkpoint on the eval batches: a generator is read once.
    with pytest.raises(swa.UsageError, match="eval_batches= is an iterator"):
        swa.run(model=onnx, checkpoints=os.path.join(fixtures, "cnn", "checkpoints"), from_=7,
                train_inputs=os.path.join(fixtures, "cnn", "train.npy"),
                eval_batches=((x[i:i + 50], y[i:i + 50]) for i in range(0, 100, 50)), out=tmp_path / "run", quiet=True)
    assert not os.path.exists(tmp_path / "run")
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch_sise'"):
        swa.recalibrate("m.onnx", batches=[], output="o.onnx", batch_sise=3)
    with pytest.raises(swa.UsageError) as e:
        swa.recalibrate(os.path.join(fixtures, "cnn", "model.onnx"), inputs=os.path.join(fixtures, "cnn", "train.npy"),
                        output=tmp_path / "o.onnx", stats="torch", batch_size=1)
    assert "batch_size=1" in str(e.value) and "--" not in str(e.value), e.value
    with pytest.raises(swa.UsageError, match="batch_size= does not apply to batches="):
        swa.recalibrate(onnx, batches=[x], output=tmp_path / "o.onnx", batch_size=32)
    with pytest.raises(swa.UsageError, match="mean= applies to samples swa reads from files") as e:
        swa.recalibrate(onnx, batches=[x], output=tmp_path / "o.onnx", mean=[0.5, 0.5, 0.5])
    assert e.value.keyword == "mean"
    with pytest.raises(swa.UsageError, match="labels= labels files"):
        swa.evaluate(onnx, batches=[(x, y)], labels=os.path.join(fixtures, "cnn", "eval_labels.npy"))
    with pytest.raises(swa.UsageError, match=r"batches= \(or inputs=\)"):
        swa.recalibrate(onnx, output=tmp_path / "o.onnx")
    with pytest.raises(swa.UsageError, match="mixes files and state dicts"):
        swa.average([ck, load_file(ck)], tmp_path / "a.safetensors")
    with pytest.raises(swa.UsageError, match="a training checkpoint"):
        swa.recalibrate(onnx, {"epoch": 3, "state_dict": load_file(ck)}, batches=[x], output=tmp_path / "o.onnx")
    with pytest.raises(TypeError, match="quiet= takes True or False"):
        swa.recalibrate(onnx, batches=[x], output=tmp_path / "o.onnx", quiet="False")
    assert os.listdir(tmp_path) == []
    with pytest.raises(swa.UsageError) as e:
        swa.recalibrate(os.path.join(fixtures, "cnn", "model.onnx"), batches=[], stats="median", output="x.onnx")
    assert "stats" in str(e.value) and "--" not in str(e.value), e.value
    assert swa._native.pythonize("pass --force to replace it; pass --batch-size 8, or --stats precise") == \
        'pass force=True to replace it; pass batch_size=8, or stats="precise"'


def test_ctrl_c_raises_keyboard_interrupt_promptly_and_writes_nothing(fixtures, tmp_path):
    _, ck = cnn_model(fixtures)
    x = torch.randn(64, 3, 16, 16)

    def endless():
        for k in range(10**9):
            if k == 3:
                os.kill(os.getpid(), signal.SIGINT)
            yield x

    with pytest.raises(KeyboardInterrupt):
        swa.recalibrate(os.path.join(fixtures, "cnn", "model.onnx"), ck, batches=endless(),
                        output=tmp_path / "out.onnx", save_weights=tmp_path / "w.safetensors", quiet=True)
    assert os.listdir(tmp_path) == []
    # The handler is Python's again, and a later call runs.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    swa.recalibrate(os.path.join(fixtures, "cnn", "model.onnx"), ck, batches=[x], output=tmp_path / "out.onnx",
                    quiet=True)


def test_two_calls_at_once_from_threads_each_get_their_batches(fixtures, tmp_path):
    _, ck = cnn_model(fixtures)
    xs = [torch.randn(128, 3, 16, 16) * (k + 1) for k in range(2)]
    results = {}

    def one(k):
        results[k] = swa.recalibrate(os.path.join(fixtures, "cnn", "model.onnx"), ck,
                                     batches=DataLoader(TensorDataset(xs[k]), batch_size=32), output=tmp_path / f"{k}.onnx",
                                     save_weights=tmp_path / f"{k}.safetensors", quiet=True)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[k].samples == 128 for k in range(2))
    a, b = (load_file(tmp_path / f"{k}.safetensors")["bn1.running_var"] for k in range(2))
    assert (b / a).mean() > 3  # the second set is twice the scale


def test_the_stub_has_every_keyword_of_every_command():
    stub = os.path.join(os.path.dirname(swa.__file__), "__init__.pyi")
    tree = ast.parse(open(stub).read())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    for command, keywords in swa._native.describe():
        name = command.replace("-", "_")
        f = functions[name]
        params = {a.arg for a in f.args.args + f.args.kwonlyargs}
        missing = {"path" if k[0] == "file" else k[0] for k in keywords} - params - {"quiet"}
        assert not missing and "quiet" in params, f"{name}: {missing}"


def test_the_swa_command_is_the_entry_point_and_python_m_swa_runs_it():
    exe = os.path.join(os.path.dirname(sys.executable), "swa")
    v = subprocess.run([exe, "--version"], check=True, capture_output=True, text=True).stdout
    assert v.strip() == f"swa {swa.__version__}"
    r = subprocess.run([sys.executable, "-m", "swa", "inspect", "/nonexistent.safetensors"], capture_output=True, text=True)
    assert r.returncode == 2 and "nonexistent" in r.stderr


def test_loader_batches_are_read_in_place_and_a_refilled_array_is_copied(fixtures, tmp_path):
    x = torch.randn(8, 3, 16, 16)
    assert swa._native.reads_in_place(x) and swa._native.reads_in_place(x.numpy())
    assert not swa._native.reads_in_place(x.transpose(2, 3))  # gathered into a copy
    ro = x.numpy().copy()
    ro.flags.writeable = False  # DLPack refuses it; numpy's array interface reads it
    assert swa._native.reads_in_place(ro)
    assert swa._fresh_batches(DataLoader(TensorDataset(x), batch_size=4))
    assert not swa._fresh_batches(DataLoader(TensorDataset(x), batch_size=4, collate_fn=lambda b: b))
    assert not swa._fresh_batches([x])

    # A generator that refills one array for every batch: swa reads ahead while a batch runs, so
    # these are copied, and the statistics are those of the batches as yielded.
    model, ck = cnn_model(fixtures)
    data = torch.randn(8, 64, 3, 16, 16) * torch.linspace(0.5, 4, 8).view(8, 1, 1, 1, 1)
    buf = torch.empty(64, 3, 16, 16)

    def refilled():
        for k in range(8):
            buf.copy_(data[k])
            yield buf

    onnx = os.path.join(fixtures, "cnn", "model.onnx")
    swa.recalibrate(onnx, ck, batches=refilled(), stats="torch", output=tmp_path / "a.onnx",
                    save_weights=tmp_path / "a.safetensors", quiet=True)
    swa.recalibrate(onnx, ck, batches=list(data), stats="torch", output=tmp_path / "b.onnx",
                    save_weights=tmp_path / "b.safetensors", quiet=True)
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_example_runs():
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "python", "swa_from_python.py")
    r = subprocess.run([sys.executable, example], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "PyTorch and the ONNX model agree: True" in r.stdout


def test_the_stubs_let_a_type_checker_check_calls(tmp_path):
    """mypy reads the installed stubs: good calls pass, a wrong choice and a misspelt keyword fail."""
    use = tmp_path / "use.py"
    use.write_text(
        "import numpy as np\n"
        "import swa\n"
        "r = swa.recalibrate('m.onnx', {'w': np.zeros(3)}, batches=[np.zeros((2, 3))], stats='torch', output='o.onnx')\n"
        "n: int = r.samples\n"
        "t: float = swa.evaluate('m.onnx', batches=[], min_accuracy=0.9).top1\n"
        "swa.average(['a.safetensors', {'x': np.zeros(3)}], 'o.safetensors', from_=3)\n"
        "swa.recalibrate('m.onnx', stats='median')\n"
        "swa.recalibrate('m.onnx', batch_sise=3)\n"
    )
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", str(use)], capture_output=True, text=True)
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 2, r.stdout
    assert "use.py:7:" in errors[0] and "stats" in errors[0], r.stdout
    assert "use.py:8:" in errors[1] and 'did you mean "batch_size"' in errors[1], r.stdout


class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 10_000

    def __getitem__(self, i):
        import time
        time.sleep(0.01)
        return torch.randn(3, 16, 16)


def interrupt_after(seconds):
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_ctrl_c_stops_a_stuck_loader_at_once_and_shuts_a_dataloaders_workers_down(fixtures, tmp_path):
    import multiprocessing
    import time
    _, ck = cnn_model(fixtures)
    onnx = os.path.join(fixtures, "cnn", "model.onnx")

    def stuck():
        yield torch.randn(64, 3, 16, 16)
        time.sleep(60)
        yield torch.randn(64, 3, 16, 16)

    interrupt_after(1.0)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        swa.recalibrate(onnx, ck, batches=stuck(), output=tmp_path / "o.onnx", quiet=True)
    assert time.monotonic() - started < 5, "KeyboardInterrupt waited for the loader"
    loader = DataLoader(Slow(), batch_size=32, num_workers=2)
    interrupt_after(2.0)
    with pytest.raises(KeyboardInterrupt):
        swa.recalibrate(onnx, ck, batches=loader, output=tmp_path / "o.onnx", quiet=True)
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert multiprocessing.active_children() == []
    assert os.listdir(tmp_path) == []


def test_results_and_errors_pickle_and_copy(fixtures, tmp_path):
    import copy
    import pickle
    r = swa.inspect(os.path.join(fixtures, "cnn", "model.onnx"))
    for again in (pickle.loads(pickle.dumps(r)), copy.copy(r), copy.deepcopy(r)):
        assert again == r and type(again) is type(r) and again.file == r.file
    e = swa.BatchError("m", path="<batches>", batch="3")
    back = pickle.loads(pickle.dumps(e))
    assert (type(back), back.message, back.batch, back.path) == (swa.BatchError, "m", 3, "<batches>")
    g = pickle.loads(pickle.dumps(swa.GateFailed("below", r)))
    assert g.result == r and str(g) == "below"
    assert swa.BatchError.__module__ == "swa"


def test_batches_in_every_documented_shape_and_integer_type(fixtures, tmp_path):
    torch.manual_seed(1)
    two = TwoInputs()
    export(two, (torch.zeros(2, 3, 8, 8), torch.zeros(2, 1)), str(tmp_path / "two.onnx"), ["image", "feature"])
    images, features, y = torch.randn(64, 3, 8, 8), torch.randn(64, 1), torch.randint(0, 5, (64,))
    out = {}
    for name, batches in {
        "dicts": [{"image": images[i:i + 32], "feature": features[i:i + 32]} for i in (0, 32)],
        "flat tuples": DataLoader(TensorDataset(images, features, y), batch_size=32),
        "nested": [((images[i:i + 32], features[i:i + 32]), y[i:i + 32]) for i in (0, 32)],
    }.items():
        swa.recalibrate(tmp_path / "two.onnx", two.state_dict(), batches=batches, stats="torch",
                        output=tmp_path / "o.onnx", save_weights=tmp_path / f"{name}.safetensors", quiet=True)
        out[name] = load_file(tmp_path / f"{name}.safetensors")
        os.remove(tmp_path / "o.onnx")
    assert all(torch.equal(out["dicts"][k], out[n][k]) for n in out for k in out["dicts"])
    ev = swa.evaluate(tmp_path / "two.onnx", two.state_dict(), batches=DataLoader(TensorDataset(images, features, y),
                      batch_size=16), top_k=3, quiet=True)
    assert ev.samples == 64
    # numpy scalars as keyword values
    ev = swa.evaluate(os.path.join(fixtures, "cnn", "model.onnx"), inputs=os.path.join(fixtures, "cnn", "eval.npy"),
                      labels=os.path.join(fixtures, "cnn", "eval_labels.npy"), batch_size=np.int64(100), quiet=True)
    assert ev.samples == 300
    # token ids of any integer type
    text = TextNet()
    export(text, (torch.zeros(2, 12, dtype=torch.long),), str(tmp_path / "text.onnx"), ["input_ids"])
    ids = np.random.default_rng(0).integers(0, 50, (32, 12))
    for dtype in (np.int64, np.int32, np.uint16, np.uint8):
        r = swa.recalibrate(tmp_path / "text.onnx", text.state_dict(), batches=[ids.astype(dtype)],
                            output=tmp_path / f"t_{dtype.__name__}.onnx", quiet=True)
        assert r.samples == 32 and r.batch_size == 32


def test_state_dicts_are_named_by_position_in_results(fixtures, tmp_path):
    dicts = [load_file(os.path.join(fixtures, "cnn", "checkpoints", f"epoch_{e:03d}.safetensors")) for e in (6, 7, 8)]
    r = swa.average(dicts, tmp_path / "swa.safetensors", from_=2, quiet=True)
    assert [i.path for i in r.inputs] == ["checkpoints[1] (a state dict)", "checkpoints[2] (a state dict)"]
    assert "swa-state-dicts-" not in json.dumps(r.to_dict())


def test_a_batch_that_fails_in_the_model_names_its_index(fixtures, tmp_path):
    from make_fixtures import MLP
    ck = os.path.join(fixtures, "mlp", "checkpoints", "epoch_006.safetensors")
    x = torch.randn(65, 32)
    with pytest.raises(swa.NodeError) as e:
        swa.recalibrate(os.path.join(fixtures, "mlp", "model.onnx"), ck, batches=[x[:64], x[64:]], stats="torch",
                        output=tmp_path / "o.onnx", quiet=True)
    assert e.value.batch == 1 and "batch 2 has 1 value per channel" in str(e.value), e.value
    assert "drop_last=True" in str(e.value) and "batch_size=" not in str(e.value), e.value
