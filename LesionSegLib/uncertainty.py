"""The model's uncertainty in the scene, Qt-free: what ``segment --uncertainty tta`` wrote beside the labelmap,
loaded as volumes on the input's grid and shown over it in the slice views, with the per-lesion rows on the result.

A run made with uncertainty (:class:`LesionSegLib.segmenting.SegmentationRun`, ``uncertainty="tta"``) gets back,
beside its labelmap, the entropy and mutual information volumes (nats, :mod:`lesionseg.inference.uncertainty`)
and a lesion table. The entropy becomes the foreground layer of every slice view over the input volume; both
volumes share one colour table, shown from 0 (certain) to ln(number of classes) (a uniform guess), the most a
voxel can have, so the same colour means the same doubt whatever the run. Voxels near 0 are left transparent, so
only the doubt covers the CT. Every run's cost (network passes and their seconds) goes on the result node.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import lesionseg.mrml
from lesionseg.image import Image, require_same_grid
from lesionseg.io import read_image
from lesionseg.models import ModelSpec
from LesionSegLib import nnunetmodels

UNCERTAINTY_CHOICES = ("none", "tta")  # as segment's --uncertainty

# Attributes on a result node made with uncertainty (the review reads the lesion rows back).
UNCERTAINTY_ATTRIBUTE = "LesionSeg.Uncertainty"  # the method: tta
UNCERTAINTY_PASSES_ATTRIBUTE = "LesionSeg.UncertaintyPasses"  # network passes run (the cost)
UNCERTAINTY_PASS_SECONDS_ATTRIBUTE = "LesionSeg.UncertaintyPassSeconds"  # JSON list: each pass's seconds
UNCERTAINTY_LESIONS_ATTRIBUTE = "LesionSeg.UncertaintyLesions"  # JSON list: the lesion table's rows, unchanged
# Node references from the result node to its uncertainty volumes (they survive saving the scene, unlike IDs).
VOLUME_REFERENCE_ROLES = {
    "entropy": "LesionSeg.UncertaintyEntropy",
    "mutual_information": "LesionSeg.UncertaintyMutualInformation",
}
VOLUME_TITLES = {"entropy": "entropy", "mutual_information": "mutual information"}

COLOR_TABLE_NAME = "LesionSeg uncertainty"
COLOR_TABLE_ATTRIBUTE = "LesionSeg.UncertaintyColors"  # marks the table, so each run reuses one
OVERLAY_OPACITY = 0.6
TRANSPARENT_BELOW = 0.02  # of ln(classes): a voxel this sure shows the CT under it unchanged

# The ramp the colour table interpolates, dark (certain) to bright (a guess): position 0..1, then RGB.
_RAMP = (
    (0.0, (0.08, 0.02, 0.30)),
    (0.35, (0.55, 0.10, 0.55)),
    (0.7, (0.95, 0.45, 0.12)),
    (1.0, (1.0, 0.95, 0.55)),
)
_RAMP_COLORS = 256


def uncertainty_problem(spec: ModelSpec, uncertainty: str) -> str:
    """Why ``spec``'s model cannot run with ``uncertainty``; empty when it can (or none is asked for)."""
    if uncertainty not in UNCERTAINTY_CHOICES:
        return f"unknown uncertainty {uncertainty!r}; choose one of {', '.join(UNCERTAINTY_CHOICES)}"
    if uncertainty == "none":
        return ""
    if nnunetmodels.is_nnunet_spec(spec):
        return (
            f"{spec.id!r} is an nnU-Net model: the engine computes uncertainty (flip test-time augmentation) for "
            "LesionSeg's own models only, not yet for nnU-Net result folders; turn Uncertainty off"
        )
    if spec.cascade is not None:
        return (
            f"{spec.id!r} is a two-step (cascade) model: the engine computes uncertainty for one-step models only "
            "yet; turn Uncertainty off"
        )
    return ""


def max_entropy(spec: ModelSpec) -> float:
    """The most entropy a voxel can have with ``spec``'s classes (a uniform guess), in nats: the display's top."""
    return math.log(spec.num_classes)


def output_files(result: Mapping[str, Any] | None, labelmap_path: str | Path) -> dict[str, Path]:
    """The files the run wrote beside its labelmap, by name (``entropy``, ``mutual_information``,
    ``lesions_json``, ...): as the result event's ``uncertainty`` entry lists them, else where the engine puts them."""
    from lesionseg.inference.uncertainty import uncertainty_outputs

    files = uncertainty_outputs(labelmap_path)
    listed = result or {}
    return {name: Path(listed.get(name) or path) for name, path in files.items()}


def cost_summary(result: Mapping[str, Any]) -> str:
    """One log line on what the uncertainty cost: passes, flips, seconds."""
    seconds = [float(s) for s in result.get("pass_seconds") or []]
    flips = ", ".join(str(f) for f in result.get("flips") or [])
    text = f"Uncertainty: {result.get('passes')} network passes (flips: {flips})"
    if seconds:
        text += f", {sum(seconds):.1f} s in all, {sum(seconds) / len(seconds):.2f} s per pass"
    if result.get("note"):
        text += f"; {result['note']}"
    return text


def lesion_rows(lesions_json: str | Path) -> list[dict[str, Any]]:
    """The per-lesion rows of the engine's ``<out>_lesions.json``, as written."""
    document = json.loads(Path(lesions_json).read_text(encoding="utf-8"))
    return list(document.get("lesions") or [])


def uncertainty_color_table(scene: Any) -> Any:
    """The scene's uncertainty colour table, made on first use: a continuous ramp, dark to bright."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLColorTableNode")
        if node.GetAttribute(COLOR_TABLE_ATTRIBUTE):
            return node
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_TABLE_NAME)
    table.SetTypeToUser()
    table.SetAttribute(COLOR_TABLE_ATTRIBUTE, "1")
    table.SetNumberOfColors(_RAMP_COLORS)
    positions = [p for p, _rgb in _RAMP]
    channels = [
        np.interp(np.linspace(0.0, 1.0, _RAMP_COLORS), positions, [rgb[c] for _p, rgb in _RAMP]) for c in range(3)
    ]
    for index in range(_RAMP_COLORS):
        table.SetColor(index, "", *(float(channel[index]) for channel in channels), 1.0)
    return table


def add_color_legend(volume_node: Any) -> Any:
    """A colour legend for the volume's display node, as Slicer's Colors module makes one (its
    ``AddDefaultColorLegendDisplayNode``), with MRML calls only; the existing one when there is one."""
    display = volume_node.GetDisplayNode()
    for index in range(volume_node.GetNumberOfDisplayNodes()):
        other = volume_node.GetNthDisplayNode(index)
        if (
            other is not None
            and other.IsA("vtkMRMLColorLegendDisplayNode")
            and other.GetPrimaryDisplayNode() is display
        ):
            return other
    scene, title = volume_node.GetScene(), volume_node.GetName()
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        import slicer

        # The application's Colors module registers it; a bare MRML scene (slicer-core, a script) has not.
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
    legend = scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode", f"{title} color legend")
    legend.SetTitleText(title)
    legend.SetLabelFormat("%.2f nat")
    legend.SetAndObservePrimaryDisplayNode(display)
    volume_node.AddAndObserveDisplayNodeID(legend.GetID())
    legend.Modified()  # the legend's displayable manager does not update on being added as a display node
    return legend


def uncertainty_volume(scene: Any, image: Image, name: str, top: float) -> Any:
    """A scalar volume node of ``image``, coloured by the uncertainty table over 0..``top`` nats, with a legend."""
    node = lesionseg.mrml.volume_node_from_image(scene, image, name)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(uncertainty_color_table(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, top)
    display.AutoThresholdOff()
    display.SetLowerThreshold(TRANSPARENT_BELOW * top)
    display.SetUpperThreshold(max(top, float(image.array.max(initial=0.0))) + 1.0)
    display.ApplyThresholdOn()
    add_color_legend(node)
    return node


def show_in_slice_views(scene: Any, overlay: Any, background: Any, opacity: float = OVERLAY_OPACITY) -> list[Any]:
    """Make ``overlay`` the foreground layer of every slice view, over ``background`` where a view shows none;
    returns the views' composite nodes."""
    views = []
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        view = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if not view.GetBackgroundVolumeID() and background is not None:
            view.SetBackgroundVolumeID(background.GetID())
        view.SetForegroundVolumeID(overlay.GetID())
        view.SetForegroundOpacity(opacity)
        views.append(view)
    return views


def read_uncertainty(files: Mapping[str, Path], input_image: Image) -> dict[str, Image]:
    """The run's entropy and mutual information volumes, by name; RuntimeError when one is not on the input's grid
    (read before anything is added to the scene, so a bad result adds nothing)."""
    from lesionseg.inference.uncertainty import MAP_NAMES

    images = {}
    for name in MAP_NAMES:
        image = read_image(files[name])
        try:
            require_same_grid(image, input_image, f"uncertainty volume ({name})")
        except ValueError as error:
            raise RuntimeError(f"{error}; nothing was added") from error
        images[name] = image
    return images


def add_uncertainty_volumes(
    scene: Any, images: Mapping[str, Image], result_name: str, spec: ModelSpec, input_volume: Any = None
) -> dict[str, Any]:
    """Volume nodes of :func:`read_uncertainty`'s images, named after the result, by name; the entropy is shown over
    ``input_volume`` in the slice views."""
    top = max_entropy(spec)
    nodes = {
        name: uncertainty_volume(scene, image, f"{result_name} – uncertainty ({VOLUME_TITLES[name]})", top)
        for name, image in images.items()
    }
    show_in_slice_views(scene, nodes["entropy"], input_volume)
    return nodes


def record_on_result(
    node: Any, result: Mapping[str, Any], lesions: list[dict[str, Any]], volumes: Mapping[str, Any]
) -> None:
    """Put the method, its cost, the lesion rows and references to the volumes on the result segmentation node."""
    node.SetAttribute(UNCERTAINTY_ATTRIBUTE, str(result.get("method", "tta")))
    node.SetAttribute(UNCERTAINTY_PASSES_ATTRIBUTE, str(result.get("passes", "")))
    node.SetAttribute(UNCERTAINTY_PASS_SECONDS_ATTRIBUTE, json.dumps(list(result.get("pass_seconds") or [])))
    node.SetAttribute(UNCERTAINTY_LESIONS_ATTRIBUTE, json.dumps(lesions))
    for name, volume in volumes.items():
        node.SetNodeReferenceID(VOLUME_REFERENCE_ROLES[name], volume.GetID())
