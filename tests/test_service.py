"""The web service's API: upload → analysis → downloads, failures, restart, refinement, safety rules."""

from __future__ import annotations

import gzip
import io
import json
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest_refine_helpers import StandinClick as _Click
from conftest_refine_helpers import standin_refine as _standin_refine

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from covidct.report.heatmap import MODEL_ONLY_NOTE  # noqa: E402
from covidct.service.app import create_app  # noqa: E402
from covidct.service.safety import ZipLimits  # noqa: E402

# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A small phantom as NIfTI and as a zipped DICOM series, and a lung-free volume."""
    import nibabel as nib

    from covidct.phantom import make_phantom, write_phantom

    root = tmp_path_factory.mktemp("inputs")
    ph = make_phantom(shape=(16, 96, 96), seed=3)  # a seed whose lesions the HU rule finds on 5 mm slices
    nifti = write_phantom(ph, root / "nifti", fmt="nifti")
    series = write_phantom(ph, root / "dicom", fmt="dicom")
    zpath = root / "series.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(series.iterdir()):
            zf.write(p, f"P/{p.name}")
    # a head-like slab in HU: air around a skull ring and soft tissue with noise, no lungs (a constant volume
    # would be refused before the analysis)
    yy, xx = np.mgrid[:32, :32]
    r = np.hypot(yy - 15.5, xx - 15.5)
    head = np.where(r < 12, 40, np.where(r < 14, 700, -1000))
    solid = (head[:, :, None] + np.random.default_rng(0).integers(-10, 10, size=(32, 32, 8))).astype(np.int16)
    nolung = root / "nolung.nii.gz"
    nib.save(nib.Nifti1Image(solid, np.diag([1.0, 1.0, 5.0, 1.0])), str(nolung))
    return {"nifti": nifti, "zip": zpath, "series": series, "nolung": nolung}



@pytest.fixture
def standin_refine(monkeypatch):
    """The click refinement used by these tests: always the stand-in, so the figures are exact."""
    mod = types.ModuleType("covidct.interactive")
    mod.Click = _Click
    mod.refine = _standin_refine
    monkeypatch.setitem(sys.modules, "covidct.interactive", mod)
    import covidct

    monkeypatch.setattr(covidct, "interactive", mod, raising=False)
    return mod


def upload(client: TestClient, path: Path, name: str | None = None, **kw):
    with open(path, "rb") as f:
        return client.post("/api/jobs", files={"file": (name or path.name, f.read(), "application/octet-stream")}, **kw)


def wait(client: TestClient, job_id: str, timeout: float = 60.0, **kw) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        job = client.get(f"/api/jobs/{job_id}", **kw).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


@pytest.fixture(scope="module")
def served(tmp_path_factory, inputs):
    """One server (module-wide) with one finished NIfTI job."""
    data = tmp_path_factory.mktemp("data")
    with TestClient(create_app(data, workers=1)) as client:
        r = upload(client, inputs["nifti"])
        assert r.status_code == 201, r.text
        job = wait(client, r.json()["id"])
        assert job["status"] == "done", job
        yield client, job, data


# --- the happy path ---------------------------------------------------------------------------------


def test_upload_done_and_downloads(served):
    client, job, data = served
    assert job["stage"] is None and job["error"] is None and job["input_kind"] == "nifti-gz"
    assert set(job["files"]) >= {"report.json", "lungs.nii.gz", "lesions.nii.gz"}
    rep = client.get(f"/api/jobs/{job['id']}/files/report.json").json()
    assert rep["mode"] == "volume" and len(rep["slices"]) == 16
    assert job["summary"]["involvement_total"] == rep["involvement_percent"]["total"]
    les = client.get(f"/api/jobs/{job['id']}/files/lesions.nii.gz")
    assert les.status_code == 200 and les.content[:2] == b"\x1f\x8b"
    assert "attachment" in les.headers["content-disposition"]
    assert client.get(f"/api/jobs/{job['id']}/files/segmentation.dcm").status_code == 404  # NIfTI input: no SEG
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["auth"] is False
    # the OpenAPI description names the documented routes
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/jobs", "/api/jobs/{job_id}", "/api/jobs/{job_id}/files/{name}", "/api/health"} <= set(paths)


def test_dicom_zip_gives_dicom_seg(tmp_path, inputs, standin_refine):
    with TestClient(create_app(tmp_path, workers=1)) as client:
        r = upload(client, inputs["zip"], "scan.zip")
        assert r.status_code == 201 and r.json()["input_kind"] == "zip"
        job = wait(client, r.json()["id"])
        assert job["status"] == "done", job
        seg = client.get(f"/api/jobs/{job['id']}/files/segmentation.dcm")
        assert seg.status_code == 200 and seg.content[128:132] == b"DICM"
        # a corrected revision gets its own SEG and HTML report, written on first download
        r = client.post(f"/api/jobs/{job['id']}/refine", json={"slice": 8, "clicks": [{"x": 30, "y": 48, "positive": True}]})
        assert r.status_code == 200 and r.json()["revision"] == 1
        rev_dir = tmp_path / "jobs" / job["id"] / "revisions" / "001"
        assert not (rev_dir / "segmentation.dcm").exists()
        seg1 = client.get(f"/api/jobs/{job['id']}/files/segmentation.dcm?revision=1")
        assert seg1.status_code == 200 and seg1.content[128:132] == b"DICM" and seg1.content != seg.content
        html = client.get(f"/api/jobs/{job['id']}/files/report.html")
        assert html.status_code == 200 and "<html" in html.text.lower() and (rev_dir / "report.html").is_file()
        assert "sandbox" in html.headers["content-security-policy"]


def test_several_dicom_files_make_one_job(tmp_path, inputs):
    files = [("file", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(inputs["series"].iterdir())]
    with TestClient(create_app(tmp_path, workers=0)) as client:
        r = client.post("/api/jobs", files=files)
        assert r.status_code == 201, r.text
        assert r.json()["n_files"] == 16 and r.json()["input_kind"] == "dicom"
        stored = sorted((tmp_path / "jobs" / r.json()["id"] / "input" / "series").iterdir())
        assert len(stored) == 16 and stored[0].name == "00000.dcm"  # our names, not the client's


def test_failed_jobs_say_why(tmp_path, inputs):
    bad = tmp_path / "truncated.nii"
    raw = gzip.decompress(inputs["nifti"].read_bytes())
    bad.write_bytes(raw[:2000])  # a valid header, most voxels missing
    with TestClient(create_app(tmp_path / "data", workers=1)) as client:
        j1 = wait(client, upload(client, inputs["nolung"], "head.nii.gz").json()["id"])
        j2 = wait(client, upload(client, bad).json()["id"])
    assert j1["status"] == "failed" and "no lungs found in head.nii.gz" in j1["error"]
    assert j2["status"] == "failed" and j2["error"] and "\n" not in j2["error"]
    for j in (j1, j2):
        assert str(tmp_path) not in j["error"]  # server paths never reach the client
    assert client.get(f"/api/jobs/{j1['id']}/files/report.json").status_code == 409


def test_restart_keeps_and_requeues_jobs(tmp_path, inputs):
    with TestClient(create_app(tmp_path, workers=1)) as client:
        done = wait(client, upload(client, inputs["nifti"]).json()["id"])
    with TestClient(create_app(tmp_path, workers=0)) as client:  # no workers: stays queued
        queued = upload(client, inputs["nifti"]).json()
        assert client.get(f"/api/jobs/{queued['id']}").json()["status"] == "queued"
    # a job that was running when the server died
    jpath = tmp_path / "jobs" / queued["id"] / "job.json"
    job = json.loads(jpath.read_text())
    jpath.write_text(json.dumps(job | {"status": "running", "stage": "lesions"}))
    with TestClient(create_app(tmp_path, workers=1)) as client:
        again = wait(client, queued["id"])
        assert again["status"] == "done"
        assert client.get(f"/api/jobs/{done['id']}").json()["status"] == "done"
        assert client.get(f"/api/jobs/{done['id']}/files/report.json").status_code == 200


# --- viewer data and refinement ------------------------------------------------------------------------


def test_viewer_endpoints(served):
    from PIL import Image

    client, job, _ = served
    jid = job["id"]
    vol = client.get(f"/api/jobs/{jid}/volume").json()
    assert vol["shape_zyx"] == [16, 96, 96] and vol["is_hu"] and set(vol["windows"]) == {"lung", "mediastinum"}
    lung = client.get(f"/api/jobs/{jid}/slices/8.png?window=lung")
    medi = client.get(f"/api/jobs/{jid}/slices/8.png?window=mediastinum")
    assert lung.headers["content-type"] == "image/png"
    a, b = (np.asarray(Image.open(io.BytesIO(r.content))) for r in (lung, medi))
    assert a.shape == (96, 96) and not np.array_equal(a, b)
    # the overlay of the slice with most lesion (the report's per-slice areas say which)
    rep = client.get(f"/api/jobs/{jid}/files/report.json").json()
    k = max(rep["slices"], key=lambda s: s["lesion_mm2"])["index"]
    assert rep["slices"][k]["lesion_mm2"] > 0
    ov = np.asarray(Image.open(io.BytesIO(client.get(f"/api/jobs/{jid}/slices/{k}/lesions.png").content)))
    assert ov.shape == (96, 96, 4) and (ov[..., 3] > 0).any()
    assert client.get(f"/api/jobs/{jid}/slices/99.png").status_code == 404
    assert client.get(f"/api/jobs/{jid}/slices/8.png?window=bone").status_code == 422
    assert client.get(f"/api/jobs/{jid}/slices/8/heart.png").status_code == 422
    # the heatmap layer: the models' lesion probability, at the slice's size, coloured where lesions are
    assert vol["heatmap"] is True
    assert vol["heatmap_note"] == MODEL_ONLY_NOTE  # a whole HU volume: the HU rule drew its lesions, not the model
    heat = np.asarray(Image.open(io.BytesIO(client.get(f"/api/jobs/{jid}/slices/{k}/heatmap.png").content)))
    assert heat.shape == (96, 96, 4) and (heat[..., 3] > 0).any()
    assert (heat[..., 3][ov[..., 3] > 0] > 0).mean() > 0.5  # most lesion pixels carry probability colour


def _lesion_slice(client, jid, k, revision=None):
    import nibabel as nib

    q = "" if revision is None else f"?revision={revision}"
    data = client.get(f"/api/jobs/{jid}/files/lesions.nii.gz{q}").content
    img = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    return np.asarray(img.dataobj)


def test_refine_makes_revisions_and_keeps_the_original(served, standin_refine):
    client, job, data = served
    jid = job["id"]
    orig_report = client.get(f"/api/jobs/{jid}/files/report.json?revision=0").json()
    k = 8
    ov = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
        io.BytesIO(client.get(f"/api/jobs/{jid}/slices/{k}/lungs.png").content)))
    lesion_ov = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
        io.BytesIO(client.get(f"/api/jobs/{jid}/slices/{k}/lesions.png").content)))
    free = (ov[..., 3] > 0) & (lesion_ov[..., 3] == 0)
    ys, xs = np.nonzero(free)
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    before = int((lesion_ov[..., 3] > 0).sum())
    base = client.get(f"/api/jobs/{jid}").json()["revision"]
    r = client.post(f"/api/jobs/{jid}/refine", json={"slice": k, "clicks": [{"x": x, "y": y, "positive": True}]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["revision"] == base + 1 and out["slice_lesion_px"] > before
    assert out["slices"][k]["lesion_mm2"] > orig_report["slices"][k]["lesion_mm2"]
    assert out["involvement_percent"]["total"] > orig_report["involvement_percent"]["total"]
    # the revision is on disk; the original result is untouched
    rev_dir = data / "jobs" / jid / "revisions" / f"{base + 1:03d}"
    assert {"lesions.nii.gz", "lungs.nii.gz", "report.json", "refine.json"} <= {p.name for p in rev_dir.iterdir()}
    assert client.get(f"/api/jobs/{jid}/files/report.json?revision=0").json() == orig_report
    latest = client.get(f"/api/jobs/{jid}/files/report.json").json()
    assert latest["revision"]["number"] == base + 1
    # the revision's report keeps the lung's density (of its own lung mask) and the original's input fields
    assert latest["densitometry"]["total"]["lung_ml"] == latest["lungs"]["total_ml"]
    assert latest["input"]["analysed_box_yx"] == orig_report["input"]["analysed_box_yx"]
    assert (_lesion_slice(client, jid, k) > 0).sum() > (_lesion_slice(client, jid, k, revision=0) > 0).sum()
    # a negative click on the new lesion removes it again; undo (no clicks, same base) restores the base
    r2 = client.post(f"/api/jobs/{jid}/refine", json={"slice": k, "base_revision": base, "clicks": [
        {"x": x, "y": y, "positive": True}, {"x": x, "y": y, "positive": False}]}).json()
    assert r2["slice_lesion_px"] < out["slice_lesion_px"]
    r3 = client.post(f"/api/jobs/{jid}/refine", json={"slice": k, "base_revision": base, "clicks": []}).json()
    assert r3["slice_lesion_px"] == before and r3["revision"] == base + 3
    # bad clicks are 422s with a reason
    bad = client.post(f"/api/jobs/{jid}/refine", json={"slice": k, "clicks": [{"x": 500, "y": 1, "positive": True}]})
    assert bad.status_code == 422 and "outside" in bad.json()["detail"]
    assert client.post(f"/api/jobs/{jid}/refine", json={"slice": "a", "clicks": []}).status_code == 422
    assert client.post(f"/api/jobs/{jid}/refine", json={"slice": 99, "clicks": []}).status_code == 404


# --- safety ----------------------------------------------------------------------------------------------


def test_oversized_upload_is_refused(tmp_path, inputs):
    with TestClient(create_app(tmp_path, workers=0, max_upload_bytes=10_000)) as client:
        r = upload(client, inputs["nifti"])
        assert r.status_code == 413 and "too large" in r.json()["detail"]
        # streamed without a Content-Length: counted as it arrives
        body = inputs["nifti"].read_bytes()
        boundary = "xyzzy"
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.nii.gz\"\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n".encode(), body, f"\r\n--{boundary}--\r\n".encode()]

        def chunks():
            for p in parts:
                for i in range(0, len(p), 4096):
                    yield p[i: i + 4096]

        r = client.post("/api/jobs", content=chunks(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413
        assert not any((tmp_path / "jobs").iterdir())


def test_zip_slip_entry_never_escapes(tmp_path, inputs):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf, zipfile.ZipFile(inputs["zip"]) as src:
        for info in src.infolist()[:3]:
            zf.writestr(info.filename, src.read(info))
        zf.writestr("../../../escaped.txt", b"gotcha")
    data = tmp_path / "data"
    with TestClient(create_app(data, workers=1)) as client:
        r = upload(client, evil)  # refused at upload, by covidct.io.archive's rules, before any extraction
    assert r.status_code == 413 and "unsafe zip member" in r.json()["detail"]
    assert not list(tmp_path.rglob("escaped.txt"))


def test_zip_bomb_and_member_limits(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("slice.dcm", bytes(20 * 1024**2))
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(12):
            zf.writestr(f"s/{i}.dcm", b"x" * 10)
    with TestClient(create_app(tmp_path / "d", workers=0, zip_limits=ZipLimits(max_members=10))) as client:
        r = upload(client, bomb)
        assert r.status_code == 413 and "zip bomb" in r.json()["detail"]
        r = upload(client, many)
        assert r.status_code == 413 and "12 members" in r.json()["detail"]
    with TestClient(create_app(tmp_path / "e", workers=0, zip_limits=ZipLimits(max_total_bytes=1000))) as client:
        r = upload(client, bomb)
        assert r.status_code == 413 and "extract" in r.json()["detail"]


def test_content_not_name_decides(tmp_path, inputs):
    gz_text = gzip.compress(b"hello " * 100)
    with TestClient(create_app(tmp_path, workers=0)) as client:
        r = client.post("/api/jobs", files={"file": ("scan.nii.gz", b"not a scan at all" * 20, "application/gzip")})
        assert r.status_code == 415 and "unsupported file content" in r.json()["detail"]
        r = client.post("/api/jobs", files={"file": ("scan.nii.gz", gz_text, "application/gzip")})
        assert r.status_code == 415 and "not a NIfTI" in r.json()["detail"]
        r = client.post("/api/jobs", files={"file": ("empty.dcm", b"", "application/dicom")})
        assert r.status_code == 400
        files = [("file", ("a.dcm", (inputs["series"] / sorted(p.name for p in inputs["series"].iterdir())[0]).read_bytes(),
                           "application/dicom")), ("file", ("b.png", b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png"))]
        r = client.post("/api/jobs", files=files)
        assert r.status_code == 415 and "must all be DICOM" in r.json()["detail"]
        # a NIfTI named .png is still a NIfTI
        r = upload(client, inputs["nifti"], "looks_like.png")
        assert r.status_code == 201 and r.json()["input_kind"] == "nifti-gz"
        assert client.post("/api/jobs").status_code == 422  # no file field


def test_metaimage_upload_is_analysed_as_its_nifti(tmp_path, inputs, served):
    """A grand-challenge style .mha (data in the same file) is sniffed, stored under our name and read with its
    geometry: the same lungs as the NIfTI of the same phantom. An .mhd header alone (its raw file not uploaded) is not
    a volume."""
    import metaimageio

    from covidct.io import load_ct

    ct = load_ct(inputs["nifti"])
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(ct.affine)
    spacing_xyz = np.linalg.norm(lps[:3, :3], axis=0)
    path = tmp_path / "scan.mha"
    metaimageio.write(path, np.rint(ct.array).astype(np.int16), ElementSpacing=spacing_xyz, Offset=lps[:3, 3],
                      TransformMatrix=lps[:3, :3] / spacing_xyz, CompressedData=True)
    client, nifti_job, _ = served
    r = upload(client, path)
    assert r.status_code == 201 and r.json()["input_kind"] == "mha"
    job = wait(client, r.json()["id"])
    assert job["status"] == "done", job
    ours, theirs = (client.get(f"/api/jobs/{j['id']}/files/report.json").json() for j in (job, nifti_job))
    assert ours["lungs"] == theirs["lungs"] and ours["lesions"] == theirs["lesions"] and ours["lungs"]["total_ml"] > 0
    header = path.read_bytes().split(b"ElementDataFile")[0] + b"ElementDataFile = scan.raw\n"
    r = client.post("/api/jobs", files={"file": ("scan.mhd", header, "application/octet-stream")})
    assert r.status_code == 415


def test_token(tmp_path, inputs):
    with TestClient(create_app(tmp_path, token="s3cret-token", workers=0)) as client:
        assert client.get("/api/health").status_code == 200
        assert upload(client, inputs["nifti"]).status_code == 401
        assert upload(client, inputs["nifti"], headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = upload(client, inputs["nifti"], headers={"Authorization": "Bearer s3cret-token"})
        assert r.status_code == 201
        jid = r.json()["id"]
        assert client.get(f"/api/jobs/{jid}").status_code == 401
        assert client.get(f"/api/jobs/{jid}?token=s3cret-token").status_code == 200
        assert client.get("/").status_code == 200  # the page itself holds no data


def test_ids_paths_and_listing(served):
    client, job, data = served
    jid = job["id"]
    assert len(jid) >= 20
    assert client.get("/api/jobs/AAAAAAAAAAAAAAAAAAAAAA").status_code == 404
    assert client.get("/api/jobs/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/api/jobs").status_code == 405  # no job listing
    assert client.get(f"/api/jobs/{jid}/files/job.json").status_code == 422
    assert client.get(f"/api/jobs/{jid}/files/..%2Fjob.json").status_code in (404, 422)
    assert client.get(f"/api/jobs/{jid}/files/report.json?revision=999").status_code == 404
    assert client.get("/static/").status_code == 404  # no directory listing
    assert client.get("/static/../app.py").status_code == 404
    r = client.get("/")
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]


def test_refine_without_a_click_model_says_so(served, monkeypatch):
    from covidct.errors import ModelError

    def no_model(*a, **k):
        raise ModelError("unknown model 'refine' (shipped models: none; or give a .pt file / run folder)")

    mod = types.ModuleType("covidct.interactive")
    mod.Click, mod.refine = _Click, no_model
    monkeypatch.setitem(sys.modules, "covidct.interactive", mod)
    import covidct

    monkeypatch.setattr(covidct, "interactive", mod, raising=False)
    client, job, _ = served
    before = client.get(f"/api/jobs/{job['id']}").json()["revision"]
    r = client.post(f"/api/jobs/{job['id']}/refine", json={"slice": 8, "clicks": [{"x": 40, "y": 40, "positive": True}]})
    assert r.status_code == 503 and "click refinement unavailable" in r.json()["detail"]
    assert client.get(f"/api/jobs/{job['id']}").json()["revision"] == before


def test_display_range_volume_is_viewed_as_the_hu_it_was_analysed_in(tmp_path):
    """A whole volume windowed to 0..255 is analysed as approximate HU (covidct.display_hu); the viewer and the
    click refinement then work on those HU too (lung and mediastinal windows), not on the display values."""
    import nibabel as nib

    from covidct.evaluate.hu_volumes import display_windowed
    from covidct.phantom import make_phantom

    ph = make_phantom(seed=1, lesion_burden=0.1, shape=(24, 160, 160), spacing=(5.0, 2.2, 2.2))
    grey = display_windowed(ph.ct.array, -600, 1500).astype(np.uint8)
    path = tmp_path / "windowed.nii.gz"
    nib.save(nib.Nifti1Image(grey.transpose(2, 1, 0), ph.ct.affine), str(path))
    with TestClient(create_app(tmp_path / "data", workers=1)) as client:
        job = wait(client, upload(client, path).json()["id"])
        assert job["status"] == "done", job
        vol = client.get(f"/api/jobs/{job['id']}/volume").json()
        assert vol["is_hu"] and set(vol["windows"]) == {"lung", "mediastinum"}
        rep = client.get(f"/api/jobs/{job['id']}/files/report.json").json()
        assert rep["input"]["display_window"] is not None
