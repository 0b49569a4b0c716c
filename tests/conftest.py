import os
import subprocess
import sys
import tempfile

import pytest

# OpenMP workers (torch's, scikit-learn's) wait passively: set before torch loads its OpenMP runtime, and inherited
# by every `python -m hwai` the tests start. With the default spin-wait, on 2 cores other processes also use, a
# worker spins while the one it waits for is descheduled (measured 2026-12-06 at load ~3: test_fuse's mobilenetv2
# case 11.8 s wall, 10.7 s CPU -> 2.5 s, 2.1 s); results do not depend on it. A policy set by the caller wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import torch

# 2 threads, in one process and in each pytest-xdist worker alike: the session's trained models (and the tests'
# tolerances around them) depend on the thread count (measured: at 1 thread the resnet8 fixture's INT4 export agreed
# with PyTorch on 62 of 64 inputs, below verified()'s 97%)
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
