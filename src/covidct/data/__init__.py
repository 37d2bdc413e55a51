"""Data adapters (the development sources and generic NIfTI data sets) and case-level splits."""

from __future__ import annotations

from covidct.data.covid_ct_md import load_covid_ct_md, load_covid_ct_md_volume
from covidct.data.nifti import detect_nifti_layout, load_nifti_dataset
from covidct.data.sources import (
    MA_FLIPPED_CASES,
    MEDSEG_SAME_PATIENT_PAIRS,
    SOURCE_FOLDERS,
    data_root,
    load_ma2020,
    load_medseg_ct100,
    load_medseg_infnet,
    load_source,
    medseg_groups,
    read_binary,
    read_grey,
    read_indices,
)
from covidct.data.splits import (
    Split,
    apply_split,
    check_groups_disjoint,
    infnet_consistent_split,
    load_split,
    medseg_split_72_10_18,
    save_split,
    split_by_group,
)
from covidct.data.ucsd import load_ucsd, ucsd_group

__all__ = [
    "MA_FLIPPED_CASES",
    "MEDSEG_SAME_PATIENT_PAIRS",
    "SOURCE_FOLDERS",
    "Split",
    "apply_split",
    "check_groups_disjoint",
    "data_root",
    "detect_nifti_layout",
    "infnet_consistent_split",
    "load_covid_ct_md",
    "load_covid_ct_md_volume",
    "load_ma2020",
    "load_medseg_ct100",
    "load_medseg_infnet",
    "load_nifti_dataset",
    "load_source",
    "load_split",
    "load_ucsd",
    "medseg_groups",
    "medseg_split_72_10_18",
    "read_binary",
    "read_grey",
    "read_indices",
    "save_split",
    "split_by_group",
    "ucsd_group",
]
