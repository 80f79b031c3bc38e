"""Which volumes a model's input channels take in a module, Qt-free (the panel only shows what this says).

A model names its input channels in order (LesionSeg's spec ``inputs``, an nnU-Net model's ``channel_names``): CT
alone for most, CT and PET for a PET/CT model. The parameter node holds one volume per channel, in
:data:`CHANNEL_FIELDS` order: ``inputVolume`` is the first channel (whose grid the result lies on), ``channelVolume``
the second, ``channelVolume3`` and ``channelVolume4`` the third and fourth. The panel shows as many selectors as the
model takes images, each labelled with its channel's name. Every further channel goes to the job as it is: the
engine resamples it onto the first one's grid.
"""

from __future__ import annotations

from typing import Any

from lesionseg.models import ModelSpec

# parameter node fields, in the model's channel order (the panel has a selector for each)
CHANNEL_FIELDS = ("inputVolume", "channelVolume", "channelVolume3", "channelVolume4")
SINGLE_INPUT_LABEL = "Input volume:"


def channel_names(spec: ModelSpec | None) -> list[str]:
    """The model's channels in order; one unnamed channel for a model that names none (or for no model)."""
    if spec is None:
        return ["image"]
    return list(spec.channel_names)


def channel_labels(spec: ModelSpec | None) -> list[str]:
    """The selector labels, one per channel ("CT volume:", "PET volume:"); "Input volume:" for one unnamed."""
    names = channel_names(spec)
    if spec is None or not spec.inputs:
        return [SINGLE_INPUT_LABEL] if len(names) == 1 else [f"{name} volume:" for name in names]
    return [f"{name} volume:" for name in names]


def channel_volumes(parameterNode: Any, spec: ModelSpec | None) -> list[Any]:
    """The volume of each of the model's channels, from the parameter node (None where none is chosen)."""
    count = min(len(channel_names(spec)), len(CHANNEL_FIELDS))
    return [getattr(parameterNode, field, None) or None for field in CHANNEL_FIELDS[:count]]


def channels_problem(parameterNode: Any, spec: ModelSpec | None) -> str:
    """Why the chosen volumes cannot feed the model's further channels (empty when they can). The first channel is
    the input volume, which ``segmentReadiness`` checks."""
    from LesionSegLib.segmenting import input_volume_problem

    names = channel_names(spec)
    if len(names) > len(CHANNEL_FIELDS):
        return (
            f"Model {spec.id!r} takes {len(names)} images ({', '.join(names)}); the module offers "
            f"{len(CHANNEL_FIELDS)} volume selectors. Run it with `lesionseg segment --input` once per channel."
        )
    volumes = channel_volumes(parameterNode, spec)
    for index, (name, node) in enumerate(zip(names, volumes, strict=True)):
        if index == 0:
            continue
        if node is None:
            return f"Select the {name} volume: model {spec.id!r} takes {', '.join(names)}."
        same = next((names[other] for other in range(index) if volumes[other] is node), None)
        if same is not None:
            return f"The {name} volume is the {same} volume; choose the {name} image for the {name} channel."
        problem = input_volume_problem(node)
        if problem:
            return f"{name} channel: {problem}"
    return ""


def default_channel_volume(scene: Any, name: str, exclude: Any = None) -> Any:
    """The volume to preselect for channel ``name``: a scalar volume other than ``exclude`` whose name mentions the
    channel ("PET", "pt"), else None (the user chooses: a wrong guess would segment the wrong image)."""
    wanted = {name.casefold()}
    if name.strip().upper() in ("PET", "PT"):
        wanted |= {"pet", "pt", "suv"}
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
        if node is exclude or node.GetClassName() != "vtkMRMLScalarVolumeNode" or node.GetHideFromEditors():
            continue
        words = {w for w in "".join(c if c.isalnum() else " " for c in node.GetName().casefold()).split()}
        if words & wanted:
            return node
    return None
