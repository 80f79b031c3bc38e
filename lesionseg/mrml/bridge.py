"""Nodes of a Slicer MRML scene to engine images and back.

Every function takes the scene or the nodes it works on as arguments and imports ``slicer`` lazily,
and only its MRML classes, so it runs both in the Slicer app and on PyPI's ``slicer-core``.
MRML speaks RAS; the engine speaks LPS (see :mod:`lesionseg.image`). The flip happens here only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from lesionseg.image import RAS_FROM_LPS, Image
from lesionseg.labels import LabelInfo, label_table

if TYPE_CHECKING:  # pragma: no cover
    import slicer

_VOLUME_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode")


def _matrix_to_numpy(vtk_matrix: Any) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray) -> Any:
    import vtk

    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(array[r, c]))
    return out


def _world_ras_from_ijk(node: Any) -> np.ndarray:
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = _matrix_to_numpy(ijk_to_ras)
    parent = node.GetParentTransformNode()
    if parent is not None:
        if not parent.IsTransformToWorldLinear():
            raise ValueError(
                f"volume {node.GetName()!r} is under a non-linear transform; harden the transform "
                "(Data module → right-click → Harden transform) before segmenting"
            )
        to_world = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(to_world)
        matrix = _matrix_to_numpy(to_world) @ matrix
    return matrix


def image_from_volume_node(node: "slicer.vtkMRMLVolumeNode") -> Image:
    """A copy of a scalar or labelmap volume node as an engine image, in world (LPS) space."""
    if node is None:
        raise ValueError("no volume selected: choose an input volume")
    if node.GetClassName() not in _VOLUME_CLASSES:
        raise ValueError(f"{node.GetName()!r} is a {node.GetClassName()}; a scalar or labelmap volume is needed")
    image_data = node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise ValueError(f"volume {node.GetName()!r} holds no voxels; load image data into it first")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"volume {node.GetName()!r} has {image_data.GetNumberOfScalarComponents()} components per voxel"
        )
    from vtk.util import numpy_support

    dims = image_data.GetDimensions()
    array = numpy_support.vtk_to_numpy(image_data.GetPointData().GetScalars()).reshape(dims[::-1]).copy()
    lps = RAS_FROM_LPS @ _world_ras_from_ijk(node)  # the flip is its own inverse
    linear = lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    return Image(array, spacing=spacing, origin=lps[:3, 3], direction=linear / spacing)


def ensure_segmentation_converters() -> None:
    """Register Slicer's segmentation conversion rules when nothing has (slicer-core outside the app).

    The Slicer app registers them at start-up; plain slicer-core does not, and then a segmentation
    cannot create empty segments or closed surfaces.
    """
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    registered = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for name in (
        "vtkBinaryLabelmapToClosedSurfaceConversionRule",
        "vtkClosedSurfaceToBinaryLabelmapConversionRule",
        "vtkClosedSurfaceToFractionalLabelmapConversionRule",
        "vtkFractionalLabelmapToClosedSurfaceConversionRule",
    ):
        if name not in registered and hasattr(slicer, name):
            factory.RegisterConverterRule(getattr(slicer, name)())


def _remove_node(scene: Any, node: Any) -> None:
    display = node.GetDisplayNode()
    scene.RemoveNode(node)
    if display is not None:
        scene.RemoveNode(display)


def _slicer_safe_array(array: np.ndarray) -> np.ndarray:
    # Slicer does not display 64-bit integer volumes; narrow them when no value is lost.
    if array.dtype in (np.int64, np.uint64):
        if array.size and (array.min() < np.iinfo(np.int32).min or array.max() > np.iinfo(np.int32).max):
            raise ValueError("voxel values exceed the 32-bit range Slicer can show; rescale the image first")
        return array.astype(np.int32)
    return array


def set_node_geometry(node: Any, image: Image) -> None:
    """Give a volume node ``image``'s grid (spacing, origin and directions, converted to RAS)."""
    node.SetIJKToRASMatrix(_numpy_to_matrix(RAS_FROM_LPS @ image.index_to_world))


def volume_node_from_image(
    scene: "slicer.vtkMRMLScene",
    image: Image,
    name: str,
    labelmap: bool = False,
    node: Any | None = None,
    display: bool = True,
) -> Any:
    """Put ``image`` into ``node`` (or a new volume node) in ``scene``; returns the node."""
    import slicer.util

    class_name = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    elif node.GetClassName() != class_name:
        raise ValueError(f"{node.GetName()!r} is a {node.GetClassName()}, expected {class_name}")
    array = image.array
    if labelmap and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError("a labelmap must hold whole numbers; round or threshold the image first")
        array = array.astype(np.int32)
    slicer.util.updateVolumeFromArray(node, _slicer_safe_array(array))
    set_node_geometry(node, image)
    if display and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def segmentation_node_from_labelmap(
    scene: "slicer.vtkMRMLScene",
    labelmap: Image,
    name: str,
    labels: Iterable[LabelInfo] | Mapping[int, str] | None = None,
    reference_volume_node: Any | None = None,
) -> Any:
    """Create a **new** segmentation node holding one segment per non-zero label of ``labelmap``.

    Segment names and colours come from ``labels`` (values it does not name become ``Label_<n>``).
    When given, ``reference_volume_node`` becomes the segmentation's reference geometry and the
    labelmap must lie on its grid. Never writes into an existing node, so manual edits stay untouched.
    """
    from slicer import vtkSlicerSegmentationsModuleLogic

    if not np.issubdtype(labelmap.array.dtype, np.integer):
        raise ValueError(f"a labelmap must have an integer type, got {labelmap.array.dtype}")
    if reference_volume_node is not None:
        from lesionseg.image import require_same_grid

        require_same_grid(labelmap, image_from_volume_node(reference_volume_node))
    ensure_segmentation_converters()
    present = [int(v) for v in np.unique(labelmap.array) if v != 0]
    table = label_table(present, labels)

    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation_node.CreateDefaultDisplayNodes()
    if reference_volume_node is not None:
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    temporary = volume_node_from_image(scene, labelmap, name + " (import)", labelmap=True, display=False)
    try:
        if table and not vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
            temporary, segmentation_node, ""
        ):
            raise RuntimeError("Slicer could not import the labelmap into a segmentation")
    finally:
        _remove_node(scene, temporary)
    segmentation = segmentation_node.GetSegmentation()
    info_by_value = {info.value: info for info in table}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        info = info_by_value[int(segment.GetLabelValue())]
        segment.SetName(info.name)
        segment.SetColor(*info.color)
        segment.SetTag("LesionSeg.LabelValue", str(info.value))
    return segmentation_node


def segment_labels(segmentation_node: Any) -> list[tuple[str, LabelInfo]]:
    """(segment id, LabelInfo) for each segment, numbered 1..N in segment order."""
    segmentation = segmentation_node.GetSegmentation()
    out = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        color = tuple(min(max(float(c), 0.0), 1.0) for c in segment.GetColor())
        out.append(
            (
                segmentation.GetNthSegmentID(index),
                LabelInfo(index + 1, segment.GetName() or f"Segment_{index + 1}", color),
            )
        )
    return out


def labelmap_from_segmentation_node(
    segmentation_node: Any,
    reference: Any | Image,
    segment_values: Mapping[str, int] | None = None,
) -> tuple[Image, list[LabelInfo]]:
    """Rasterise segments onto ``reference``'s grid (a volume node or an engine image).

    ``segment_values`` maps segment names (or ids) to label values; segments it leaves out are not
    exported. By default every segment is exported as 1..N in segment order. Where segments
    overlap, the later one in the mapping wins. Returns the labelmap and its label table.
    """
    from slicer import vtkSlicerSegmentationsModuleLogic

    if segmentation_node is None or segmentation_node.GetClassName() != "vtkMRMLSegmentationNode":
        raise ValueError("choose a segmentation node to export")
    ensure_segmentation_converters()
    scene = segmentation_node.GetScene()
    by_key = {}
    for segment_id, info in segment_labels(segmentation_node):
        by_key[segment_id] = (segment_id, info)
        by_key.setdefault(info.name, (segment_id, info))
    if segment_values is None:
        segment_values = {info.name: info.value for _, info in by_key.values()}
    chosen: list[tuple[str, LabelInfo]] = []
    for key, value in segment_values.items():
        if key not in by_key:
            names = sorted({info.name for _, info in by_key.values()})
            raise ValueError(f"segment {key!r} is not in {segmentation_node.GetName()!r}; it has {names}")
        segment_id, info = by_key[key]
        chosen.append((segment_id, LabelInfo(int(value), info.name, info.color)))

    temporary_reference = None
    if isinstance(reference, Image):
        grid = reference
        temporary_reference = volume_node_from_image(
            scene, reference.with_array(np.zeros(reference.array.shape, np.uint8)), "reference (export)", display=False
        )
        reference_node = temporary_reference
    else:
        grid = image_from_volume_node(reference)
        reference_node = reference
    output = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", segmentation_node.GetName() + " (export)")
    try:
        # Slicer numbers the export 1..N in the order of the ids it is given, and a later segment wins
        # where segments overlap; a lookup table then turns 1..N into the chosen label values.
        ids = [segment_id for segment_id, _ in chosen]
        result = np.zeros(grid.array.shape, np.int32)
        if ids:
            if not vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                segmentation_node, ids, output, reference_node
            ):
                raise RuntimeError(f"Slicer could not export {segmentation_node.GetName()!r} to a labelmap")
            lookup = np.zeros(len(ids) + 1, np.int32)
            lookup[1:] = [info.value for _, info in chosen]
            result = lookup[image_from_volume_node(output).array.astype(np.int64)]
        fits_uint8 = result.size == 0 or (result.min() >= 0 and result.max() < 256)
        return grid.with_array(result.astype(np.uint8 if fits_uint8 else np.int32)), [info for _, info in chosen]
    finally:
        _remove_node(scene, output)
        if temporary_reference is not None:
            _remove_node(scene, temporary_reference)


def update_segment_from_mask(segmentation_node: Any, segment_id: str, mask: Image) -> None:
    """Replace the voxels of one segment with ``mask`` (non-zero inside), keeping its name, colour and tags.

    The other segments are left as they are. An all-zero ``mask`` empties the segment without removing it.
    """
    import vtk
    from slicer import vtkSlicerSegmentationsModuleLogic

    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment_id) is None:
        raise ValueError(f"segment {segment_id!r} is not in {segmentation_node.GetName()!r}")
    scene = segmentation_node.GetScene()
    binary = mask.with_array((mask.array != 0).astype(np.uint8))
    temporary = volume_node_from_image(scene, binary, segmentation_node.GetName() + " (update)", True, display=False)
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(temporary, segmentation_node, ids):
            raise RuntimeError(f"Slicer could not update segment {segment_id!r} of {segmentation_node.GetName()!r}")
    finally:
        _remove_node(scene, temporary)
