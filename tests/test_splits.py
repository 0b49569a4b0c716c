"""The test split is read once, after the final choice, in every command that chooses: optimize, compress (every
--runtime), nas and snn. A spy on the data loader (DataBundle.split, which batches and example go through) records
the order in which splits are read and choices are made; a read of the test split before the last choice fails."""
import importlib

import pytest

from hwai.data import DataBundle


@pytest.fixture(autouse=True)
def one_thread():
    """These tests count reads, not time: one thread is far faster for tiny models on a busy machine (a tiny
    NAS run took 15 minutes at 2 threads under load, 20 s at 1)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Events(list):
    mark = None  # set by the fixture: mark(module, name, before=False)


@pytest.fixture
def reads(monkeypatch):
    """The splits read, in order, with "choice" wherever a test marks a decision (`mark(module, name)`)."""
    events = Events()
    split = DataBundle.split

    def spy(self, name):
        events.append(name)
        return split(self, name)

    monkeypatch.setattr(DataBundle, "split", spy)

    def mark(module, name, before=False):
        """`module.name` marks a choice when it returns (or, `before`, when it is called)."""
        real = getattr(module, name)

        def marked(*a, **k):
            if before:
                events.append("choice")
            out = real(*a, **k)
            if not before:
                events.append("choice")
            return out

        monkeypatch.setattr(module, name, marked)

    events.mark = mark
    return events


def _after_the_last_choice(events: list[str], tests: int) -> None:
    last = max(i for i, e in enumerate(events) if e == "choice")
    assert "val" in events[:last], "decisions read the validation split"
    assert "test" not in events[:last], f"the test split was read before the final choice: {events[:last + 1]}"
    assert events.count("test") == tests, events


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "auto"])
def test_compress_reads_the_test_split_once_after_its_last_decision(runtime, reads, trained_resnet8, digits):
    from hwai.measure import MeasureConfig
    from hwai.runtimes import available
    from hwai.search import compress as hcompress
    from hwai.search.compress import CompressConfig, compress

    if runtime != "onnxruntime" and "openvino" not in available():
        pytest.skip("openvino is not installed")
    reads.mark(hcompress, "_verdict")
    quick = MeasureConfig(threads=1, warmup=2, min_repeats=5, max_repeats=30, max_seconds=0.2)
    cfg = CompressConfig(prune=0.25, finetune_epochs=0, quantize="int8", measure=quick, runtime=runtime)
    compress(trained_resnet8, digits, cfg, log=lambda s: None, progress=False)
    _after_the_last_choice(reads, tests=2)  # the original and the final artifact


def test_optimize_reads_the_test_split_once_after_the_choice(reads, tmp_path):
    from hwai.search import Constraints, OptimizeConfig, SpaceConfig, optimize
    from hwai.search import results as hresults

    reads.mark(hresults, "choose")
    space = SpaceConfig(widths=(0.5,), kernel_sizes=(3,), resolutions=(1.0,), prune_ratios=(0.0,), bits=(32,),
                        fuse=(False,), finetune_epochs=(1,), train_epochs=(1,))
    cfg = OptimizeConfig(model="mlp", data="digits", width=0.25, target=None, host_target=None, trials=1,
                         baseline_epochs=1, space=space, constraints=Constraints(max_accuracy_drop=0.5),
                         measure_seconds=0.1, threads=1)
    results = optimize(cfg, tmp_path / "run", progress=False)
    assert results["best"]["trial"] is not None
    _after_the_last_choice(reads, tests=2)  # the chosen model and the baseline


def test_nas_reads_the_test_split_once_after_the_choice(reads, tmp_path, monkeypatch):
    import torch

    from hwai.nas import search as nsearch
    from hwai.nas.run import NasConfig, nas
    from hwai.nas.search import SearchConfig
    from hwai.nas.space import NasSpace
    from hwai.nas.training import SupernetConfig

    tiny = NasSpace.for_family("resnet", resolutions=(8, 12), widths=(0.5, 1.0), depths=(1, 2),
                               stages=((16, 1), (24, 2)))
    monkeypatch.setattr(NasConfig, "space", property(lambda self: tiny))  # every stage, on a tiny supernet
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)  # tiny ever-changing convs: see tests/test_nas.py
    reads.mark(nsearch, "front_mask")  # the measured candidates' front, then the best of them
    cfg = NasConfig(data="digits", family="resnet", input_size=12, precision="fp32", subnets=8, candidates=1,
                    supernet=SupernetConfig(epochs=1), search=SearchConfig(trials=20), finetune_epochs=1,
                    measure_seconds=0.1)
    results = nas(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    assert results["best"]["candidate"] is not None
    _after_the_last_choice(reads, tests=1)


def _snn(*args: str) -> None:
    pytest.importorskip("snntorch")
    from typer.testing import CliRunner

    from hwai.cli import app

    r = CliRunner().invoke(app, ["snn", *args])
    assert r.exit_code == 0, r.output


def _snn_module(name: str):
    return importlib.import_module(f"hwai.snn.{name}")  # the module: hwai.snn exports functions of the same names


def test_snn_train_reads_the_test_split_only_once_trained(reads, tmp_path):
    reads.mark(_snn_module("profile"), "profile", before=True)  # the trained net is final when its profile starts
    _snn("train", "--model", "mlp", "--data", "digits", "--width", "0.25", "--epochs", "1", "--steps", "2",
         "--ann-target", "none", "--out", str(tmp_path / "t"))
    assert reads.index("choice") < reads.index("test"), f"the test split was read while training: {reads}"


def test_snn_convert_reads_the_test_split_after_choosing_thresholds(reads, tmp_path, trained_resnet8):
    from hwai import train
    from hwai.models import ModelSpec

    ann = train.save_checkpoint(tmp_path / "ann.pt", trained_resnet8, ModelSpec("resnet8", 10, 1, (8, 8), 0.5),
                                {"spec": "digits"})
    reads.mark(_snn_module("convert"), "converted")  # the last conversion is the chosen threshold percentile's
    _snn("convert", "--model", str(ann), "--data", "digits", "--steps", "2", "--percentiles", "99,100",
         "--calibration-samples", "64", "--ann-target", "none", "--out", str(tmp_path / "c"))
    last = max(i for i, e in enumerate(reads) if e == "choice")
    assert "test" not in reads[:last] and "val" in reads[:last], reads
