import subprocess
import sys

import pytest
import torch

torch.set_num_threads(2)


def run_cli(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m hwai ARGS` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "hwai", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def digits():
    from hwai import data

    return data.load("digits")
