"""covidct's web service and viewer page (``covidct serve``); see :mod:`covidct.service.app`."""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":  # lazy: importing covidct.service must not need FastAPI
        from covidct.service.app import create_app

        return create_app
    raise AttributeError(name)
