"""Human-readable evaluation reports: PNG overlays of disagreeing slices, Markdown and HTML tables."""

from lesionseg.report.document import Section, case_sections, cohort_sections, write_report
from lesionseg.report.overlays import case_overlays, disagreement_slices, render_slice

__all__ = [
    "Section",
    "case_overlays",
    "case_sections",
    "cohort_sections",
    "disagreement_slices",
    "render_slice",
    "write_report",
]
