"""A private, throwaway Orthanc PACS with DICOMweb: for the tests, the benchmarks and trying covidct.

It gets its own temporary storage folder, free ports on 127.0.0.1, HTTP basic authentication on, its DICOM
(DIMSE) server off, and the DICOMweb plugin; it is stopped and its storage removed on exit.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


def orthanc_missing() -> str | None:
    """Why a private Orthanc cannot start here (None: it can)."""
    exe = shutil.which("Orthanc") or (ORTHANC if Path(ORTHANC).is_file() else None)
    if exe is None:
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if not Path(DICOMWEB_PLUGIN).is_file():
        return f"the Orthanc DICOMweb plugin is missing ({DICOMWEB_PLUGIN}; apt-get install orthanc-dicomweb)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateOrthanc:
    """``with PrivateOrthanc() as pacs:`` ... ``pacs.url`` (DICOMweb root), ``pacs.user``/``pacs.password``."""

    def __init__(self, user: str = "covidct", password: str | None = None) -> None:
        import secrets

        self.user, self.password = user, password or secrets.token_urlsafe(12)
        self.proc: subprocess.Popen | None = None
        self.root: Path | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicom-web"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PrivateOrthanc:
        reason = orthanc_missing()
        if reason:
            raise RuntimeError(reason)
        self.root = Path(tempfile.mkdtemp(prefix="covidct_orthanc_"))
        for _attempt in range(3):  # a port taken between choosing and binding: choose again
            self.port = _free_port()
            config = {
                "Name": "covidct-test", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
                "HttpPort": self.port, "DicomServerEnabled": False, "DicomPort": _free_port(),
                "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
                "RegisteredUsers": {self.user: self.password},
                "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                "SaveJobs": False, "HttpThreadsCount": 8, "StorageCompression": False, "HttpCompressionEnabled": False,
            }
            cfg = self.root / "orthanc.json"
            cfg.write_text(json.dumps(config))
            log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - kept open for the process's life
            self.proc = subprocess.Popen([shutil.which("Orthanc") or ORTHANC, str(cfg)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._answers():
                    return self
                time.sleep(0.1)
            self.stop(remove=False)
        raise RuntimeError(f"Orthanc did not start; see {self.root / 'orthanc.log'}")

    def _answers(self) -> bool:
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def get(self, path: str) -> object:
        """GET on Orthanc's own REST API (JSON), authenticated."""
        req = urllib.request.Request(self.rest + path)
        req.add_header("Authorization", "Basic " + b64encode(f"{self.user}:{self.password}".encode()).decode())
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def stop(self, remove: bool = True) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if remove and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PrivateOrthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
