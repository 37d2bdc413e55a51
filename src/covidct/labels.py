"""Label maps shared by models, reports, the DICOM SEG writer and the CLI (data, not logic)."""

from __future__ import annotations

# Lung labels use the patient's left/right (lungmask uses the opposite: 1 = right, 2 = left).
LUNG_LABELS: dict[int, str] = {0: "background", 1: "left_lung", 2: "right_lung"}
LESION_LABELS: dict[int, str] = {0: "none", 1: "ggo", 2: "consolidation", 3: "effusion"}
LESION_NAMES: dict[int, str] = {1: "ground-glass opacity", 2: "consolidation", 3: "pleural effusion"}

LEFT_LUNG, RIGHT_LUNG = 1, 2
GGO, CONSOLIDATION, EFFUSION = 1, 2, 3

# Display colours (RGB) for overlays.
LUNG_COLORS: dict[int, tuple[int, int, int]] = {1: (64, 160, 255), 2: (80, 220, 120)}
LESION_COLORS: dict[int, tuple[int, int, int]] = {
    1: (255, 200, 0),
    2: (255, 60, 60),
    3: (180, 80, 255),
}

DIAGNOSIS_CLASSES: tuple[str, ...] = ("covid19", "pneumonia", "normal")
