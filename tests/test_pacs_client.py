"""The PACS connection against a scripted local HTTP server (no Orthanc needed): retries with back-off on 503,
no retry on 401, the bearer token sent but never shown, a read timeout as one line."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from covidct.errors import PacsError
from covidct.pacs.client import connect, settings_from
from covidct.pacs.transfer import list_series


class _Scripted(BaseHTTPRequestHandler):
    """Answers GETs with the next (status, delay) of the server's script; the last one repeats."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        server = self.server
        server.seen.append((time.monotonic(), self.headers.get("Authorization")))
        status, delay = server.script[min(len(server.seen), len(server.script)) - 1]
        time.sleep(delay)
        body = json.dumps([]).encode() if status == 200 else b"{}"
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout)
            pass

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    httpd.seen, httpd.script = [], [(200, 0.0)]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _settings(server, **kw):
    url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    return settings_from(url, environ={"COVIDCT_PACS_TOKEN": "t0ken-xyz"}, **kw)


def test_unavailable_is_retried_with_backoff(server):
    server.script = [(503, 0.0), (503, 0.0), (200, 0.0)]
    s = _settings(server)
    assert list_series(connect(s), s, "1.2.3") == []
    times = [t for t, _ in server.seen]
    assert len(times) == 3 and times[2] - times[1] >= 0.4  # waited between tries
    assert {auth for _, auth in server.seen} == {"Bearer t0ken-xyz"}


def test_refusal_is_not_retried_and_hides_the_token(server):
    server.script = [(401, 0.0)]
    s = _settings(server)
    with pytest.raises(PacsError, match="HTTP 401") as exc:
        list_series(connect(s), s, "1.2.3")
    assert len(server.seen) == 1 and "t0ken-xyz" not in str(exc.value)


def test_read_timeout_is_one_line(server):
    server.script = [(200, 3.0)]
    s = _settings(server, timeout=1.0, retries=0)
    with pytest.raises(PacsError, match="did not answer within 1 s"):
        list_series(connect(s), s, "1.2.3")
