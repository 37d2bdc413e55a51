"""Slice images stored transposed (covidct.slice_view): found from the lungs, analysed and segmented in the
radiological view, masks written back in the image's own layout; --view as-is leaves them as given."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from covidct.cli import main
from covidct.phantom import make_phantom
from covidct.pipeline import Analyzer, analyze
from covidct.preprocess import apply_window
from covidct.slice_view import TRANSPOSED_NOTE, lungs_one_above_the_other, transposed
from covidct.volume import CT


def _two_lungs(shape=(120, 160), centres=((60, 50), (60, 110)), radii=((40, 22), (40, 22))) -> np.ndarray:
    yy, xx = np.indices(shape)
    mask = np.zeros(shape, bool)
    for (cy, cx), (ry, rx) in zip(centres, radii, strict=True):
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


def test_two_lungs_side_by_side_or_one_above_the_other():
    side = _two_lungs()
    assert lungs_one_above_the_other(side) is False
    assert lungs_one_above_the_other(side.T) is True
    # one lung, or a second far smaller (an apex, a base): undecided
    assert lungs_one_above_the_other(_two_lungs(centres=((60, 50),), radii=((40, 22),))) is None
    assert lungs_one_above_the_other(_two_lungs(radii=((40, 22), (8, 6)))) is None
    assert lungs_one_above_the_other(np.zeros((20, 20), bool)) is None


def test_transposed_ct_swaps_rows_columns_and_spacing():
    arr = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 6, 4)
    ct = CT(array=arr, spacing=(1.0, 0.5, 0.8), affine=np.diag([0.8, 0.5, 1.0, 1.0]), is_hu=False, kind="image")
    t = transposed(ct)
    assert t.array.shape == (1, 4, 6) and np.array_equal(t.array[0], arr[0].T)
    assert t.spacing == (1.0, 0.8, 0.5)
    # each voxel keeps its place in the world: (x, y) of the transposed slice is (y, x) of the stored one
    assert np.allclose(t.affine @ [3, 1, 0, 1], ct.affine @ [1, 3, 0, 1])
    assert np.array_equal(transposed(t).array, arr)


@pytest.fixture(scope="module")
def slice_images(tmp_path_factory):
    """A phantom's fullest lung slice as an 8-bit PNG, as it is and stored transposed."""
    ph = make_phantom(seed=4, shape=(20, 128, 128), spacing=(5.0, 2.5, 2.5), lesion_burden=0.2)
    k = int(np.argmax((ph.lungs > 0).reshape(ph.ct.n_slices, -1).sum(1)))
    img = (apply_window(ph.ct.array[k], "lung") * 255).astype(np.uint8)[:, 4:]  # non-square on purpose
    folder = tmp_path_factory.mktemp("view")
    Image.fromarray(img).save(folder / "as_is.png")
    Image.fromarray(np.ascontiguousarray(img.T)).save(folder / "turned.png")
    return folder


def test_analyze_reads_a_transposed_slice_in_the_radiological_view(slice_images, tmp_path):
    analyzer = Analyzer()
    plain = analyze(slice_images / "as_is.png", tmp_path / "a", analyzer=analyzer)
    turned = analyze(slice_images / "turned.png", tmp_path / "t", analyzer=analyzer)
    assert plain.lungs.any() and TRANSPOSED_NOTE not in plain.report["warnings"]
    assert TRANSPOSED_NOTE in turned.report["warnings"]
    # the same analysis, its masks in the transposed file's own layout
    assert np.array_equal(turned.lungs, plain.lungs.transpose(0, 2, 1))
    assert np.array_equal(turned.lesions, plain.lesions.transpose(0, 2, 1))
    assert turned.report["involvement_percent"] == plain.report["involvement_percent"]
    written = np.asarray(Image.open(tmp_path / "t" / "lesions.png"))
    assert written.shape == Image.open(slice_images / "turned.png").size[::-1]
    assert TRANSPOSED_NOTE in json.loads((tmp_path / "t" / "report.json").read_text())["warnings"]
    # as-is: the transposed file analysed as given, no note
    as_is = analyze(slice_images / "turned.png", tmp_path / "x", analyzer=Analyzer(slice_view="as-is"))
    assert TRANSPOSED_NOTE not in as_is.report["warnings"]
    with pytest.raises(ValueError, match="slice_view"):
        Analyzer(slice_view="sideways")


def test_segment_writes_a_transposed_slice_mask_in_its_own_layout(slice_images, tmp_path, capsys):
    assert main(["segment", str(slice_images / "as_is.png"), str(slice_images / "turned.png"), "-o",
                 str(tmp_path / "auto"), "--task", "lesions"]) == 0
    err = capsys.readouterr().err
    assert "turned.png" in err and "as_is.png" not in err and "looked transposed" in err
    plain = np.asarray(Image.open(tmp_path / "auto" / "as_is.png"))
    turned = np.asarray(Image.open(tmp_path / "auto" / "turned.png"))
    assert np.array_equal(turned, plain.T)
    assert main(["segment", str(slice_images / "turned.png"), "-o", str(tmp_path / "raw"), "--task", "lesions",
                 "--view", "as-is"]) == 0
    assert "looked transposed" not in capsys.readouterr().err
    assert main(["segment", str(slice_images / "turned.png"), "-o", str(tmp_path / "bad"), "--view", "up"]) == 64


def test_a_volume_stored_transposed_is_warned_not_turned():
    from covidct.slice_view import transposed_volume_warnings

    side = np.repeat(_two_lungs()[None], 8, axis=0)
    assert transposed_volume_warnings(side) == []
    warning = transposed_volume_warnings(side.transpose(0, 2, 1))
    assert len(warning) == 1 and "8 of 8 slices" in warning[0] and "front and back" in warning[0]
    assert transposed_volume_warnings(side[:4].transpose(0, 2, 1)) == []  # under 5 decided slices: no call
    assert transposed_volume_warnings(np.zeros((3, 10, 10), bool)) == []
    # through the analysis: a phantom volume with its rows and columns swapped (the geometry left as it was)
    ph = make_phantom(seed=2, shape=(24, 128, 128), spacing=(5.0, 2.6, 2.6), lesions=False)
    plain = Analyzer()(ph.ct)
    turned = Analyzer()(CT(array=np.ascontiguousarray(ph.ct.array.transpose(0, 2, 1)), spacing=ph.ct.spacing,
                           affine=ph.ct.affine, is_hu=True, kind="array"))
    assert not [w for w in plain.report["warnings"] if "one above the other" in w]
    assert [w for w in turned.report["warnings"] if "one above the other" in w]


def test_a_volume_stored_flipped_front_to_back_or_head_to_feet_is_warned():
    from covidct.slice_view import flipped_volume_warnings, lung_end_offsets

    ph = make_phantom(seed=3, shape=(40, 128, 128), spacing=(5.0, 2.6, 2.6), lesions=False)  # apices inside it
    lungs = ph.lungs
    base, apex = lung_end_offsets(lungs)
    assert base > 0.1 and base > apex  # the bases lie behind the lungs' middle, and further back than the apices
    assert flipped_volume_warnings(lungs) == []
    front_back = flipped_volume_warnings(lungs[:, ::-1])
    assert len(front_back) == 1 and "flipped front to back (" in front_back[0]
    head_feet = flipped_volume_warnings(lungs[::-1])
    assert len(head_feet) == 1 and "flipped head to feet (" in head_feet[0]
    both = flipped_volume_warnings(lungs[::-1, ::-1])
    assert len(both) == 1 and "flipped head to feet and front to back" in both[0]
    # an end the scan cuts off is not judged; nor is a handful of slices
    area = (lungs > 0).sum((1, 2))
    bases_cut = lungs[int(np.flatnonzero(area >= 0.3 * area.max())[0]):]
    assert lung_end_offsets(bases_cut)[0] is None and lung_end_offsets(bases_cut)[1] is not None
    assert flipped_volume_warnings(bases_cut[:, ::-1]) == [] and flipped_volume_warnings(bases_cut[::-1]) == []
    assert lung_end_offsets(np.zeros((3, 10, 10), bool)) == (None, None)
    # through the analysis: the phantom's slices flipped front to back, its geometry left as it was
    plain = Analyzer()(ph.ct)
    flipped = Analyzer()(CT(array=np.ascontiguousarray(ph.ct.array[:, ::-1]), spacing=ph.ct.spacing,
                            affine=ph.ct.affine, is_hu=True, kind="array"))
    assert not [w for w in plain.report["warnings"] if "flipped" in w]
    assert [w for w in flipped.report["warnings"] if "flipped front to back" in w]


def _mirrored_left_right(lungs: np.ndarray) -> np.ndarray:
    """A label mask as covidct finds it in a volume whose array is flipped left to right with its geometry kept: the
    lungs change sides and each is labelled by the side it now lies on."""
    flipped = lungs[:, :, ::-1]
    return np.where(flipped == 1, 2, np.where(flipped == 2, 1, flipped)).astype(lungs.dtype)


def test_a_volume_stored_flipped_left_to_right_is_warned():
    from covidct.slice_view import MEDIAL_FLIP_BELOW, flipped_volume_warnings, medial_edge_offset

    ph = make_phantom(seed=3, shape=(40, 128, 128), spacing=(5.0, 2.6, 2.6), lesions=False)
    lungs = ph.lungs
    # behind the heart the left lung's inner edge lies further from the middle (the descending aorta)
    assert medial_edge_offset(lungs) > -MEDIAL_FLIP_BELOW
    assert flipped_volume_warnings(lungs) == []
    mirrored = _mirrored_left_right(lungs)
    assert medial_edge_offset(mirrored) == pytest.approx(-medial_edge_offset(lungs))
    left_right = flipped_volume_warnings(mirrored)
    assert len(left_right) == 1 and "flipped left to right (" in left_right[0] and "lung bases" not in left_right[0]
    every_way = flipped_volume_warnings(_mirrored_left_right(lungs[::-1, ::-1]))
    assert len(every_way) == 1 and "flipped head to feet and front to back and left to right (" in every_way[0]
    # flipped head to feet and front to back only: the band behind the heart is found mirrored, no left-right flip
    assert "left to right" not in flipped_volume_warnings(lungs[::-1, ::-1])[0]
    # lungs cut by a tight field of view (their outer edge moves the middle): those slices are not judged, whether the
    # lungs reach the image's side or, in HU, air or the scanner's padding lies just outside them
    cols = np.flatnonzero((mirrored > 0).any((0, 1)))
    assert medial_edge_offset(mirrored[:, :, cols[0] + 5:]) is None
    assert medial_edge_offset(mirrored, hu=ph.ct.array[:, :, ::-1]) == pytest.approx(medial_edge_offset(mirrored))
    padded = ph.ct.array[:, :, ::-1].copy()
    padded[:, :, : cols[0] + 8] = -3024.0
    assert medial_edge_offset(mirrored, hu=padded) is None and flipped_volume_warnings(mirrored, padded) == []
    # one lung, or a handful of slices: not judged
    assert medial_edge_offset(np.where(lungs == 2, 0, lungs)) is None
    assert medial_edge_offset(lungs[:3]) is None
    # through the analysis: the phantom's slices flipped left to right, its geometry left as it was
    flipped = Analyzer()(CT(array=np.ascontiguousarray(ph.ct.array[:, :, ::-1]), spacing=ph.ct.spacing,
                            affine=ph.ct.affine, is_hu=True, kind="array"))
    assert [w for w in flipped.report["warnings"] if "flipped left to right" in w]
    assert flipped.report["diagnosis"]["label"] == "normal"
