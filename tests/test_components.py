"""``covidct.components.label`` gives exactly ``scipy.ndimage.label``'s answer (labels, their numbering, the count)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from covidct.components import label

masks = st.integers(2, 3).flatmap(
    lambda nd: hnp.arrays(bool, hnp.array_shapes(min_dims=nd, max_dims=nd, min_side=1, max_side=9)))


@settings(max_examples=300, deadline=None, database=None)
@given(mask=masks, layout=st.sampled_from(["C", "F", "strided"]))
def test_label_is_scipys_label(mask: np.ndarray, layout: str) -> None:
    # cc3d numbers in its input's memory order: Fortran-ordered and strided views must still come out in C order
    if layout == "F":
        mask = np.asfortranarray(mask)
    elif layout == "strided":
        mask = np.repeat(mask, 2, axis=-1)[..., ::2]
    want, n_want = ndimage.label(mask)
    got, n_got = label(mask)
    assert n_got == n_want
    assert got.dtype == np.int32 and got.shape == mask.shape
    np.testing.assert_array_equal(got, want)


def test_label_on_a_lung_sized_volume_and_non_bool_input() -> None:
    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.standard_normal((24, 96, 96)).astype(np.float32), 2)
    mask = field > 0.05
    want, n = ndimage.label(mask)
    assert n > 20
    np.testing.assert_array_equal(label(mask)[0], want)
    np.testing.assert_array_equal(label(mask.astype(np.uint8) * 7)[0], want)  # any non-zero value is foreground
    assert label(np.zeros((0, 4, 4), bool))[1] == 0


def test_label_refuses_other_ranks() -> None:
    with pytest.raises(ValueError, match="2-D or 3-D"):
        label(np.ones(5, bool))
