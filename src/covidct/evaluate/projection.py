"""The projection model the acquisition simulations share (:mod:`covidct.evaluate.metal`, :mod:`.arms`,
:mod:`.motion`): a slice on a grid of about 256², 2-D parallel-beam views over 180° (skimage's ``radon``), and the HU
error that line integrals off by some amount leave after filtered back-projection."""

from __future__ import annotations

import numpy as np

MU_WATER = 0.0193  # /mm, about 70 keV
BEAM_HARDENING = 0.1  # a hardening material's part p of a line integral is measured as p / (1 + 0.1 p)
VIEWS = np.linspace(0.0, 180.0, 360, endpoint=False)  # parallel-beam views, degrees


def working_size(shape: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    """(block factor, (columns, rows) as cv2 takes sizes) of the grid of about 256² a slice's projections run on."""
    f = max(1, int(round(max(shape) / 256)))
    return f, (shape[1] // f, shape[0] // f)


def fbp_error(error: np.ndarray, theta: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """HU error of a slice of ``shape`` (rows, columns) reconstructed by filtered back-projection (ramp filter) from
    line integrals off by ``error`` (per pixel; skimage's sinogram of the slice at angles ``theta``, circle=False)."""
    from skimage.transform import iradon

    # radon pads the slice to a square about its centre and iradon rebuilds a square about the same centre
    side = max(shape)
    d_mu = iradon(error, theta, circle=False, output_size=side, filter_name="ramp")
    y0, x0 = side // 2 - shape[0] // 2, side // 2 - shape[1] // 2
    d_mu = d_mu[y0 : y0 + shape[0], x0 : x0 + shape[1]]
    return (1000.0 * d_mu / MU_WATER).astype(np.float32)
