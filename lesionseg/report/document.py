"""The evaluation report as Markdown and HTML: metric tables and the overlay images."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lesionseg.io.atomic import write_bytes_atomic
from lesionseg.metrics.descriptors import MASK_METRIC_KEYS, metric_info

_LABEL_KEYS = list(MASK_METRIC_KEYS)
_LABEL_HEADER = ["Label", "Name", *(metric_info(key).short_header for key in _LABEL_KEYS), "Empty"]
_LESION_HEADER = ["Ref lesions", "Pred lesions", "TP", "FN", "FP", "Sensitivity", "Precision", "FP vol (mL)"]
_LESION_HEADER += ["FN vol (mL)"]
_LESION_KEYS = ["n_ref", "n_pred", "tp", "fn", "fp", "sensitivity", "precision", "fp_volume_ml", "fn_volume_ml"]
_NOTE = (
    "— marks a value that is undefined: a distance when exactly one mask is empty. Dice is 1 and distances 0 "
    "when both are empty. Surface distances run between voxel centres of 6-connected surfaces, in mm."
)


@dataclass
class Section:
    heading: str
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    text: str = ""
    images: list[str] = field(default_factory=list)


def _number(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _mean_std(stats: dict[str, Any]) -> str:
    if stats["mean"] is None:
        return "—"
    spread = f" ± {stats['std']:.3f}" if stats["std"] is not None else ""
    return f"{stats['mean']:.3f}{spread} (n={stats['n']})"


def _label_rows(labels: dict[str, Any], foreground: dict[str, Any] | None) -> list[list[str]]:
    rows = [
        [key, row["name"], *(_number(row[k]) for k in _LABEL_KEYS), row["empty"] or ""] for key, row in labels.items()
    ]
    if foreground is not None and len(labels) > 1:
        rows.append(["all", "foreground", *(_number(foreground[k]) for k in _LABEL_KEYS), foreground["empty"] or ""])
    return rows


def _lesion_text(lesions: dict[str, Any]) -> str:
    which = lesions["lesion_labels"]
    which = which if isinstance(which, str) else "labels " + ", ".join(str(v) for v in which)
    return (
        f"Lesions: {which}; {lesions['connectivity']}-connectivity; minimum volume {lesions['min_lesion_mm3']:g} mm³; "
        "a reference lesion is detected when a predicted component overlaps it."
    )


def case_sections(result: dict[str, Any], images: list[Path], report_dir: Path) -> list[Section]:
    """Sections for one case."""
    lesions = result["lesions"]
    return [
        Section("Files", text=f"Prediction: `{result.get('pred', '')}`  \nReference: `{result.get('ref', '')}`"),
        Section("Metrics per label", _LABEL_HEADER, _label_rows(result["labels"], result["foreground"]), _NOTE),
        Section(
            "Lesion-wise", _LESION_HEADER, [[_number(lesions[k]) for k in _LESION_KEYS]], text=_lesion_text(lesions)
        ),
        Section(
            "Slices where prediction and reference disagree most",
            text="Reference contours solid, prediction dashed; magenta fill where the labels differ.",
            images=[os.path.relpath(p, report_dir) for p in images],
        ),
    ]


def cohort_sections(result: dict[str, Any], images: dict[str, list[Path]], report_dir: Path) -> list[Section]:
    """Sections for a cohort: the summary, then per-case rows, then each case's overlays."""
    summary = result["summary"]
    keys = ["dice", "iou", "hd95_mm", "hd_mm", "assd_mm", "volume_diff_ml"]
    header = ["Label", "Name", *(metric_info(key).short_header for key in keys), "Empty (both/pred/ref)"]
    rows = []
    for key, row in [*summary["labels"].items(), ("all", {"name": "foreground", **summary["foreground"]})]:
        empty = row["empty_cases"]
        counts = f"{empty['both']}/{empty['prediction']}/{empty['reference']}"
        rows.append([key, row["name"], *(_mean_std(row[k]) for k in keys), counts])
    les = summary["lesions"]
    lesion_rows = [
        [
            str(les["totals"]["n_ref"]),
            str(les["totals"]["tp"]),
            str(les["totals"]["fn"]),
            str(les["totals"]["fp"]),
            _number(les["sensitivity_pooled"]),
            _number(les["fp_per_case"]),
            _mean_std(les["fp_volume_ml"]),
            _mean_std(les["fn_volume_ml"]),
        ]
    ]
    case_rows = []
    for case in result["cases"]:
        for key, row in case["labels"].items():
            case_rows.append([case["case"], key, row["name"], *(_number(row[k]) for k in _LABEL_KEYS[:5])])
    sections = [
        Section(
            f"Summary over {summary['n_cases']} cases (mean ± sample std)",
            header,
            rows,
            _NOTE + " Means skip undefined values; n counts the values used.",
        ),
        Section(
            "Lesion-wise, whole cohort",
            ["Ref lesions", "TP", "FN", "FP", "Sensitivity (pooled)", "FP per case", "FP vol (mL)", "FN vol (mL)"],
            lesion_rows,
            _lesion_text(result["cases"][0]["lesions"]) if result["cases"] else "",
        ),
        Section("Per case", ["Case", *_LABEL_HEADER[:7]], case_rows),
    ]
    for case, paths in images.items():
        if paths:
            sections.append(Section(f"Case {case}", images=[os.path.relpath(p, report_dir) for p in paths]))
    return sections


def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.heading}", ""]
        if section.header:
            lines.append("| " + " | ".join(section.header) + " |")
            lines.append("|" + "---|" * len(section.header))
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in section.rows]
            lines.append("")
        if section.text:
            lines += [section.text, ""]
        lines += [f"![{Path(src).stem}]({src})" for src in section.images]
        if section.images:
            lines.append("")
    return "\n".join(lines)


def to_html(title: str, sections: list[Section]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}img{max-width:48%;margin:4px}</style>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{esc(section.heading)}</h2>")
        if section.header:
            parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in section.header) + "</tr>")
            for row in section.rows:
                parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        if section.text:
            paragraph = esc(section.text).replace("  \n", "<br>")
            parts.append(f"<p>{paragraph}</p>")
        parts += [f'<img src="{esc(src)}" alt="{esc(Path(src).stem)}">' for src in section.images]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(report_dir: Path, title: str, sections: list[Section]) -> list[Path]:
    """Write ``report.md`` and ``report.html`` into ``report_dir``; returns both paths."""
    report_dir = Path(report_dir)
    md, page = report_dir / "report.md", report_dir / "report.html"
    write_bytes_atomic(md, to_markdown(title, sections).encode("utf-8"))
    write_bytes_atomic(page, to_html(title, sections).encode("utf-8"))
    return [md, page]
