"""The MRML bridge on a real scene from PyPI's slicer-core: nodes to engine images and back."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.geometries import NAMED_GEOMETRIES, assert_same_physical_image, axis_aligned_directions, make_image, ramp

from lesionseg.image import Image
from lesionseg.labels import LabelInfo
from lesionseg.mrml import (
    image_from_volume_node,
    labelmap_from_segmentation_node,
    segmentation_node_from_labelmap,
    volume_node_from_image,
)

slicer = pytest.importorskip("slicer")


def ras_position(node, ijk):
    """Where Slicer itself puts voxel ijk (its IJKToRAS matrix), converted to LPS."""
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ras = matrix.MultiplyPoint([*map(float, ijk), 1.0])[:3]
    return np.array([-ras[0], -ras[1], ras[2]])


def blobs(image: Image) -> Image:
    """A labelmap with a box (1), a single voxel (3) and an L shape (4) on ``image``'s grid."""
    k, j, i = image.array.shape
    label = np.zeros(image.array.shape, np.uint8)
    label[: max(k // 2, 1), 1 : j // 2, 1 : i // 2] = 1
    label[k - 1, j - 1, i - 1] = 3
    label[0, j - 2, 1 : i - 1] = 4
    label[0, 1 : j - 1, i - 2] = 4
    return image.with_array(label)


@pytest.mark.parametrize("name", sorted(NAMED_GEOMETRIES))
def test_volume_node_round_trip_keeps_every_voxel_in_place(scene, name):
    image = make_image(name)
    node = volume_node_from_image(scene, image, "CT")
    for ijk in [(0, 0, 0), tuple(np.array(image.size) - 1)]:
        np.testing.assert_allclose(ras_position(node, ijk), image.world(ijk), atol=1e-4)
    back = image_from_volume_node(node)
    assert_same_physical_image(image, back)
    assert back.array.dtype == image.array.dtype


@pytest.mark.parametrize("name", ["oblique_30_30", "single_slice"])
def test_labelmap_volume_node_round_trip(scene, name):
    label = blobs(make_image(name))
    node = volume_node_from_image(scene, label, "labels", labelmap=True)
    assert node.GetClassName() == "vtkMRMLLabelMapVolumeNode"
    assert_same_physical_image(label, image_from_volume_node(node))


@settings(max_examples=48, deadline=None)
@given(direction_index=st.integers(0, 47), spacing=st.tuples(*[st.floats(0.3, 5.0)] * 3))
def test_every_axis_aligned_orientation_survives_the_scene(direction_index, spacing):
    scene = slicer.vtkMRMLScene()
    image = Image(ramp((3, 4, 5)), spacing, (5.0, -6.0, 7.0), axis_aligned_directions()[direction_index])
    assert_same_physical_image(image, image_from_volume_node(volume_node_from_image(scene, image, "v")))


def test_volume_under_a_linear_transform_is_read_in_world_space(scene):
    import vtk

    image = make_image("identity")
    node = volume_node_from_image(scene, image, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 10.0)  # +10 mm towards patient right (RAS x)
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    world = image_from_volume_node(node)
    np.testing.assert_allclose(world.origin, image.origin + [-10.0, 0.0, 0.0], atol=1e-9)


def test_segmentation_from_labelmap_has_named_coloured_segments_in_a_new_node(scene):
    ct = make_image("oblique_30_30")
    ct_node = volume_node_from_image(scene, ct, "CT")
    manual = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my edits")
    manual.GetSegmentation().AddEmptySegment("mine", "mine", [0.1, 0.2, 0.3])
    labels = [LabelInfo(1, "Spleen", (0.62, 0.36, 0.33)), LabelInfo(4, "Lesion", (1.0, 1.0, 0.0))]

    seg = segmentation_node_from_labelmap(scene, blobs(ct), "CT – SpleenSeg 1.0", labels, ct_node)

    assert seg is not manual and manual.GetSegmentation().GetNumberOfSegments() == 1
    segmentation = seg.GetSegmentation()
    got = {
        segmentation.GetNthSegment(n).GetName(): tuple(segmentation.GetNthSegment(n).GetColor())
        for n in range(segmentation.GetNumberOfSegments())
    }
    assert set(got) == {"Spleen", "Lesion", "Label_3"}
    np.testing.assert_allclose(got["Spleen"], (0.62, 0.36, 0.33))
    np.testing.assert_allclose(got["Lesion"], (1.0, 1.0, 0.0))
    # no temporary nodes are left behind, and the reference geometry is the CT
    assert scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == ct_node.GetID()


def test_closed_surface_can_be_made_from_an_ai_segmentation(scene):
    ct = make_image("anisotropic")
    seg = segmentation_node_from_labelmap(scene, blobs(ct), "AI", {1: "Box"}, volume_node_from_image(scene, ct, "CT"))
    assert seg.CreateClosedSurfaceRepresentation()
    import vtk

    surface = vtk.vtkPolyData()
    seg.GetClosedSurfaceRepresentation(seg.GetSegmentation().GetSegmentIdBySegmentName("Box"), surface)
    assert surface.GetNumberOfPoints() > 0


@pytest.mark.parametrize("name", ["identity", "lps_flipped", "axis_permuted", "oblique_30_30", "single_slice"])
def test_labelmap_to_segmentation_and_back_is_lossless(scene, name):
    ct = make_image(name)
    ct_node = volume_node_from_image(scene, ct, "CT")
    label = blobs(ct)
    seg = segmentation_node_from_labelmap(scene, label, "AI", {1: "Box", 3: "Dot", 4: "L"}, ct_node)

    back, table = labelmap_from_segmentation_node(seg, ct_node, {"Box": 1, "Dot": 3, "L": 4})
    assert back.same_grid(ct)
    np.testing.assert_array_equal(back.array, label.array)
    assert [(t.value, t.name) for t in table] == [(1, "Box"), (3, "Dot"), (4, "L")]

    # onto an engine image as reference, with a remapping and a subset of segments
    only_l, _ = labelmap_from_segmentation_node(seg, ct, {"L": 7})
    np.testing.assert_array_equal(only_l.array, np.where(label.array == 4, 7, 0))


def test_segmentation_exports_onto_a_coarser_reference_grid(scene):
    fine = Image(np.zeros((20, 20, 20), np.int16), (1, 1, 1), (0, 0, 0))
    label = fine.with_array(np.zeros((20, 20, 20), np.uint8))
    label.array[4:16, 4:16, 4:16] = 1
    seg = segmentation_node_from_labelmap(scene, label, "AI", {1: "Cube"})
    coarse = Image(np.zeros((10, 10, 10), np.int16), (2, 2, 2), (0.5, 0.5, 0.5))
    out, _ = labelmap_from_segmentation_node(seg, coarse)
    assert out.same_grid(coarse)
    volume_mm3 = np.count_nonzero(out.array) * coarse.voxel_volume_mm3
    assert abs(volume_mm3 - 12**3) / 12**3 < 0.05


def test_bad_nodes_are_refused_with_the_problem_named(scene):
    with pytest.raises(ValueError, match="no volume selected"):
        image_from_volume_node(None)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="holds no voxels"):
        image_from_volume_node(empty)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    with pytest.raises(ValueError, match="scalar or labelmap volume"):
        image_from_volume_node(seg)
    ct = make_image("identity")
    ct_node = volume_node_from_image(scene, ct, "CT")
    off_grid = Image(np.ones((6, 7, 8), np.uint8), (1, 1, 1), (0.5, 0, 0))
    with pytest.raises(ValueError, match="does not lie on the reference"):
        segmentation_node_from_labelmap(scene, off_grid, "AI", None, ct_node)
    good = segmentation_node_from_labelmap(scene, blobs(ct), "AI", {1: "Box"}, ct_node)
    with pytest.raises(ValueError, match="'Liver' is not in 'AI'"):
        labelmap_from_segmentation_node(good, ct_node, {"Liver": 1})
    with pytest.raises(ValueError, match="whole numbers"):
        volume_node_from_image(scene, ct.with_array(np.full(ct.array.shape, 0.5)), "bad", labelmap=True)
