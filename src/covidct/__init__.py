"""covidct: COVID-19 chest CT analysis.

The public API is small; each verb lives in its own module and is imported lazily so that
``import covidct`` stays fast and side-effect free::

    from covidct import load_ct
    ct = load_ct("path/to/dicom_folder")
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_ct", "CT", "CovidCTError"]


def __getattr__(name: str):
    if name == "load_ct":
        from covidct.io import load_ct

        return load_ct
    if name == "CT":
        from covidct.volume import CT

        return CT
    if name == "CovidCTError":
        from covidct.errors import CovidCTError

        return CovidCTError
    raise AttributeError(f"module 'covidct' has no attribute {name!r}")
