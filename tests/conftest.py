import os
import subprocess
import sys
import tempfile

import pytest
import torch

torch.set_num_threads(2)
# A user's own ~/.config/hwai/targets (e.g. a calibrated or broken host.yaml) must not change what the tests
# test: every test, and every CLI it starts, sees an empty user target folder of its own.
os.environ["HWAI_TARGET_DIR"] = tempfile.mkdtemp(prefix="hwai-test-targets-")


def run_cli(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m hwai ARGS` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "hwai", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def digits():
    from hwai import data

    return data.load("digits")


@pytest.fixture(scope="session")
def _resnet8_on_digits(digits):
    from hwai import models, train

    train.seed_everything(0)
    model = models.create("resnet8", 10, 1, 8, width=0.5)
    train.train(model, digits, train.TrainConfig(epochs=3, augment=False), progress=False)
    return model.eval()


@pytest.fixture
def trained_resnet8(_resnet8_on_digits):
    """A resnet8 (width 0.5) trained 3 epochs on digits; each test gets its own copy."""
    import copy

    return copy.deepcopy(_resnet8_on_digits)
