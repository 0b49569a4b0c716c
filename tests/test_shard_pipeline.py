import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hwai import graph, models
from hwai.shard import link
from hwai.shard.plan import Device, Planner, cut_positions
from hwai.shard.split import split
from hwai.targets import load as load_target
from tests.conftest import run_cli
from tests.test_shard_plan import skipnet_file  # noqa: F401  (fixture)


def _pipe_crossings(pipe) -> list[int]:
    """Tensors passed from stages <= k to stages > k, for each boundary k of a Pipe's root graph."""
    stage = {}
    for n in pipe.split_gm.graph.nodes:
        if n.op == "placeholder":
            stage[n] = -1
        elif n.op == "call_module":
            stage[n] = int(str(n.target).rsplit("_", 1)[1])
        elif n.op == "call_function":
            stage[n] = stage[n.args[0]]  # getitem of a stage's outputs
    counts = []
    for k in range(pipe.num_stages - 1):
        counts.append(sum(1 for v, s in stage.items() if s <= k and any(
            u.op == "call_module" and stage[u] > k for u in v.users)))
    return counts


def _every_cut_reproduces(model, x):
    """All legal cuts at once: one stage per layer boundary; outputs equal, crossings as planned."""
    model.eval()
    g = graph.capture(model, x[:1])
    planner = Planner(g, [Device(load_target("host"))] * 2, [link.load("loopback")])
    inner = cut_positions(g)[1:-1]
    pipe = split(model, g, inner, x)
    assert pipe.num_stages == len(inner) + 1
    with torch.no_grad():
        out = pipe(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        assert (out - model(x)).abs().max().item() <= 1e-5
    assert _pipe_crossings(pipe) == [len(planner.crossing(k)) for k in inner]
    return [len(planner.crossing(k)) for k in inner]


def test_every_legal_cut_of_resnet8_reproduces_the_outputs():
    torch.manual_seed(0)
    model = models.create("resnet8", 10, 3, 16, width=0.5)
    crossings = _every_cut_reproduces(model, torch.randn(4, 3, 16, 16))
    assert max(crossings) == 2  # inside a residual block: the branch and the shortcut


def test_every_legal_cut_of_a_user_net_with_skips_reproduces_the_outputs(skipnet_file):  # noqa: F811
    torch.manual_seed(0)
    model = models.create(f"{skipnet_file}:factory", 10, 1, 16)
    crossings = _every_cut_reproduces(model, torch.randn(4, 1, 16, 16))
    assert max(crossings) >= 3


def test_pipeline_processes_reproduce_the_model_and_measure(tmp_path, skipnet_file):  # noqa: F811
    out = tmp_path / "run [1].json"
    r = run_cli("shard", "run", "--model", f"{skipnet_file}:factory", "--data", "digits", "--input-size", "16",
                "--targets", "esp32s3,rpi4", "--link", "ble", "--cut", "a", "--batch", "8", "--microbatches", "2",
                "--repeats", "2", "--warmup", "1", "--timeout-s", "60", "--json", out, timeout=400)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert res["parity_ok"] and res["max_abs_delta"] <= 1e-5
    assert [s["device"] for s in res["stages"]] == ["esp32s3", "rpi4"] and res["option"]["cut_after"] == ["relu_1"]  # the layer a+relu ends there
    hop = res["hops"][0]
    assert len(hop["tensors"]) == 3  # input, x and the branch cross the cut after `a`
    assert hop["received_bytes"] == hop["bytes_per_microbatch"] == 4 * 4 * (2 * 8 * 16 * 16 + 16 * 16)
    for s in res["stages"]:
        assert s["measured"]["samples"] == 2 * 2 and s["measured"]["median_ms"] > 0 and s["predicted_host_ms"] > 0
        alone = s["measured_alone"]  # each stage by itself: repeats x micro-batches calls
        assert alone["samples"] == 2 * 2 and alone["median_ms"] > 0
        assert s["error_alone"] == pytest.approx(alone["median_ms"] / s["predicted_host_ms"] - 1)
    assert res["max_stage_error_alone"] == pytest.approx(max(abs(s["error_alone"]) for s in res["stages"]))
    assert "stage times within" in r.stdout and "timed alone" in r.stdout and "max |delta|" in r.stdout


def _children(pid: int) -> dict[int, int]:
    """rank -> pid of a launcher's rank processes."""
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    ranks = {}
    for kid in map(int, kids):
        env = Path(f"/proc/{kid}/environ").read_bytes().split(b"\0")
        ranks[int(next(e for e in env if e.startswith(b"RANK=")).split(b"=")[1])] = kid
    return ranks


def test_a_killed_stage_stops_the_run_with_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "hwai", "shard", "run", "--model", "cnn", "--width", "0.25",
                             "--data", "digits", "--targets", "host,host", "--link", "loopback", "--batch", "4",
                             "--microbatches", "2", "--repeats", "1000000", "--timeout-s", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        line = ""
        while "pipeline:" not in line and time.monotonic() < deadline:  # the stages are built and stepping
            line = proc.stdout.readline()
            assert line or proc.poll() is None, proc.stderr.read()
        ranks = _children(proc.pid)
        assert sorted(ranks) == [0, 1]
        time.sleep(1.0)
        os.kill(ranks[1], signal.SIGKILL)
        start = time.monotonic()
        _, err = proc.communicate(timeout=15)
        assert time.monotonic() - start < 15
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hwai: error: rank 1 of 2") and "SIGKILL" in lines[0] and "rank 0" in lines[0]
    assert not Path(f"/proc/{ranks[0]}").exists()  # the surviving stage was stopped and reaped


@pytest.mark.slow
def test_multi_machine_form_with_torchrun_rendezvous(tmp_path):
    """Two torchrun 'nodes' on this machine meet through c10d rendezvous, as two machines would."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run.json"
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "hwai-test",
            "-m", "hwai", "shard", "run", "--model", "resnet8", "--width", "0.5", "--data", "digits",
            "--input-size", "16", "--targets", "host,host", "--link", "loopback", "--batch", "8", "--repeats", "2",
            "--json", str(out)]
    procs = [subprocess.Popen(node, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    res = json.loads(out.read_text())
    assert res["parity_ok"] and len(res["stages"]) == 2


class _Branchy(torch.nn.Module):
    """Control flow on a shape: torch.fx cannot trace it (captured with module hooks), torch.export can."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        if x.dim() == 3:
            x = x.unsqueeze(1)
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


def test_a_model_torch_fx_cannot_trace_is_cut_at_module_boundaries():
    torch.manual_seed(0)
    model, x = _Branchy().eval(), torch.randn(4, 1, 8, 8)
    g = graph.capture(model, x[:1])
    assert g.method == "hooks"
    inner = cut_positions(g)[1:-1]
    assert [g.nodes[k - 1].name for k in inner] == ["act", "pool"]  # conv+relu stay together
    pipe = split(model, g, inner, x)
    with torch.no_grad():
        out = pipe(x)
        out = out[0] if isinstance(out, (tuple, list)) else out
        assert pipe.num_stages == 3 and (out - model(x)).abs().max().item() <= 1e-5
