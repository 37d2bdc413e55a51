"""A pydicom decoding plugin backed by imagecodecs, for the lossless JPEG transfer syntaxes CT series use.

imagecodecs decodes JPEG lossless (process 14) with libjpeg-turbo and JPEG-LS with CharLS. On the real series
here that is several times faster than GDCM per slice (COVID-CT-MD P001, JPEG lossless SV1: 1.9 against 7.2 ms;
JPEG-LS: about 1.7x; docs/BENCHMARKS.md), with identical pixels. It is only the frame decoder: pydicom still
parses the file, splits the frames and applies its sign and unused-bit corrections, as with its own plugins.
Only lossless syntaxes are registered (a lossy JPEG's inverse DCT may round differently from GDCM's); any frame
imagecodecs refuses raises, and the loader then decodes that file with GDCM or pylibjpeg as before.
"""

from __future__ import annotations

import importlib.util

from pydicom import uid

LABEL = "imagecodecs"
# JPEG lossless (processes 14 and 14 SV1) and JPEG-LS (lossless and near-lossless: no transform, so exact)
SYNTAXES = (uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEGLSNearLossless)
DECODER_DEPENDENCIES = {ts: ("numpy", "imagecodecs") for ts in SYNTAXES}


def is_available(transfer_syntax: str) -> bool:
    """pydicom's plugin protocol: whether this plugin can decode ``transfer_syntax`` here."""
    return transfer_syntax in SYNTAXES and importlib.util.find_spec("imagecodecs") is not None


def _decode_frame(src: bytes, runner) -> bytes:  # noqa: ANN001 - pydicom's DecodeRunner
    """pydicom's plugin protocol: one encoded frame to its decoded bytes (one sample per pixel only)."""
    import imagecodecs

    if runner.samples_per_pixel != 1:
        raise ValueError("imagecodecs plugin: only single-sample (greyscale) frames")
    if runner.transfer_syntax in (uid.JPEGLSLossless, uid.JPEGLSNearLossless):
        arr = imagecodecs.jpegls_decode(src)
    else:
        arr = imagecodecs.jpeg8_decode(src)
    if arr.ndim != 2 or arr.shape != (runner.rows, runner.columns) or arr.dtype.itemsize not in (1, 2):
        raise ValueError(f"imagecodecs plugin: decoded {arr.shape} {arr.dtype}, expected ({runner.rows}, {runner.columns})")
    # as pydicom's own plugins do: the decoded sample size decides the item size its array is read with
    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)
    return arr.tobytes()


_registered = False


def register() -> bool:
    """Add this plugin to pydicom's decoders of :data:`SYNTAXES` (once); False when imagecodecs is missing."""
    global _registered
    if _registered:
        return True
    if importlib.util.find_spec("imagecodecs") is None:
        return False
    from pydicom.pixels.decoders.base import get_decoder

    for ts in SYNTAXES:
        decoder = get_decoder(ts)
        if LABEL not in decoder.available_plugins:
            decoder.add_plugin(LABEL, (__name__, "_decode_frame"))
    _registered = True
    return True
