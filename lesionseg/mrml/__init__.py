"""The MRML bridge: the one place in the engine that touches Slicer's scene (imported lazily)."""

from lesionseg.mrml.bridge import (
    ensure_segmentation_converters,
    image_from_volume_node,
    labelmap_from_segmentation_node,
    segment_labels,
    segmentation_node_from_labelmap,
    set_node_geometry,
    update_segment_from_mask,
    volume_node_from_image,
)

__all__ = [
    "ensure_segmentation_converters",
    "image_from_volume_node",
    "labelmap_from_segmentation_node",
    "segment_labels",
    "segmentation_node_from_labelmap",
    "set_node_geometry",
    "update_segment_from_mask",
    "volume_node_from_image",
]
