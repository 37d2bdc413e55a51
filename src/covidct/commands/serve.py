"""``covidct serve``: the web service and viewer page (FastAPI + uvicorn)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import typer

from covidct.errors import CovidCTError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this computer only)."),
        port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port."),
        data_dir: Path = typer.Option(Path("covidct-data"), "--data-dir", help="Where jobs and results are kept (created)."),
        token: str = typer.Option(
            None, "--token", envvar="COVIDCT_TOKEN", show_envvar=True,
            help="Access token required by the API (Authorization: Bearer TOKEN, or ?token=TOKEN in the page's URL).",
        ),
        workers: int = typer.Option(1, "--workers", min=0, help="Analyses run at the same time (each holds one CT in memory)."),
        max_queue: int = typer.Option(32, "--max-queue", min=1, help="Jobs that may wait; more uploads get 503."),
        max_upload_mb: int = typer.Option(2048, "--max-upload-mb", min=1, help="Largest accepted upload (MiB)."),
        access_log: bool = typer.Option(False, "--access-log", help="Log every HTTP request (the page polls often)."),
        allow_no_token: bool = typer.Option(
            False, "--allow-no-token", help="Allow binding to a non-loopback address without a token (not recommended)."
        ),
    ) -> None:
        """Run the web page and REST API: upload a CT, follow its analysis, view and correct masks, download results.

        Open http://HOST:PORT/ in a browser (add ?token=TOKEN when a token is set). The REST API is described
        at /openapi.json (and /docs, whose page loads its scripts from the internet).
        Jobs live in DATA_DIR and survive a restart.
        """
        try:
            import uvicorn

            from covidct.service.app import create_app
        except ImportError as exc:
            raise CovidCTError(f"the web service needs FastAPI and uvicorn ({exc.name} is missing): pip install covidct") from exc
        if not _is_loopback(host) and not token and not allow_no_token:
            raise CovidCTError(
                f"binding to {host} exposes patient data to the network: set --token (or COVIDCT_TOKEN), "
                "or pass --allow-no-token"
            )
        application = create_app(
            data_dir, token=token or None, max_upload_bytes=max_upload_mb * 1024**2, workers=workers, max_queue=max_queue
        )
        shown = f"http://{'localhost' if _is_loopback(host) else host}:{port}/"
        typer.echo(f"covidct serving {Path(data_dir).resolve()} at {shown}" + (" (token required)" if token else ""))
        uvicorn.run(application, host=host, port=port, log_level="info", access_log=access_log,
                    timeout_graceful_shutdown=10)
