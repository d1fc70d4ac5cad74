# %% [markdown]
# # SWA from Python, fed by your own DataLoader
#
# Nothing is trained here: the repository's fixtures hold eight epoch checkpoints of a small
# residual CNN (`fixtures/cnn/checkpoints`), its ONNX export (`fixtures/cnn/model.onnx`, with its
# BatchNorm layers kept) and its training and held-out samples. We write the training samples as
# PNG files in an image folder, as a dataset on disk would be, and then do what a user does after
# training: average the last epochs, refit the BatchNorm statistics from a torchvision
# DataLoader over that folder with our own transform, evaluate, and load the result back into
# the PyTorch model.
#
#     pip install .  torch torchvision safetensors        # from the checkout (swa-tool once on PyPI)
#     python examples/python/swa_from_python.py          # or run it cell by cell

# %%
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset
from torchvision import datasets, transforms

import swa

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "fixtures")
sys.path.insert(0, FIXTURES)
from make_fixtures import ResCNN  # noqa: E402  (the model the checkpoints belong to)

out = tempfile.mkdtemp(prefix="swa-example-")

# %% [markdown]
# ## 1. Average the checkpoints of epochs 4 to 8
# Keywords are the command's flags: `--from 4` is `from_=4` (`from` is a Python keyword).

# %%
avg = swa.average([os.path.join(FIXTURES, "cnn", "checkpoints")], os.path.join(out, "swa.safetensors"), from_=4)
print(f"averaged {avg.n_models} checkpoints:", [os.path.basename(i.path) for i in avg.inputs])

# %% [markdown]
# ## 2. Refit BatchNorm from your own DataLoader
# The training samples, as an image folder: each (3, 16, 16) sample stored as an 8-bit PNG at
# 32 levels per unit around 128, which our transform maps back (ToTensor, then Normalize).

# %%
train = np.load(os.path.join(FIXTURES, "cnn", "train.npy"))
folder = os.path.join(out, "train", "all")  # ImageFolder wants class folders; labels are not used
os.makedirs(folder)
for k, x in enumerate(train):
    pixels = np.clip(np.round(x * 32 + 128), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    Image.fromarray(pixels).save(os.path.join(folder, f"{k:04d}.png"))

transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize([128 / 255] * 3, [32 / 255] * 3)])
train_loader = DataLoader(datasets.ImageFolder(os.path.join(out, "train"), transform=transform), batch_size=64)

# %% [markdown]
# Any iterable of batches works: here `(images, labels)` pairs, whose first element is the input
# (as `update_bn` takes it). `stats="torch"` gives what
# `torch.optim.swa_utils.update_bn(train_loader, model)` would; the default, `"precise"`, pools
# every sample's values (PreciseBN) and does not depend on how they are batched.

# %%
rec = swa.recalibrate(
    os.path.join(FIXTURES, "cnn", "model.onnx"),
    avg.outputs[0],
    batches=train_loader,
    stats="torch",
    output=os.path.join(out, "model_swa.onnx"),
    save_weights=os.path.join(out, "swa_bn.safetensors"),
)
print(f"refitted {len(rec.layers)} BatchNorm layers on {rec.samples} samples in {rec.batches} batches of {rec.batch_size}")

# %% [markdown]
# ## 3. Evaluate from a loader of `(inputs, labels)`
# The averaged weights with the statistics they were saved with (the newest checkpoint's), then
# with the refitted ones.

# %%
x, y = (torch.from_numpy(np.load(os.path.join(FIXTURES, "cnn", f))) for f in ("eval.npy", "eval_labels.npy"))
eval_loader = DataLoader(TensorDataset(x, y), batch_size=100)
stored = swa.evaluate(os.path.join(FIXTURES, "cnn", "model.onnx"), avg.outputs[0], batches=eval_loader)
refit = swa.evaluate(os.path.join(out, "model_swa.onnx"), batches=eval_loader)
print(f"top-1 on {refit.samples} held-out samples: {stored.top1:.3f} with stored statistics, "
      f"{refit.top1:.3f} refitted (loss {stored.loss:.3f} -> {refit.loss:.3f})")

# %% [markdown]
# ## 4. Load the result back into the PyTorch model
# The saved weights use the checkpoint's own names: `load_state_dict` takes them as they are.

# %%
model = ResCNN()
state = model.state_dict()  # as docs/guide.md, section 5, loads a checkpoint
state.update(load_file(os.path.join(out, "swa_bn.safetensors")))
model.load_state_dict(state)
model.eval()
with torch.no_grad():
    ours = model(x[:8]).numpy()
onnx_out = ort.InferenceSession(os.path.join(out, "model_swa.onnx")).run(None, {"input": x[:8].numpy()})[0]
print("PyTorch and the ONNX model agree:", np.allclose(ours, onnx_out, atol=1e-4))
assert np.allclose(ours, onnx_out, atol=1e-4)
