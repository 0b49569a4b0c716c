import subprocess
import sys


def test_import_hwai_is_lean():
    code = ("import sys, hwai; heavy = [m for m in ('torch', 'onnxruntime', 'optuna', 'onnx', 'plotly') "
            "if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import hwai pulled in: {out}"


def test_lazy_attributes_resolve():
    import hwai

    assert hwai.UserError.__name__ == "UserError"
    assert callable(hwai.models.create)
