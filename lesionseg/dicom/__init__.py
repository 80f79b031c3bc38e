"""DICOM input (series discovery, volume building) and the CT series writer."""

from lesionseg.dicom.series import Scan, Series, scan_folder
from lesionseg.dicom.volume import Volume, load_series, read_dicom_series, read_dicom_volume
from lesionseg.dicom.write import write_ct_series

__all__ = [
    "Scan",
    "Series",
    "Volume",
    "load_series",
    "read_dicom_series",
    "read_dicom_volume",
    "scan_folder",
    "write_ct_series",
]
