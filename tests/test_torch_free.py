"""Inference commands run on ONNX Runtime without importing torch or MONAI; the torch path stays as a fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covidct.phantom import make_phantom, write_phantom

SRC = Path(__file__).resolve().parents[1] / "src"
PHANTOM = dict(shape=(24, 128, 128), spacing=(5.0, 2.6, 2.6))

# Runs the CLI in a fresh interpreter, then reports which of the watched heavy modules it imported.
PROBE = """
import json, sys
from covidct.cli import main
codes = [main(args) for args in json.loads(sys.argv[1])]
heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2])})
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def _probe(commands: list[list[str]], runtime: str | None = None, watch: tuple[str, ...] = ("torch", "monai")) -> dict:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("COVIDCT_RUNTIME", None)
    if runtime:
        env["COVIDCT_RUNTIME"] = runtime
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands), json.dumps(watch)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory) -> Path:
    return write_phantom(make_phantom(seed=3, **PHANTOM), tmp_path_factory.mktemp("tf"), fmt="dicom")


def test_analyze_segment_refine_never_import_torch(phantom_dicom, tmp_path):
    from PIL import Image

    from covidct.io import load_ct

    ct = load_ct(phantom_dicom)
    png = tmp_path / "slice.png"
    mid = ct.array[len(ct.array) // 2]
    Image.fromarray(np.clip((mid + 1000) / 1400 * 255, 0, 255).astype(np.uint8)).save(png)
    result = _probe([
        ["analyze", str(phantom_dicom), "-o", str(tmp_path / "an")],
        ["segment", str(png), "-o", str(tmp_path / "seg"), "--task", "lungs"],
        ["refine", str(png), "--click", "40,60,pos", "-o", str(tmp_path / "ref.png")],
    ])
    assert result["codes"] == [0, 0, 0]
    assert result["heavy"] == [], f"inference imported {result['heavy']}"
    report = json.loads((tmp_path / "an" / "report.json").read_text())
    assert [m["name"] for m in report["models"]][:2] == ["lungs", "lesions"]
    assert (tmp_path / "seg" / "slice.png").is_file() and (tmp_path / "ref.png").is_file()


def test_one_shot_refine_of_a_slice_imports_no_scipy_nibabel_or_pydicom(tmp_path):
    """A one-shot `covidct refine` of a PNG slice needs ONNX Runtime, OpenCV and Pillow only: SciPy, nibabel and the
    pydicom nibabel brings are imported where a volume needs them (about half of the command's time on this host)."""
    from PIL import Image

    png = tmp_path / "slice.png"
    yy, xx = np.mgrid[:128, :128]
    Image.fromarray(np.where((yy - 64) ** 2 / 40**2 + (xx - 64) ** 2 / 55**2 < 1, 40, 200).astype(np.uint8)).save(png)
    result = _probe([["refine", str(png), "--click", "60,60,pos", "-o", str(tmp_path / "ref.png")]],
                    watch=("scipy", "nibabel", "pydicom", "torch", "monai"))
    assert result["codes"] == [0] and (tmp_path / "ref.png").is_file()
    assert result["heavy"] == [], f"one-shot refine imported {result['heavy']}"


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


@pytest.mark.slow
def test_torch_runtime_fallback_gives_the_same_masks(phantom_dicom, tmp_path):
    """COVIDCT_RUNTIME=torch runs the checkpoints (bf16 autocast, as analyze did before ONNX): nearly the same
    masks (bf16 rounding flips a few lesion-edge voxels; on this small phantom ~0.8 % of GGO)."""
    pytest.importorskip("torch")
    onnx = _probe([["analyze", str(phantom_dicom), "-o", str(tmp_path / "onnx")]])
    ref = _probe([["analyze", str(phantom_dicom), "-o", str(tmp_path / "torch")]], runtime="torch")
    assert onnx["codes"] == ref["codes"] == [0]
    assert "torch" in ref["heavy"]
    for name, classes in (("lungs", (1, 2)), ("lesions", (1, 2, 3))):
        a = np.asarray(nib.load(tmp_path / "onnx" / f"{name}.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / "torch" / f"{name}.nii.gz").dataobj)
        for c in classes:
            assert _dice(a == c, b == c) >= (0.995 if name == "lungs" else 0.98), (name, c, _dice(a == c, b == c))


@pytest.mark.slow
def test_onnx_masks_match_the_float32_torch_masks(phantom_dicom, monkeypatch):
    """The ONNX networks are the float32 checkpoints (lungs: its adopted int8 quantisation, see the card):
    analyze's masks match the torch float32 path's (on P001: identical in float32, Dice >= 0.996 with int8 lungs)."""
    pytest.importorskip("torch")
    from covidct.io import load_ct
    from covidct.pipeline import Analyzer

    ct = load_ct(phantom_dicom)
    onnx = Analyzer()(ct)
    assert all(m.info["runtime"] == "onnxruntime" for m in Analyzer().models.values() if m is not None)
    monkeypatch.setenv("COVIDCT_RUNTIME", "torch")
    torch_an = Analyzer(bf16=False)
    assert all(m.info["runtime"] == "torch" for m in torch_an.models.values() if m is not None)
    ref = torch_an(ct)
    for a, b, classes in ((onnx.lungs, ref.lungs, (1, 2)), (onnx.lesions, ref.lesions, (1, 2, 3))):
        for c in classes:
            assert _dice(a == c, b == c) >= 0.995, (c, _dice(a == c, b == c))


def test_missing_train_extra_is_one_clear_line(monkeypatch, capsys):
    """In a base install (no torch) a training-only command says which extra to install, exit 8."""
    import covidct.cli as cli

    def needs_torch(**_kw):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(cli, "_register_optional_commands", lambda: None)
    monkeypatch.setattr(cli, "app", needs_torch)
    assert cli.main(["train", "x.yaml"]) == 8
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'covidct[train]'" in err[0]
