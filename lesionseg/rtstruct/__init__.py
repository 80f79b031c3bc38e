"""RTSTRUCT export: voxel-edge contours of a label map, on a reference DICOM image series."""

from lesionseg.rtstruct.contours import mask_polygons
from lesionseg.rtstruct.export import export_rtstruct
from lesionseg.rtstruct.reference import ReferenceSeries, read_reference_series

__all__ = ["ReferenceSeries", "export_rtstruct", "mask_polygons", "read_reference_series"]
