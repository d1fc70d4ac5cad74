# %% [markdown]
# # SWA from Python, fed by your own DataLoader
#
# Nothing is trained here: the repository's fixtures hold eight epoch checkpoints of a small
# residual CNN (`fixtures/cnn/checkpoints`), its ONNX export (`fixtures/cnn/model.onnx`, with its
# BatchNorm layers kept), and a few images (`fixtures/images`). We average the last epochs,
# refit the BatchNorm statistics from a torchvision DataLoader with our own transform, evaluate,
# and load the result back into the PyTorch model.
#
#     pip install swa-tool torch torchvision safetensors
#     python examples/python/swa_from_python.py          # or run it cell by cell

# %%
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
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
# Any iterable of batches works: here torchvision's ImageFolder with our own transform. Labels are
# ignored (the first element of each batch is the input, as `update_bn` takes it).
# `stats="torch"` gives what `torch.optim.swa_utils.update_bn(loader, model)` would.

# %%
transform = transforms.Compose([
    transforms.Resize(20),
    transforms.CenterCrop(16),
    transforms.ToTensor(),
    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
])
images = datasets.ImageFolder(os.path.join(FIXTURES, "images", "val"), transform=transform)
loader = DataLoader(images, batch_size=4, shuffle=False)
rec = swa.recalibrate(
    os.path.join(FIXTURES, "cnn", "model.onnx"),
    avg.outputs[0],
    batches=loader,
    stats="torch",
    output=os.path.join(out, "model_swa.onnx"),
    save_weights=os.path.join(out, "swa_bn.safetensors"),
)
print(f"refitted {len(rec.layers)} BatchNorm layers on {rec.samples} samples in {rec.batches} batches")

# %% [markdown]
# ## 3. Evaluate from a loader of `(inputs, labels)`

# %%
ev = swa.evaluate(os.path.join(out, "model_swa.onnx"), batches=loader)
print(f"top-1 {ev.top1:.3f} on {ev.samples} samples, loss {ev.loss:.3f}")

# %% [markdown]
# ## 4. Load the result back into the PyTorch model
# The saved weights use the checkpoint's own names: `load_state_dict` takes them as they are.

# %%
model = ResCNN()
model.load_state_dict(load_file(os.path.join(out, "swa_bn.safetensors")))
model.eval()
x, _ = next(iter(loader))
with torch.no_grad():
    ours = model(x).numpy()
onnx_out = ort.InferenceSession(os.path.join(out, "model_swa.onnx")).run(None, {"input": x.numpy()})[0]
print("PyTorch and the ONNX model agree:", np.allclose(ours, onnx_out, atol=1e-4))
assert np.allclose(ours, onnx_out, atol=1e-4)
