"""The errors covidct raises for bad input, each mapped to a documented CLI exit code.

The CLI prints ``covidct: error: <message>`` (one line) and exits with ``exit_code``;
no traceback ever reaches a user for these.
"""

from __future__ import annotations


class CovidCTError(Exception):
    """Base class: a problem with the user's input or request, explained in one line."""

    exit_code = 1


class UnreadableInput(CovidCTError):
    """The path does not exist, cannot be read, or is not a format covidct understands."""

    exit_code = 2


class NotCT(CovidCTError):
    """The input is readable but is not a CT (e.g. an MR DICOM series)."""

    exit_code = 3


class InconsistentSeries(CovidCTError):
    """A DICOM series whose slices do not form one regular volume (sizes, gaps, duplicates)."""

    exit_code = 4


class UnsupportedInput(CovidCTError):
    """Readable CT data in a shape covidct cannot use (e.g. 4-D, or 2-D where 3-D is needed)."""

    exit_code = 5


class NoLungsFound(CovidCTError):
    """The volume contains no lungs (e.g. a head CT)."""

    exit_code = 6


class ModelError(CovidCTError):
    """A model file is missing, corrupt or does not match its card."""

    exit_code = 7


class ConfigError(CovidCTError):
    """A training/evaluation config is invalid (the message names the key)."""

    exit_code = 8


class PacsError(CovidCTError):
    """The PACS cannot be reached, refuses the request, or does not hold what was asked for."""

    exit_code = 9


class UnsafeArchive(CovidCTError):
    """An archive refused before extraction: too many members, too many bytes, a compression ratio only a
    zip bomb has, a nested archive, or a member that would escape the extraction folder (limits:
    ``covidct.io.archive.ZipLimits``)."""

    exit_code = 10


class ImplausibleImage(CovidCTError):
    """Readable data no CT can be: mostly NaN/Inf voxels, one constant value, or intensities far outside any
    CT scale (``covidct.io.sanity``)."""

    exit_code = 11


EXIT_CODES: dict[str, int] = {
    cls.__name__: cls.exit_code
    for cls in (
        CovidCTError,
        UnreadableInput,
        NotCT,
        InconsistentSeries,
        UnsupportedInput,
        NoLungsFound,
        ModelError,
        ConfigError,
        PacsError,
        UnsafeArchive,
        ImplausibleImage,
    )
}
