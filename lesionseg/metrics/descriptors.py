"""One description per metric: the key it has in results, its title and unit for people, what it measures.

Whatever names a metric reads it here: the columns of ``lesionseg evaluate``'s CSV, the ``definitions`` written
into its JSON, and the comparison table of the Slicer modules. Slicer's SegmentStatistics plugins describe each
of their measurements once in the same way (``getMeasurementInfo``), so a title or unit cannot drift between a
table and a file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    key: str  # the name in result dictionaries, JSON and CSV headers
    title: str  # the name a person reads in a table
    unit: str = ""  # empty: a ratio without unit
    description: str = ""
    short: str = ""  # the title in the report's narrow tables; empty: the title

    @property
    def header(self) -> str:
        """The title with its unit, e.g. ``HD95 (mm)``."""
        return _with_unit(self.title, self.unit)

    @property
    def short_header(self) -> str:
        """The short title with its unit, e.g. ``ΔV (mL)``."""
        return _with_unit(self.short or self.title, self.unit)


def _with_unit(title: str, unit: str) -> str:
    return f"{title} ({unit})" if unit else title


# What :func:`lesionseg.metrics.mask_metrics` measures for one mask pair, in the order tables list them.
MASK_METRICS = (
    MetricInfo("dice", "Dice", "", "2|P∩R| / (|P|+|R|)"),
    MetricInfo("iou", "IoU", "", "|P∩R| / |P∪R| (Jaccard)"),
    MetricInfo("hd95_mm", "HD95", "mm", "max of the two directed 95th percentiles (linear interpolation)"),
    MetricInfo("hd_mm", "HD", "mm", "max of the two directed maxima"),
    MetricInfo("assd_mm", "ASSD", "mm", "mean of both directions' surface distances pooled"),
    MetricInfo("volume_pred_ml", "Volume", "mL", "predicted voxels times the voxel volume", "V pred"),
    MetricInfo("volume_ref_ml", "Reference volume", "mL", "reference voxels times the voxel volume", "V ref"),
    MetricInfo("volume_diff_ml", "Volume difference", "mL", "prediction minus reference", "ΔV"),
)
MASK_METRIC_KEYS = tuple(info.key for info in MASK_METRICS)
_BY_KEY = {info.key: info for info in MASK_METRICS}


def metric_info(key: str) -> MetricInfo:
    """The description of the metric called ``key`` in results."""
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"no metric is called {key!r}; the metrics are {', '.join(_BY_KEY)}") from None
