"""DICOM Segmentation (SEG) export of label maps, on a reference image series."""

from lesionseg.dicomseg.export import export_dicomseg, segment_codes

__all__ = ["export_dicomseg", "segment_codes"]
