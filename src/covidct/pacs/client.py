"""The DICOMweb connection to a PACS: credentials, TLS, timeouts, retries, and one-line errors.

Credentials never appear on the command line or in output:

* ``COVIDCT_PACS_TOKEN``: a bearer token; or ``COVIDCT_PACS_USER`` + ``COVIDCT_PACS_PASSWORD``: HTTP basic;
* or a JSON file (``--auth-file`` / ``COVIDCT_PACS_AUTH_FILE``) holding ``{"token": ...}`` or
  ``{"username": ..., "password": ...}``.

A URL with credentials in it (``http://user:pw@host``) is refused, since URLs end up in shell histories and
logs. TLS certificates are verified unless ``insecure`` is asked for explicitly; ``ca_bundle`` names a CA file
for a hospital's own certificate authority. Every request has a timeout; connection failures and HTTP
429/502/503/504 are retried 3 times with exponential back-off (0.5, 1, 2 s). Retrying a STOW-RS POST is safe
because covidct's results carry stable UIDs (see :func:`covidct.report.sr.stable_uid`): a repeat replaces,
it does not duplicate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from covidct.errors import PacsError

ENV_TOKEN, ENV_USER, ENV_PASSWORD, ENV_AUTH_FILE = (
    "COVIDCT_PACS_TOKEN", "COVIDCT_PACS_USER", "COVIDCT_PACS_PASSWORD", "COVIDCT_PACS_AUTH_FILE")


@dataclass(frozen=True)
class PacsSettings:
    """Where the PACS is and how to talk to it (picklable: worker processes build their own connection).

    ``auth`` is ("basic", user, password), ("bearer", token) or None; ``repr`` hides it."""

    url: str
    auth: tuple | None = None
    verify: bool | str = True
    timeout: float = 30.0
    retries: int = 3

    def __repr__(self) -> str:
        return f"PacsSettings(url={self.url!r}, auth={'set' if self.auth else None}, verify={self.verify!r})"


def _auth_from_file(path: Path) -> tuple:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise PacsError(f"cannot read the PACS credentials file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise PacsError(f"the PACS credentials file {path} is not JSON") from exc
    if isinstance(data, dict) and data.get("token"):
        return ("bearer", str(data["token"]))
    if isinstance(data, dict) and data.get("username") is not None and data.get("password") is not None:
        return ("basic", str(data["username"]), str(data["password"]))
    raise PacsError(f"the PACS credentials file {path} holds neither 'token' nor 'username' and 'password'")


def settings_from(url: str, *, auth_file: Path | None = None, insecure: bool = False, ca_bundle: Path | None = None,
                  timeout: float = 30.0, retries: int = 3, environ: dict | None = None) -> PacsSettings:
    """Settings for ``url`` with credentials from ``auth_file``, else ``$COVIDCT_PACS_AUTH_FILE``, else the
    token / user+password environment variables, else none."""
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PacsError(f"--pacs must be the DICOMweb root URL, e.g. http://127.0.0.1:8042/dicom-web (got {_shown(url)!r})")
    if parts.username or parts.password:
        raise PacsError(f"credentials in the PACS URL are refused; set {ENV_USER}/{ENV_PASSWORD} or {ENV_TOKEN}, "
                        "or use --auth-file")
    if insecure and ca_bundle:
        raise PacsError("--insecure and --ca-bundle contradict each other")
    if ca_bundle is not None and not Path(ca_bundle).is_file():
        raise PacsError(f"--ca-bundle {ca_bundle}: no such file")
    auth_path = auth_file or (Path(env[ENV_AUTH_FILE]) if env.get(ENV_AUTH_FILE) else None)
    if auth_path is not None:
        auth = _auth_from_file(Path(auth_path))
    elif env.get(ENV_TOKEN):
        auth = ("bearer", env[ENV_TOKEN])
    elif env.get(ENV_USER):
        auth = ("basic", env[ENV_USER], env.get(ENV_PASSWORD, ""))
    else:
        auth = None
    verify: bool | str = False if insecure else (str(ca_bundle) if ca_bundle else True)
    return PacsSettings(url=url.rstrip("/"), auth=auth, verify=verify, timeout=float(timeout), retries=int(retries))


def _shown(url: str) -> str:
    """The URL without any user information (for messages)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
    return url


def connect(settings: PacsSettings):
    """A ``dicomweb_client.DICOMwebClient`` for ``settings`` (no request is made yet)."""
    import requests
    from dicomweb_client import DICOMwebClient
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    session = requests.Session()
    if settings.auth and settings.auth[0] == "basic":
        session.auth = (settings.auth[1], settings.auth[2])
    elif settings.auth:
        session.headers["Authorization"] = f"Bearer {settings.auth[1]}"
    session.verify = settings.verify
    retry = Retry(total=settings.retries, connect=settings.retries, read=1, status=settings.retries,
                  backoff_factor=0.5, status_forcelist=(429, 502, 503, 504), allowed_methods=None,
                  raise_on_status=False, respect_retry_after_header=True)
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=4)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if settings.verify is False:
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # asked for explicitly
    client = DICOMwebClient(url=settings.url, session=session, timeout=(min(10.0, settings.timeout), settings.timeout))
    client.set_http_retry_params(retry=False)  # retries are the session's (above); two layers multiplied the waits
    return client


@contextmanager
def pacs_errors(settings: PacsSettings, what: str = "") -> Iterator[None]:
    """Turn a failed request into one :class:`PacsError` line (no URL credentials, no tokens)."""
    import requests

    where = f"the PACS at {_shown(settings.url)}"
    doing = f" ({what})" if what else ""
    try:
        yield
    except PacsError:
        raise
    except requests.exceptions.SSLError as exc:
        raise PacsError(f"TLS verification failed for {where}{doing}; give its CA with --ca-bundle "
                        "(or --insecure to skip verification)") from exc
    except requests.exceptions.ConnectTimeout as exc:
        raise PacsError(f"{where} did not answer within {settings.timeout:g} s{doing}") from exc
    except requests.exceptions.ReadTimeout as exc:
        raise PacsError(f"{where} did not answer within {settings.timeout:g} s{doing}") from exc
    except requests.exceptions.ConnectionError as exc:
        if "Read timed out" in str(exc):  # a read timeout after the retries arrives as a ConnectionError
            raise PacsError(f"{where} did not answer within {settings.timeout:g} s{doing}") from exc
        raise PacsError(f"cannot reach {where}{doing}: {_reason(exc)}") from exc
    except requests.exceptions.RetryError as exc:
        raise PacsError(f"{where} kept failing{doing}: {_reason(exc)}") from exc
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        if code in (401, 403):
            hint = "credentials missing or wrong" if code == 401 else "access denied"
            raise PacsError(f"{where} refused the request{doing}: HTTP {code} ({hint}; see {ENV_USER}/"
                            f"{ENV_PASSWORD}, {ENV_TOKEN} or --auth-file)") from exc
        raise PacsError(f"{where} answered HTTP {code}{doing}") from exc
    except requests.exceptions.RequestException as exc:
        raise PacsError(f"request to {where} failed{doing}: {type(exc).__name__}") from exc


def _reason(exc: Exception) -> str:
    text = str(exc)
    for key, says in (("Connection refused", "connection refused"), ("Name or service not known", "unknown host"),
                      ("No route to host", "no route to host"), ("timed out", "timed out"),
                      ("Max retries exceeded", "no answer after retries")):
        if key in text:
            return says
    return type(exc).__name__
