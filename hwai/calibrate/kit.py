"""Calibration kits: the ONNX models calibration measures, with a manifest (kit.json) that tells the measuring
script which ONNX node every profiled kernel comes from and that node's attributes (kernel size, stride,
groups, channels: ONNX Runtime's profiler does not report them for prepacked weights).

`write_kit` writes a kit folder (`hwai calibrate --export-kit DIR` adds the standalone measuring script and
a README, for devices hwai cannot run on); `import_measurements` checks a measurement file and stores it next
to a target's YAML file (`hwai calibrate --from FILE`).
"""
from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

from hwai.calibrate.cases import Case, exported
from hwai.errors import UserError
from hwai.measure import ort_trace

ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "Add", "Sum")


def manifest(onnx_model: bytes) -> tuple[dict, dict]:
    """(aliases, nodes) of a model: every ONNX node and output tensor name -> the node whose attributes a kernel
    named after it has (an activation or Add right after a conv -> that conv: runtimes fuse them); nodes: name ->
    {k, stride, groups, cin, cout} of convs and pools."""
    import onnx
    from onnx import helper

    proto = onnx.load_from_string(onnx_model)
    inits = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    made_by: dict[str, str] = {}  # tensor -> the non-Q/DQ node behind it (through QuantizeLinear / DequantizeLinear)
    weight_of: dict[str, tuple] = {}  # DequantizeLinear output of an initializer -> its dims
    nodes, aliases = {}, {}
    for i, n in enumerate(proto.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if n.input[0] in inits:
                weight_of[n.output[0]] = inits[n.input[0]]
            elif n.input[0] in made_by:
                made_by[n.output[0]] = made_by[n.input[0]]
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        owner = name
        if n.op_type == "Conv":
            w = inits.get(n.input[1]) or weight_of.get(n.input[1])
            if w and len(w) == 4:
                groups = int(attrs.get("group", 1))
                nodes[name] = {"k": [int(w[2]), int(w[3])], "stride": int((attrs.get("strides") or [1])[0]),
                               "groups": groups, "cin": int(w[1]) * groups, "cout": int(w[0])}
        elif n.op_type in ("MaxPool", "AveragePool"):
            nodes[name] = {"k": [int(d) for d in attrs.get("kernel_shape", [1, 1])][:2],
                           "stride": int((attrs.get("strides") or [1])[0])}
        elif n.op_type in ACTIVATIONS:
            src = next((made_by.get(x) for x in n.input if made_by.get(x) in nodes), None)
            owner = src or name
        aliases[name] = owner
        for out in n.output:
            made_by[out] = owner
            aliases[out] = owner
    return aliases, nodes


def write_kit(cases: list[Case], folder: Path, progress=lambda label: None) -> Path:
    """Export every case to `folder` (ONNX files + kit.json); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = []
    for i, case in enumerate(cases):
        progress(f"export {case.label}")
        onnx_model, inputs = exported(case)
        file = f"{i:04d}.onnx"
        (folder / file).write_bytes(onnx_model)
        aliases, nodes = manifest(onnx_model)
        models.append({"file": file, "case": case.label, "family": case.family, "dtype": case.dtype,
                       "input": list(inputs[0][1]), "inputs": [[name, list(shape)] for name, shape in inputs],
                       "aliases": aliases, "nodes": nodes})
    spec = {"format": ort_trace.KIT_FORMAT, "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "models": models}
    (folder / "kit.json").write_text(json.dumps(spec))
    return folder


README = """hwai calibration kit: {n} ONNX models (zoo and random networks, FP32 and INT8 QDQ) and kit.json.

On the device (Python 3.9+ with numpy and onnxruntime, nothing else):

    python3 measure_kernels.py . --out measurements.csv --threads N

N: the intra-op threads your application will use. It takes a few minutes (three passes over all models)
and prints its progress. Copy measurements.csv back and run:

    hwai calibrate --from measurements.csv --target NAME

hwai then predicts NAME's latency with a kernel model learned from these measurements.
"""


def export_kit(cases: list[Case], folder: Path, progress=lambda label: None) -> Path:
    """A kit for a device: the models, kit.json, the standalone measuring script and a README."""
    folder = Path(folder).expanduser()
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} is not empty; --export-kit needs a new or empty folder")
    write_kit(cases, folder, progress)
    shutil.copyfile(ort_trace.__file__, folder / "measure_kernels.py")
    (folder / "README.txt").write_text(README.format(n=len(cases)))
    return folder


def import_measurements(source: Path, target_name: str) -> tuple[Path, object]:
    """Validate a measurement file and store it next to the YAML file of `target_name` in the user target
    folder (copying the catalog's YAML there when the target has none yet). Returns (stored path, Measurements)."""
    from hwai import targets
    from hwai.cost import measurements

    source = Path(source).expanduser()
    if not source.is_file():
        raise UserError(f"{source} does not exist; pass the CSV written by measure_kernels.py")
    meas = measurements.read(source)
    target = targets.load(target_name)
    yaml_path = Path(target.path)
    user = targets.user_dir()
    if yaml_path.parent.resolve() != user.resolve() and yaml_path.parent == Path(targets.__file__).parent:
        user.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(yaml_path, user / yaml_path.name)
        yaml_path = user / yaml_path.name
    dest = measurements.path_for(yaml_path, meas.threads or None)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(dest)
    return dest, meas
