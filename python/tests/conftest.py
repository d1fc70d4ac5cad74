"""pytest against the installed wheel (`.ci/wheel` installs it; `pip install swa-tool` and
`pip install torch torchvision onnx numpy pytest datasets` locally). Paths are from the repository."""

import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "fixtures")
sys.path.insert(0, FIXTURES)  # the fixtures' model classes (make_fixtures.py)


@pytest.fixture
def fixtures():
    return FIXTURES
