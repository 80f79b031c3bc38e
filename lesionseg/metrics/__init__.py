"""Segmentation metrics: a prediction against a reference labelmap on the same grid.

Definitions (also written into every JSON result under ``definitions``)
---------------------------------------------------------------------
* **Grid.** Prediction and reference must lie on the same grid (``require_same_grid``); otherwise the
  evaluation stops and asks for the prediction to be resampled onto the reference (nearest neighbour).
* **Labels.** Each non-zero value in either image, plus each value given a name, is evaluated as its
  own binary mask.  ``foreground`` is every non-zero voxel merged.
* **Dice** ``2|P∩R| / (|P|+|R|)``; **IoU** (Jaccard) ``|P∩R| / |P∪R|``.
* **Surface.** The voxels of a mask with at least one of their 6 face neighbours outside it; the image
  edge counts as outside.  This is ``scipy.ndimage.binary_erosion``'s default element, as MONAI uses.
* **Surface distances.** From every surface voxel centre of one mask to the nearest surface voxel centre
  of the other, in mm: index offsets are scaled by the spacing, so anisotropic voxels count correctly.
  The direction matrix does not change distances (it is a rotation or reflection).
* **HD95** the larger of the two directed 95th percentiles of those distances (``numpy.percentile``,
  linear interpolation); **HD** (``hd_mm``) the larger directed maximum; **ASSD** the mean of both
  directions' distances pooled together.  This matches MONAI's ``compute_hausdorff_distance(percentile=95)``
  and ``compute_average_surface_distance(symmetric=True)``.  SimpleITK's Hausdorff filter measures between
  all voxels rather than surfaces, so it can differ where one mask lies inside the other.
* **Volumes** voxel count × voxel volume, in mL; ``volume_diff_ml`` is prediction minus reference.
* **Empty masks** (the ``empty`` field names which side is empty, or is ``null``):

  - both empty (``"both"``): Dice 1.0, IoU 1.0, HD95, HD and ASSD 0.0 — the prediction is exactly right;
  - one empty (``"prediction"`` or ``"reference"``): Dice 0.0, IoU 0.0, and the distances are ``null``,
    since no surface exists to measure to; an infinite distance is not valid JSON, and a made-up large
    number would silently bias a mean.  Cohort means skip ``null`` and report how many values they used.

* **Lesions.** The connected components of the lesion voxels (default: all foreground merged; or the
  values given as lesion labels), with **26-connectivity** by default (touching by a corner is one lesion,
  as is usual for lesions; 6 and 18 are available).  Components smaller than the minimum lesion volume
  are dropped from both images before matching.  A reference lesion is detected (TP) when any predicted
  component overlaps it by at least one voxel, otherwise it is a false negative (FN); a predicted
  component that overlaps no reference lesion is a false positive (FP).  ``sensitivity`` = TP / reference
  lesions, ``precision`` = predicted components that touch a reference lesion / predicted components (both
  ``null`` when the denominator is 0).  ``fp_volume_ml`` is autoPET's false-positive volume (predicted
  components touching no reference), ``fn_volume_ml`` its false-negative volume (reference components
  touched by no prediction).
* **Detection by size** (``detection``; :mod:`lesionseg.metrics.detection`).  Every reference lesion is
  kept; its size is its longest extent (greatest distance between corners of its voxels, mm), and only those
  of at least the minimum reference size count for sensitivity.  Any overlapping predicted component, of any
  size, makes a hit.  A false positive is a predicted component touching no reference lesion whose volume is
  at least the minimum prediction volume.  A cohort pools sensitivity over all counted lesions and gives
  false positives per case; a FROC point is that pair for one prediction set (threshold).
* **Cohorts.** ``mean`` and ``std`` (sample standard deviation, ``null`` under two values) over cases of
  every metric; a label absent from a case in both images counts as both empty there.
"""

from lesionseg.metrics.case import evaluate_case
from lesionseg.metrics.descriptors import MASK_METRICS, MetricInfo, metric_info
from lesionseg.metrics.lesions import DEFAULT_CONNECTIVITY, lesion_metrics, lesion_table
from lesionseg.metrics.masks import dice_coefficient, label_metrics, mask_metrics, surface_distances

DEFINITIONS = {
    "surface": "mask voxels with a 6-neighbour outside the mask (image edge = outside)",
    "distances": "surface voxel centre to nearest surface voxel centre of the other mask, mm, spacing-scaled",
    **{key: metric_info(key).description for key in ("hd95_mm", "hd_mm", "assd_mm", "volume_diff_ml")},
    "empty": "'both': dice=iou=1, distances 0; 'prediction'/'reference': dice=iou=0, distances null (undefined)",
    "lesions": "connected components; a reference lesion is detected when any predicted component overlaps it",
    "detection": (
        "every reference lesion kept; counted when its longest extent (voxel corners, mm) >= min_reference_mm; "
        "any overlapping predicted component is a hit; FP = predicted component touching no reference lesion "
        "with volume >= min_prediction_mm3; cohort sensitivity pooled over lesions, FP per case"
    ),
    "std": "sample standard deviation (ddof=1); null with fewer than 2 values; means skip nulls",
}

__all__ = [
    "DEFAULT_CONNECTIVITY",
    "DEFINITIONS",
    "MASK_METRICS",
    "MetricInfo",
    "dice_coefficient",
    "evaluate_case",
    "label_metrics",
    "lesion_metrics",
    "lesion_table",
    "mask_metrics",
    "metric_info",
    "surface_distances",
]
