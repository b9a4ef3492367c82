"""Names and columns of the TCIA Spine-Mets-CT-SEG collection as its downloads lay them out."""

from __future__ import annotations

from wsbench.api import Phenotype

COLLECTION = "Spine-Mets-CT-SEG"
"""TCIA collection name (NBIA folder name and clinical sheet name)."""

IDC_COLLECTION = "spine_mets_ct_seg"
"""IDC collection id (top folder of an idc-index download)."""

CLINICAL_FILE = f"{COLLECTION}_Clinical.xlsx"
CLINICAL_SHEET = COLLECTION
LEVEL_COLUMNS = ("Vertebrae with Lesions", "Blastic", "Lytic", "Mixed")
"""Free-text level-list columns of the clinical sheet."""

PHENOTYPE_COLUMNS = {
    "Blastic": Phenotype.BLASTIC,
    "Lytic": Phenotype.LYTIC,
    "Mixed": Phenotype.MIXED,
}

METADATA_COLUMNS = (
    "Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID",
    "Study UID", "Study Description", "Study Date", "Series Description", "Manufacturer",
    "Modality", "SOP Class Name", "SOP Class UID", "Number of Images", "File Size",
    "File Location", "Download Timestamp",
)  # fmt: skip
"""Columns of the NBIA Data Retriever's ``metadata.csv``."""
