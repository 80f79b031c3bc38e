"""The segmentation NRRD writer and reader (lesionseg.io.segnrrd) agree: what one writes, the other reads back."""

import numpy as np
from support.geometries import make_image

from lesionseg.io.nrrd import read_nrrd
from lesionseg.io.segnrrd import read_seg_nrrd, write_seg_nrrd
from lesionseg.labels import LabelInfo


def test_labels_and_grid_written_to_a_seg_nrrd_are_read_back(tmp_path):
    image = make_image("oblique_30_30")
    labelmap = image.with_array((image.array % 4).astype(np.uint8))
    labels = [LabelInfo(3, "Liver", (0.5, 0.25, 1.0)), LabelInfo(1, "Spleen", (1.0, 0.0, 0.0))]
    back, named = read_seg_nrrd(write_seg_nrrd(labelmap, labels, tmp_path / "labels.seg.nrrd"))
    assert back.same_grid(labelmap)
    np.testing.assert_array_equal(back.array, labelmap.array)
    # Segments are listed by value; label 2 has voxels but no entry, so nothing names it.
    assert [(n.value, n.name, n.color) for n in named] == [
        (1, "Spleen", (1.0, 0.0, 0.0)),
        (3, "Liver", (0.5, 0.25, 1.0)),
    ]


def test_an_empty_segment_gets_slicers_empty_extent(tmp_path):
    image = make_image("anisotropic")
    labelmap = image.with_array(np.zeros(image.array.shape, np.uint8))
    path = write_seg_nrrd(labelmap, [LabelInfo(1, "Lesion")], tmp_path / "empty.seg.nrrd")
    assert read_nrrd(path)[1]["Segment0_Extent"] == "0 -1 0 -1 0 -1"
