"""The command line, called in-process: help, info, phantom, and one-line errors with exit codes."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from covidct.cli import main
from covidct.errors import EXIT_CODES
from covidct.phantom import make_phantom, write_phantom

SMALL = dict(shape=(12, 96, 96), spacing=(6.0, 3.2, 3.2))


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory) -> Path:
    return write_phantom(make_phantom(seed=0, **SMALL), tmp_path_factory.mktemp("cli"), fmt="dicom")


def test_help_teaches(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("demo", "info", "analyze", "phantom", "Exit codes"):
        assert word in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert "covidct" in capsys.readouterr().out


def test_info_dicom_json(dicom_folder, capsys):
    assert main(["info", str(dicom_folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "dicom" and info["modality"] == "CT"
    assert info["shape_zyx"] == [12, 96, 96]
    assert info["spacing_mm_zyx"] == [6.0, 3.2, 3.2]
    assert info["intensities"] == "HU" and info["value_range"][0] < -900
    assert info["slice_order"].startswith("increasing")
    assert len(info["study_date"]) == 10 and info["study_date"][4] == "-"  # the phantom writer's StudyDate, ISO


def test_info_zip_same_as_folder(dicom_folder, tmp_path, capsys):
    z = tmp_path / "series.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in dicom_folder.iterdir():
            zf.write(f, f"series/{f.name}")
    assert main(["info", str(dicom_folder), "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["info", str(z), "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    for key in ("shape_zyx", "spacing_mm_zyx", "value_range", "series_uid"):
        assert a[key] == b[key]


def test_info_table_and_image(tmp_path, capsys):
    from PIL import Image

    p = tmp_path / "slice.png"
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = np.arange(30, dtype=np.uint8)[None, :, None] * 8  # a grey ramp (a blank image is refused)
    rgba[..., 3] = 255
    Image.fromarray(rgba, "RGBA").save(p)
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "image" in out and "8-bit display" in out


def test_phantom_command(tmp_path, capsys):
    assert main(["phantom", "-o", str(tmp_path / "ph"), "--slices", "8", "--size", "64"]) == 0
    img = nib.load(tmp_path / "ph" / "phantom.nii.gz")
    assert img.shape == (64, 64, 8)
    assert main(["phantom", "-o", str(tmp_path / "d"), "--format", "bogus"]) == 64


def _mr_file(path: Path) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.SeriesInstanceUID = ds.StudyInstanceUID = generate_uid()
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.PixelSpacing = [1, 1]
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


BAD_INPUTS = {
    "nonexistent": (lambda d: d / "nope.dcm", "UnreadableInput"),
    "empty folder": (lambda d: (d / "empty").mkdir() or d / "empty", "UnreadableInput"),
    "zero-byte file": (lambda d: (d / "zero.nii.gz").write_bytes(b"") and None or d / "zero.nii.gz", "UnreadableInput"),
    "text renamed png": (lambda d: (d / "fake.png").write_text("hello") and None or d / "fake.png", "UnreadableInput"),
    "MR DICOM": (lambda d: _mr_file(d / "mr.dcm"), "NotCT"),
    "4-D NIfTI": (
        lambda d: nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), d / "t.nii.gz") or d / "t.nii.gz",
        "UnsupportedInput",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_one_line_error(case, tmp_path, capsys):
    make, error = BAD_INPUTS[case]
    path = make(tmp_path)
    code = main(["info", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_CODES[error] != 0
    assert err.startswith("covidct: error:") and "\n" not in err and "Traceback" not in err


def test_truncated_dicom_and_mixed_sizes(dicom_folder, tmp_path, capsys):
    files = sorted(dicom_folder.iterdir())
    trunc = tmp_path / "trunc.dcm"
    trunc.write_bytes(files[0].read_bytes()[:400])
    assert main(["info", str(trunc)]) == EXIT_CODES["UnreadableInput"]
    assert capsys.readouterr().err.count("\n") == 1


def test_unreadable_file(tmp_path, capsys):
    p = tmp_path / "secret.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), p)
    os.chmod(p, 0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        assert main(["info", str(p)]) == EXIT_CODES["UnreadableInput"]
    finally:
        os.chmod(p, 0o644)


def test_analyze_bad_input_same_error(tmp_path, capsys):
    code = main(["analyze", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    assert code == EXIT_CODES["UnreadableInput"]
    assert not (tmp_path / "out").exists()
    assert capsys.readouterr().err.startswith("covidct: error:")


def test_unknown_command_is_usage_error(capsys):
    assert main(["frobnicate"]) == 64


def test_console_entry_point_exit_code_and_flushed_output(tmp_path):
    """``python -m covidct`` goes through ``run()`` (main, then a fast exit): output flushed, code kept."""
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "covidct", "--help"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "analyze" in ok.stdout and "Exit codes" in ok.stdout  # all of it, flushed
    bad = subprocess.run([sys.executable, "-m", "covidct", "analyze", str(tmp_path / "missing"), "-o", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == EXIT_CODES["UnreadableInput"]
    assert bad.stderr.strip().splitlines()[-1].startswith("covidct: error:") and not (tmp_path / "o").exists()


def test_help_imports_no_numpy_or_rich():
    """`covidct --help` lists every command without importing numpy or rich's help formatting (a tenth of a second
    or more each at every call)."""
    import subprocess
    import sys

    probe = ("import sys\nfrom covidct.cli import main\ncode = main(['--help'])\n"
             "print(code, 'numpy' in sys.modules, 'typer.rich_utils' in sys.modules, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "analyze" in out.stdout and "Exit codes" in out.stdout, out.stdout[-2000:]
    assert out.stderr.split()[-3:] == ["0", "False", "False"], out.stderr[-2000:]


def test_console_entry_point_turns_off_numpy_huge_pages():
    """The command sets NUMPY_MADVISE_HUGEPAGE=0 before numpy is imported (faster first touches, less memory);
    a value the user set is kept."""
    import subprocess
    import sys

    # the CLI replaced by a probe that imports numpy and prints the setting numpy started with (returned by its
    # private setter) and the variable
    probe = ("import os, sys, types\n"
             "def probe():\n"
             "    import numpy\n"
             "    print(os.environ['NUMPY_MADVISE_HUGEPAGE'], numpy._core.multiarray._set_madvise_hugepage(True))\n"
             "sys.modules['covidct.cli'] = types.SimpleNamespace(run=probe)\n"
             "import covidct.entry\ncovidct.entry.run()\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.split() == ["0", "False"], out.stderr
    kept = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env=env | {"NUMPY_MADVISE_HUGEPAGE": "1"})
    assert kept.stdout.split() == ["1", "True"], kept.stderr


def test_interrupted_training_says_how_to_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C after a checkpoint: one line with the exact command that continues the run (overrides kept);
    before any checkpoint: just "interrupted"."""
    import covidct.interrupts
    import covidct.train

    config = Path(__file__).resolve().parents[1] / "configs" / "unet3d_phantom.yaml"
    monkeypatch.setattr(covidct.interrupts, "_interrupt_hint", [])

    def interrupted_after_a_checkpoint(config, run_dir, **kw):
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / "last.pt").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(covidct.train, "train", interrupted_after_a_checkpoint)
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run), "--set", "train.epochs=3"]) == 130
    assert capsys.readouterr().err.strip() == (f"covidct: interrupted; continue the run with: covidct train {config} "
                                               f"--run-dir {run} --set train.epochs=3 --resume")

    def interrupted_at_once(config, run_dir, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(covidct.interrupts, "_interrupt_hint", [])
    monkeypatch.setattr(covidct.train, "train", interrupted_at_once)
    assert main(["train", str(config), "--run-dir", str(tmp_path / "other")]) == 130
    assert capsys.readouterr().err.strip() == "covidct: interrupted"
