"""The anatomical checks on a whole HU volume's pleural effusion: free fluid reaches the lower half of the lungs, and
one component of it stays on one side of the mediastinum (covidct.pipeline.lesions._in_one_pleural_base)."""

import numpy as np

from covidct.labels import LEFT_LUNG, RIGHT_LUNG
from covidct.pipeline.lesions import _plausible_effusion

SPACING = (2.0, 1.5, 1.5)


def _chest() -> tuple[np.ndarray, np.ndarray]:
    """HU (soft tissue at 40) and lung labels: slices run feet -> head, rows anterior -> posterior, x from the
    patient's right to left (the right lung at small x)."""
    hu = np.full((40, 80, 80), 40.0, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    labels[2:38, 14:50, 10:35] = RIGHT_LUNG
    labels[2:38, 14:50, 45:71] = LEFT_LUNG
    hu[labels > 0] = -850.0
    return hu, labels


def _keep(effusion: np.ndarray, hu: np.ndarray, labels: np.ndarray, **kw) -> np.ndarray:
    return _plausible_effusion(effusion, labels > 0, SPACING, hu=hu, lung_labels=labels, **kw)


def test_fluid_only_at_the_apex_is_not_a_free_effusion():
    hu, labels = _chest()
    base, apex = np.zeros(hu.shape, bool), np.zeros(hu.shape, bool)
    base[2:14, 50:54, 10:35] = True  # a posterior layer over the lowest third of the right lung
    apex[26:38, 50:54, 45:71] = True  # the same over the top third of the left lung
    hu[base | apex] = 10.0
    kept = _keep(base | apex, hu, labels)
    assert kept[base].all() and not kept[apex].any()
    # reaching down into the lower half is enough, however high it rises
    tall = np.zeros(hu.shape, bool)
    tall[18:38, 50:54, 45:71] = True
    hu[tall] = 10.0
    assert _keep(tall, hu, labels)[tall].all()
    # without HU (8-bit slices, whose order is not known) the check is not made
    assert _plausible_effusion(apex, labels > 0, SPACING)[apex].all()


def test_fluid_across_the_midline_is_not_pleural():
    hu, labels = _chest()
    across = np.zeros(hu.shape, bool)
    across[2:14, 50:55, 10:71] = True  # behind both lungs and the spine between them, one component
    hu[across] = 10.0
    assert not _keep(across, hu, labels).any()
    # the same fluid as two effusions, one behind each lung, is kept: each lies in its own pleural space
    both = across.copy()
    both[:, :, 33:47] = False
    kept = _keep(both, hu, labels)
    assert kept[both].all()
    # a quarter across is tolerated (an oblique patient, a midline that is not the mediastinum's centre)
    leaning = np.zeros(hu.shape, bool)
    leaning[2:14, 50:54, 10:43] = True  # 33 columns, 3 of them (x 40-42) past the midline at x 39.5
    hu[leaning] = 10.0
    assert _keep(leaning, hu, labels)[leaning].all()
    # without the lung labels (one lung, or a caller that has none) only the other checks apply
    assert _plausible_effusion(across, labels > 0, SPACING, hu=hu)[across].all()


def test_the_checks_follow_the_patient_position():
    """Lying on the left side, free fluid layers along the left lung's lateral wall, from the base up: kept; the same
    layer confined to the top of the lungs is not, whatever the position."""
    from covidct.volume import DEPENDENT_SIDE

    hu, labels = _chest()
    lateral, lateral_apex = np.zeros(hu.shape, bool), np.zeros(hu.shape, bool)
    lateral[2:24, 18:46, 71:75] = True  # beyond the left lung's lateral edge (x 70), lower part of the lungs
    lateral_apex[26:38, 18:46, 71:75] = True
    hu[lateral | lateral_apex] = 10.0
    kept = _keep(lateral | lateral_apex, hu, labels, dependent=DEPENDENT_SIDE["HFDL"])
    assert kept[lateral].all() and not kept[lateral_apex].any()
