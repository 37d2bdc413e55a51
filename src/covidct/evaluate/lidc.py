"""LIDC-IDRI reading files: the readers' nodule contours, parsed and rasterised on a loaded CT.

A LIDC ``LidcReadMessage`` XML (namespace ``http://www.nih.gov``) holds one ``readingSession`` per
radiologist; each ``unblindedReadNodule`` (>= 3 mm) has per-slice ``roi`` contours (``edgeMap``
x = column, y = row pixel points, ``inclusion`` FALSE for a hole), small nodules have one point and
``nonNodule`` entries mark other findings. Used to leave nodules out when false lesions are counted on
otherwise healthy lungs (a nodule is not an infection lesion).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NS = {"n": "http://www.nih.gov"}


@dataclass
class Roi:
    """One contour on one slice."""

    z_mm: float
    sop_uid: str | None
    inclusion: bool
    points_xy: np.ndarray  # (N, 2) column, row pixel coordinates


@dataclass
class Nodule:
    reader: int  # 0-based reading session
    nodule_id: str
    kind: str  # "nodule" (>= 3 mm contours), "small" (< 3 mm, one point), "non-nodule"
    rois: list[Roi] = field(default_factory=list)


def parse_lidc_xml(path: str | Path) -> list[Nodule]:
    """Every reader's nodules, small nodules and non-nodules with their per-slice contours/points."""
    root = ET.parse(str(path)).getroot()
    out: list[Nodule] = []
    for reader, session in enumerate(root.findall("n:readingSession", NS)):
        for tag, kind, id_tag in (("unblindedReadNodule", "nodule", "noduleID"), ("nonNodule", "non-nodule", "nonNoduleID")):
            for node in session.findall(f"n:{tag}", NS):
                nid = (node.findtext(f"n:{id_tag}", default="", namespaces=NS) or "").strip()
                nod = Nodule(reader=reader, nodule_id=nid, kind=kind)
                if kind == "non-nodule":
                    pts = [(float(p.findtext("n:xCoord", namespaces=NS)), float(p.findtext("n:yCoord", namespaces=NS)))
                           for p in node.findall("n:locus", NS)]
                    z = float(node.findtext("n:imageZposition", default="nan", namespaces=NS))
                    uid = node.findtext("n:imageSOP_UID", namespaces=NS)
                    nod.rois.append(Roi(z, uid.strip() if uid else None, True, np.array(pts, float).reshape(-1, 2)))
                else:
                    for roi in node.findall("n:roi", NS):
                        pts = [(float(e.findtext("n:xCoord", namespaces=NS)), float(e.findtext("n:yCoord", namespaces=NS)))
                               for e in roi.findall("n:edgeMap", NS)]
                        uid = roi.findtext("n:imageSOP_UID", namespaces=NS)
                        incl = (roi.findtext("n:inclusion", default="TRUE", namespaces=NS) or "TRUE").strip().upper()
                        nod.rois.append(Roi(float(roi.findtext("n:imageZposition", namespaces=NS)),
                                            uid.strip() if uid else None, incl == "TRUE",
                                            np.array(pts, float).reshape(-1, 2)))
                    if len(nod.rois) == 1 and len(nod.rois[0].points_xy) == 1:
                        nod.kind = "small"
                out.append(nod)
    return out


def _slice_index(ct, roi: Roi) -> int | None:
    """The canonical slice of a contour: by SOP Instance UID, else by z position (within half a slice)."""
    if roi.sop_uid:
        for k, s in enumerate(ct.slices):
            if s.sop_instance_uid == roi.sop_uid:
                return k
    zs = np.array([s.z_mm for s in ct.slices], float)
    if zs.size == 0 or not np.isfinite(roi.z_mm):
        return None
    k = int(np.argmin(np.abs(zs - roi.z_mm)))
    return k if abs(zs[k] - roi.z_mm) <= 0.5 * ct.spacing[0] + 1e-3 else None


def nodule_mask(ct, nodules: list[Nodule], margin_mm: float = 10.0, kinds: tuple[str, ...] = ("nodule", "small")) -> np.ndarray:
    """(z, y, x) bool: the union of every reader's contours of ``kinds``, grown by ``margin_mm`` in 3-D.

    Contours are pixel coordinates of the DICOM image; they are placed on the canonical array, which
    equals the stored image for the usual axial orientation (rows anterior to posterior, columns right
    to left); other orientations are refused. A one-point nodule marks its pixel (the margin makes it a ball).
    """
    from scipy import ndimage
    from skimage.draw import polygon

    iop = ct.meta.get("iop")
    if iop is not None and not np.allclose(iop, [1, 0, 0, 0, 1, 0], atol=1e-3):
        raise ValueError(f"nodule contours need an axial series stored rows A->P, columns R->L (IOP {iop})")
    mask = np.zeros(ct.shape, bool)
    holes = np.zeros(ct.shape, bool)
    for nod in nodules:
        if nod.kind not in kinds:
            continue
        for roi in nod.rois:
            k = _slice_index(ct, roi)
            if k is None or roi.points_xy.size == 0:
                continue
            xs, ys = roi.points_xy[:, 0], roi.points_xy[:, 1]
            if len(xs) < 3:
                rr, cc = np.rint(ys).astype(int), np.rint(xs).astype(int)
            else:
                rr, cc = polygon(ys, xs, shape=ct.shape[1:])
                # the edge points themselves belong to the contour (LIDC draws the outline on the nodule's edge)
                rr = np.concatenate([rr, np.clip(np.rint(ys).astype(int), 0, ct.shape[1] - 1)])
                cc = np.concatenate([cc, np.clip(np.rint(xs).astype(int), 0, ct.shape[2] - 1)])
            ok = (rr >= 0) & (rr < ct.shape[1]) & (cc >= 0) & (cc < ct.shape[2])
            (mask if roi.inclusion else holes)[k, rr[ok], cc[ok]] = True
    mask &= ~holes
    if margin_mm > 0 and mask.any():
        dist = ndimage.distance_transform_edt(~mask, sampling=ct.spacing)
        mask = dist <= margin_mm
    return mask
