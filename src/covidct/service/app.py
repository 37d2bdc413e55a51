"""covidct's web service: a REST API for analyses and click corrections, and the viewer page.

``create_app(data_dir)`` builds the FastAPI app; ``covidct serve`` runs it with uvicorn. The API
(all under ``/api``, described at ``/docs`` and ``/openapi.json``):

- ``POST /api/jobs`` (multipart, field ``file``: a zip of a DICOM series, DICOM files, a NIfTI
  volume or an image) → ``201 {"id", "status", ...}``
- ``GET /api/jobs/{id}`` → ``{"id", "status": queued|running|done|failed, "stage", "error", ...}``
- ``GET /api/jobs/{id}/files/{name}`` → report.json, report.html, lungs.nii.gz, lesions.nii.gz,
  segmentation.dcm (or lungs.png/lesions.png/overlay.png for an image); ``?revision=N``
  (0 = the original analysis; default: the latest correction)
- ``GET /api/jobs/{id}/volume``, ``/slices/{k}.png?window=lung|mediastinum``,
  ``/slices/{k}/{lungs|lesions}.png`` → what the viewer draws
- ``POST /api/jobs/{id}/refine`` ``{"slice", "clicks": [{"x", "y", "positive"}]}`` → a new revision
- ``GET /api/health``

With a token (``--token`` / ``COVIDCT_TOKEN``), every API call but health needs
``Authorization: Bearer TOKEN`` (or ``?token=TOKEN``, which the page uses for images and links).
"""

from __future__ import annotations

import json
import secrets
import shutil
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from covidct import __version__
from covidct.service.jobs import STAGES, JobNotFound, JobRunner, JobStore, QueueFull
from covidct.service.safety import (
    STORED_NAMES,
    UploadRejected,
    ZipLimits,
    check_zip,
    display_name,
    inside,
    new_job_id,
    sniff,
)
from covidct.service.viewer import JobViews, ViewerError

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MAX_UPLOAD = 2 * 1024**3
JSON_BODY_LIMIT = 1024**2
DOWNLOADS = {
    "report.json": "application/json",
    "report.html": "text/html; charset=utf-8",
    "lungs.nii.gz": "application/gzip",
    "lesions.nii.gz": "application/gzip",
    "segmentation.dcm": "application/dicom",
    "lungs.png": "image/png",
    "lesions.png": "image/png",
    "overlay.png": "image/png",
}
JOB_ID = Annotated[str, PathParam(description="The job id returned by POST /api/jobs", min_length=16, max_length=64)]


# --- API models ------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    queued: int = Field(description="jobs waiting for a worker")
    running: int
    workers: int
    auth: bool = Field(description="whether API calls need a token")


class Job(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed"]
    stage: str | None = Field(None, description=f"while running: one of {', '.join(STAGES)}")
    stages: list[str] = Field(default=list(STAGES), description="the stages in order")
    error: str | None = Field(None, description="why the job failed (one line)")
    filename: str | None = None
    input_kind: str | None = Field(None, description="dicom, zip, nifti, nifti-gz, mha, png, jpeg, tiff or bmp (sniffed)")
    n_files: int | None = Field(None, description="number of uploaded files")
    created: str | None = None
    updated: str | None = None
    seconds: float | None = Field(None, description="analysis time once done")
    revision: int = Field(0, description="latest click-correction revision (0 = the original analysis)")
    files: list[str] = Field(default_factory=list, description="downloadable result files")
    summary: dict | None = Field(None, description="diagnosis, total involvement (%), severity score")


class ClickIn(BaseModel):
    x: int = Field(ge=0, description="column in the slice's pixels")
    y: int = Field(ge=0, description="row in the slice's pixels")
    positive: bool = Field(True, description="true: lesion here; false: not lesion")


class RefineIn(BaseModel):
    slice: int = Field(ge=0, description="slice index (0 = the most inferior)")
    clicks: list[ClickIn] = Field(max_length=200, description="all clicks of this correction, in order")
    base_revision: int | None = Field(
        None, description="the revision whose mask the clicks refine (default: the latest, with the whole click history); "
        "an undo replays the shorter history from the revision the correction started from"
    )


class RefineOut(BaseModel):
    revision: int
    slice: int
    slice_lesion_px: int = Field(description="lesion pixels on the refined slice")
    slices: list[dict] = Field(description="per-slice areas (report.json 'slices')")
    involvement_percent: dict
    severity: dict
    diagnosis: dict
    lesions: dict


def _job_out(job: dict) -> Job:
    return Job(**{k: v for k, v in job.items() if k in Job.model_fields})


# --- the upload size limit -------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: 413 for bodies over the limit, by Content-Length or by counting the stream."""

    def __init__(self, app, max_upload: int) -> None:
        self.app = app
        self.max_upload = max_upload

    def _limit(self, scope) -> int:
        return self.max_upload if scope["path"].rstrip("/") == "/api/jobs" else JSON_BODY_LIMIT

    async def _reject(self, send, limit: int) -> None:
        body = json.dumps({"detail": f"request body too large (limit {limit} bytes)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"-1"))
        except ValueError:
            declared = -1
        if declared > limit:
            await self._reject(send, limit)
            return
        state = {"received": 0, "exceeded": False, "started": False, "replaced": False}

        async def counting_receive():
            msg = await receive()
            if msg["type"] == "http.request":
                state["received"] += len(msg.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise _TooLarge()
            return msg

        async def guarded_send(msg):
            if state["exceeded"]:  # whatever the app answers to a cut-off body, the answer is 413
                if msg["type"] == "http.response.start" and not state["replaced"]:
                    state["replaced"] = state["started"] = True
                    await self._reject(send, limit)
                return
            if msg["type"] == "http.response.start":
                state["started"] = True
            await send(msg)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not state["started"]:
                await self._reject(send, limit)


# --- the app ---------------------------------------------------------------------------------------


def create_app(
    data_dir: str | Path = "covidct-data",
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    workers: int = 1,
    *,
    max_queue: int = 32,
    zip_limits: ZipLimits | None = None,
    analyzer_factory=None,
) -> FastAPI:
    """The FastAPI app: jobs under ``data_dir``, ``workers`` concurrent analyses, optional token."""
    store = JobStore(data_dir)
    limits = zip_limits or ZipLimits.from_env()  # the same archive rules as the command line (covidct.io.archive)
    runner = JobRunner(store, workers=workers, max_queue=max_queue, analyzer_factory=analyzer_factory, zip_limits=limits)
    views = JobViews(store)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runner.requeue_unfinished()
        runner.start()
        yield
        runner.stop()

    app = FastAPI(
        title="covidct",
        version=__version__,
        description=(
            "Upload a chest CT, follow its analysis, view slices with lung and lesion overlays, correct lesions "
            "with clicks and download the results. Research software, not a medical device."
        ),
        lifespan=lifespan,
    )
    app.state.store, app.state.runner, app.state.views = store, runner, views
    app.add_middleware(BodyLimit, max_upload=max_upload_bytes)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        resp = await call_next(request)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path.startswith("/api/") and "cache-control" not in resp.headers:
            resp.headers["Cache-Control"] = "no-store"
        return resp

    def auth(request: Request) -> None:
        if token is None:
            return
        given = request.query_params.get("token")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        if not given or not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong access token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(JobNotFound)
    async def _not_found(request: Request, exc: JobNotFound):
        return JSONResponse({"detail": "no such job"}, status_code=404)

    @app.exception_handler(ViewerError)
    async def _viewer_error(request: Request, exc: ViewerError):
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(QueueFull)
    async def _queue_full(request: Request, exc: QueueFull):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "30"})

    protected = [Depends(auth)]

    # --- API ---

    @app.get("/api/health", response_model=Health, tags=["service"])
    def health() -> Health:
        """Liveness and queue state (no token needed; says nothing about jobs)."""
        return Health(version=__version__, queued=runner.pending(), running=runner.running, workers=runner.workers,
                      auth=token is not None)

    @app.post(
        "/api/jobs", status_code=201, response_model=Job, tags=["jobs"], dependencies=protected,
        responses={
            400: {"description": "empty upload"},
            401: {"description": "missing or wrong token"},
            413: {"description": "upload or zip over the size/member limits, or a zip bomb"},
            415: {"description": "file content is not DICOM, zip, NIfTI or an image"},
            422: {"description": "corrupt archive, or a malformed request"},
            503: {"description": "the queue is full; retry later"},
        },
    )
    def create_job(
        file: Annotated[list[UploadFile], File(
            description="One file: a zip of a DICOM series, a NIfTI (.nii/.nii.gz), a MetaImage (.mha), a DICOM file or a PNG/JPEG image; "
            "or several DICOM files of one series. The type is read from the content, not the name.")],
    ) -> Job:
        """Upload a CT and queue its analysis."""
        runner.reserve()
        staging = store.incoming / secrets.token_hex(8)
        inp = staging / "input"
        inp.mkdir(parents=True)
        try:
            kinds, total = [], 0
            for i, f in enumerate(file):
                part = inp / f".part{i}"
                with open(part, "wb") as dst:
                    shutil.copyfileobj(f.file, dst, 1 << 20)
                total += part.stat().st_size
                kind = sniff(part)
                if len(file) > 1 and kind != "dicom":
                    raise UploadRejected(415, f"{display_name(f.filename)}: several files must all be DICOM files of one series")
                if kind == "zip":
                    check_zip(part, limits)
                target = inp / STORED_NAMES[kind].format(n=i)
                target.parent.mkdir(parents=True, exist_ok=True)
                part.rename(target)
                kinds.append(kind)
            name = display_name(file[0].filename) + (f" (+{len(file) - 1} files)" if len(file) > 1 else "")
            job_id = new_job_id()
            job = store.create(job_id, inp, {"filename": name, "input_kind": kinds[0], "n_files": len(file), "bytes": total})
            runner.submit(job_id, force=True)  # the place was reserved above
            return _job_out(job)
        except UploadRejected as e:
            raise HTTPException(e.status, e.message) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @app.get("/api/jobs/{job_id}", response_model=Job, tags=["jobs"], dependencies=protected,
             responses={404: {"description": "no such job"}})
    def get_job(job_id: JOB_ID) -> Job:
        """A job's status: queued, running (with its stage), done or failed (with the reason)."""
        return _job_out(store.read(job_id))

    @app.get("/api/jobs/{job_id}/files/{name}", tags=["jobs"], dependencies=protected,
             responses={200: {"content": {"application/octet-stream": {}}, "description": "the file"},
                        404: {"description": "no such job, file or revision"}, 409: {"description": "job not done"}})
    def get_file(
        job_id: JOB_ID,
        name: Literal[tuple(DOWNLOADS)],  # type: ignore[valid-type]
        revision: Annotated[int | None, Query(ge=0, description="0 = original analysis; default latest")] = None,
    ):
        """Download a result file of the job (of a click-correction revision with ``revision``)."""
        job = store.read(job_id)
        if job["status"] != "done":
            raise ViewerError(409, f"job is {job['status']}, not done")
        rev = views.resolve_revision(job_id, revision)
        folder = views.revision_dir(job_id, rev)
        if rev > 0 and not (folder / name).is_file():
            if name in ("report.html", "segmentation.dcm") and (views.revision_dir(job_id, 0) / name).is_file():
                views.materialize(job_id, rev, name)  # written on first download (slow on a real CT)
            else:
                folder = views.revision_dir(job_id, 0)  # e.g. the overlay of an image: unchanged
        try:
            path = inside(store.data_dir, folder / name)
        except ValueError:
            raise HTTPException(404, "no such file") from None
        if not path.is_file():
            raise HTTPException(404, f"{name} is not among this job's results")
        if name == "report.html":  # inline, in a sandbox: it is a document, not part of this site
            return FileResponse(path, media_type=DOWNLOADS[name],
                                headers={"Content-Security-Policy": "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"})
        return FileResponse(path, media_type=DOWNLOADS[name], filename=name if rev == 0 else f"rev{rev}_{name}")

    @app.get("/api/jobs/{job_id}/volume", tags=["viewer"], dependencies=protected)
    def get_volume(job_id: JOB_ID) -> dict:
        """Shape, spacing, window presets, latest revision and its report (with per-slice areas)."""
        return views.volume_info(job_id)

    @app.get("/api/jobs/{job_id}/slices/{k}.png", tags=["viewer"], dependencies=protected,
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def get_slice(job_id: JOB_ID, k: int, window: Literal["lung", "mediastinum"] = "lung") -> Response:
        """Slice ``k`` of the CT (canonical orientation) as a grey PNG through a window preset."""
        return Response(views.slice_png(job_id, k, window), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/api/jobs/{job_id}/slices/{k}/{layer}.png", tags=["viewer"], dependencies=protected,
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def get_overlay(
        job_id: JOB_ID, k: int, layer: Literal["lungs", "lesions", "heatmap"],
        revision: Annotated[int | None, Query(ge=0, description="default latest")] = None,
    ) -> Response:
        """An RGBA overlay of slice ``k``: lungs (outline + light fill), lesions (filled, by class colour) or
        heatmap (the lesion probability of the analysis, inferno colours; 404 when no lesion model ran)."""
        rev = views.resolve_revision(job_id, revision)
        cache = "private, max-age=3600" if revision is not None else "no-store"
        return Response(views.overlay_png(job_id, k, layer, rev), media_type="image/png", headers={"Cache-Control": cache})

    @app.post("/api/jobs/{job_id}/refine", response_model=RefineOut, tags=["viewer"], dependencies=protected,
              responses={404: {"description": "no such job or slice"}, 409: {"description": "job not done"}})
    def refine(job_id: JOB_ID, body: RefineIn) -> dict:
        """Correct the lesion mask of one slice with clicks; saves a new revision (the original is kept)."""
        return views.refine(job_id, body.slice, [c.model_dump() for c in body.clicks], body.base_revision)

    # --- the page ---

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'",
            "Cache-Control": "no-cache",
        })

    @app.get("/index.html", include_in_schema=False)
    def index_html() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount("/static", StaticFiles(directory=STATIC_DIR, html=False), name="static")
    return app
