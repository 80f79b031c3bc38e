"""Segmentation metrics against analytic values and against SimpleITK and MONAI as independent judges."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from support.metric_shapes import ball, blobs, box, labelmap

from lesionseg.image import Image
from lesionseg.metrics import evaluate_case, lesion_metrics, mask_metrics
from lesionseg.metrics.masks import surface_voxels

ANISOTROPIC = np.array([0.8, 1.1, 2.5])
# Same surface, same distances, same percentile rule: the only difference left is that MONAI returns
# float32 (relative precision 2**-23 ≈ 1.2e-7); its float32 quantile and mean differ from ours by at most
# 5e-7 relative on these shapes.  1e-6 would still catch any difference of definition, which moves these
# metrics by a voxel (≥ 0.8 mm here) or by percents.
MONAI_RELATIVE_TOLERANCE = 1e-6


def _sitk(mask: np.ndarray, spacing) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing])
    return image


def _monai_one_hot(mask: np.ndarray):
    import torch

    return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))


def _shape_pairs():
    shape = (24, 48, 48)
    offset = ball(shape, (22, 24, 12), 12, ANISOTROPIC), ball(shape, (27, 22, 13), 10, ANISOTROPIC)
    irregular = blobs(shape, seed=1, spacing=ANISOTROPIC), blobs(shape, seed=2, spacing=ANISOTROPIC)
    at_edge = box(shape, (0, 10, 0), (20, 20, 24)), box(shape, (3, 12, 2), (20, 16, 20))  # touches 3 array faces
    return [
        pytest.param(*offset, id="offset-balls"),
        pytest.param(*irregular, id="irregular-blobs"),
        pytest.param(*at_edge, id="box-at-image-edge"),
    ]


@pytest.mark.parametrize("pred, ref", _shape_pairs())
def test_surface_voxels_match_monai_mask_edges_exactly(pred, ref):
    from monai.metrics.utils import get_mask_edges

    edges_pred, edges_ref = get_mask_edges(pred, ref, crop=False)
    assert np.array_equal(surface_voxels(pred), np.asarray(edges_pred))
    assert np.array_equal(surface_voxels(ref), np.asarray(edges_ref))


@pytest.mark.parametrize("pred, ref", _shape_pairs())
def test_hd95_assd_and_dice_match_monai_on_anisotropic_voxels(pred, ref):
    from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

    ours = mask_metrics(pred, ref, ANISOTROPIC)
    y_pred, y = _monai_one_hot(pred), _monai_one_hot(ref)
    spacing_kji = ANISOTROPIC[::-1].tolist()  # MONAI takes spacing in array-axis order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing_kji).item()
        hd = compute_hausdorff_distance(y_pred, y, spacing=spacing_kji).item()
        assd = compute_average_surface_distance(y_pred, y, symmetric=True, spacing=spacing_kji).item()
        dice = compute_dice(y_pred, y, include_background=False).item()
    assert ours["hd95_mm"] == pytest.approx(hd95, rel=MONAI_RELATIVE_TOLERANCE)
    assert ours["hd_mm"] == pytest.approx(hd, rel=MONAI_RELATIVE_TOLERANCE)
    assert ours["assd_mm"] == pytest.approx(assd, rel=MONAI_RELATIVE_TOLERANCE)
    assert ours["dice"] == pytest.approx(dice, rel=MONAI_RELATIVE_TOLERANCE)
    assert 0 < ours["hd95_mm"] <= ours["hd_mm"]


def test_dice_and_iou_per_label_match_simpleitk_label_overlap():
    shape = (24, 48, 48)
    ref = labelmap(
        [(ball(shape, (16, 20, 12), 9, ANISOTROPIC), 1), (blobs(shape, 3, 3, ANISOTROPIC), 2)], spacing=ANISOTROPIC
    )
    pred = labelmap(
        [(ball(shape, (18, 21, 12), 8, ANISOTROPIC), 1), (blobs(shape, 4, 3, ANISOTROPIC), 2)], spacing=ANISOTROPIC
    )
    result = evaluate_case(pred, ref)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(_sitk(ref.array, ANISOTROPIC), _sitk(pred.array, ANISOTROPIC))
    for value in (1, 2):
        row = result["labels"][str(value)]
        assert row["dice"] == pytest.approx(overlap.GetDiceCoefficient(value), abs=1e-12)
        assert row["iou"] == pytest.approx(overlap.GetJaccardCoefficient(value), abs=1e-12)


@pytest.mark.parametrize("shift_ijk", [(4, 1, 0), (0, 0, 3), (-2, 3, 1)])
@pytest.mark.parametrize("shape_kind", ["ball", "box"])
def test_max_hausdorff_matches_simpleitk_for_convex_shapes(shift_ijk, shape_kind):
    # SimpleITK measures between all voxels, we between surfaces; for convex shapes the farthest voxel lies on
    # the surface and outside the other shape, where both definitions give the same distance.
    shape = (24, 48, 48)
    centre = np.array([22.0, 24.0, 12.0])
    ref = ball(shape, centre, 11, ANISOTROPIC)
    if shape_kind == "ball":
        pred = ball(shape, centre + shift_ijk, 9, ANISOTROPIC)
    else:
        pred = box(shape, (np.array([12, 16, 8]) + shift_ijk).astype(int), (18, 12, 6))
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(_sitk(ref, ANISOTROPIC), _sitk(pred, ANISOTROPIC))
    ours = mask_metrics(pred, ref, ANISOTROPIC)
    assert ours["hd_mm"] == pytest.approx(hausdorff.GetHausdorffDistance(), abs=1e-6)
    assert ours["hd95_mm"] <= ours["hd_mm"]


@pytest.mark.parametrize("axis, expected_mm", [(0, 3 * 0.7), (2, 3 * 2.5)])
def test_shifted_box_distances_follow_the_spacing_of_the_shift_axis(axis, expected_mm):
    spacing = (0.7, 0.7, 2.5)
    shape = (30, 30, 30)
    ref = box(shape, (8, 8, 8), (10, 10, 10))
    start = [8, 8, 8]
    start[axis] += 3
    pred = box(shape, start, (10, 10, 10))
    result = mask_metrics(pred, ref, spacing)
    assert result["hd_mm"] == pytest.approx(expected_mm)
    assert result["dice"] == pytest.approx(7 / 10)
    assert result["volume_pred_ml"] == pytest.approx(1000 * 0.7 * 0.7 * 2.5 / 1000)
    assert result["volume_diff_ml"] == 0.0


def test_direction_does_not_change_distances_or_volumes():
    shape = (24, 32, 32)
    pred = labelmap([(ball(shape, (15, 16, 12), 8, ANISOTROPIC), 1)], spacing=ANISOTROPIC)
    ref = labelmap([(ball(shape, (17, 15, 12), 9, ANISOTROPIC), 1)], spacing=ANISOTROPIC)
    tilted = np.array([[0.0, -1.0, 0.0], [0.8, 0.0, 0.6], [-0.6, 0.0, 0.8]])
    plain = evaluate_case(pred, ref)["labels"]["1"]
    rotated = evaluate_case(
        Image(pred.array, ANISOTROPIC, (5, -7, 9), tilted), Image(ref.array, ANISOTROPIC, (5, -7, 9), tilted)
    )["labels"]["1"]
    for key in ("dice", "hd95_mm", "hd_mm", "assd_mm", "volume_ref_ml"):
        assert rotated[key] == pytest.approx(plain[key], abs=1e-9)


def test_both_masks_empty_count_as_a_perfect_match():
    empty = np.zeros((8, 8, 8), dtype=bool)
    result = mask_metrics(empty, empty, (1, 1, 1))
    assert result["empty"] == "both"
    assert (result["dice"], result["iou"], result["hd95_mm"], result["hd_mm"], result["assd_mm"]) == (1, 1, 0, 0, 0)


@pytest.mark.parametrize("empty_side", ["prediction", "reference"])
def test_one_empty_mask_gives_dice_zero_and_null_distances_never_nan(empty_side):
    shape = (16, 16, 16)
    full = labelmap([(ball(shape, (8, 8, 8), 4, (1, 1, 1)), 1)])
    empty = Image(np.zeros(shape, dtype=np.uint8))
    pred, ref = (empty, full) if empty_side == "prediction" else (full, empty)
    result = evaluate_case(pred, ref)
    row = result["labels"]["1"]
    assert row["empty"] == empty_side
    assert row["dice"] == 0.0 and row["iou"] == 0.0
    assert row["hd95_mm"] is None and row["assd_mm"] is None and row["hd_mm"] is None
    assert result["lesions"]["empty"] == empty_side
    json.dumps(result, allow_nan=False)  # raises on NaN or infinity


def test_label_named_but_absent_from_both_is_reported_as_both_empty():
    shape = (8, 8, 8)
    image = labelmap([(box(shape, (2, 2, 2), (3, 3, 3)), 1)])
    result = evaluate_case(image, image, label_names={1: "Spleen", 5: "Liver"})
    assert result["labels"]["5"]["name"] == "Liver"
    assert result["labels"]["5"]["empty"] == "both" and result["labels"]["5"]["dice"] == 1.0
    assert result["labels"]["1"]["dice"] == 1.0 and result["labels"]["1"]["hd95_mm"] == 0.0


def test_prediction_on_another_grid_is_refused_with_a_resampling_hint():
    ref = Image(np.zeros((8, 8, 8), dtype=np.uint8), spacing=(1, 1, 2))
    pred = Image(np.zeros((8, 8, 8), dtype=np.uint8), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="resample"):
        evaluate_case(pred, ref)


def test_probability_map_is_refused_as_a_labelmap():
    ref = Image(np.zeros((4, 4, 4), dtype=np.uint8))
    pred = Image(np.full((4, 4, 4), 0.3, dtype=np.float32))
    with pytest.raises(ValueError, match="non-integer"):
        evaluate_case(pred, ref)


# -- lesion-wise ----------------------------------------------------------------------------------


def _scattered_lesions(seed: int, shape=(32, 48, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, dtype=bool)
    for _ in range(9):
        centre = rng.uniform(4, np.array(shape[::-1]) - 4)
        out |= ball(shape, centre, float(rng.uniform(1.0, 3.5)), (1, 1, 1))
    return out


def _autopet_volumes_with_skimage(pred: np.ndarray, ref: np.ndarray, voxel_ml: float) -> tuple[float, float]:
    """An independent FP/FN volume: scikit-image's labelling and a plain per-component loop."""
    from skimage.measure import label

    pred_cc, ref_cc = label(pred, connectivity=3), label(ref, connectivity=3)
    fp = sum(np.count_nonzero(pred_cc == c) for c in range(1, pred_cc.max() + 1) if not ref[pred_cc == c].any())
    fn = sum(np.count_nonzero(ref_cc == c) for c in range(1, ref_cc.max() + 1) if not pred[ref_cc == c].any())
    return fp * voxel_ml, fn * voxel_ml


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fp_and_fn_volumes_match_an_independent_autopet_count(seed):
    pred, ref = _scattered_lesions(seed), _scattered_lesions(seed + 100)
    ref |= ball(pred.shape, (24, 24, 16), 3, (1, 1, 1))  # at least one shared lesion
    pred |= ball(pred.shape, (25, 24, 16), 3, (1, 1, 1))
    spacing = (0.9, 0.9, 1.5)
    result = lesion_metrics(pred, ref, spacing)
    fp_ml, fn_ml = _autopet_volumes_with_skimage(pred, ref, 0.9 * 0.9 * 1.5 / 1000)
    assert result["fp_volume_ml"] == pytest.approx(fp_ml, abs=1e-12)
    assert result["fn_volume_ml"] == pytest.approx(fn_ml, abs=1e-12)
    assert result["tp"] + result["fn"] == result["n_ref"]
    assert result["tp"] >= 1


def test_missed_lesion_counts_as_false_negative_volume():
    shape = (20, 40, 40)
    found, missed = box(shape, (5, 5, 5), (4, 4, 4)), box(shape, (25, 25, 10), (3, 2, 5))
    result = lesion_metrics(found, found | missed, (1, 1, 2))
    assert (result["tp"], result["fn"], result["fp"]) == (1, 1, 0)
    assert result["fn_volume_ml"] == pytest.approx(3 * 2 * 5 * 2 / 1000)
    assert result["fp_volume_ml"] == 0.0
    assert result["sensitivity"] == 0.5


def test_spurious_prediction_counts_as_false_positive_volume_and_partial_hit_as_detected():
    shape = (20, 40, 40)
    lesion = box(shape, (5, 5, 5), (6, 6, 6))
    partial = box(shape, (10, 10, 10), (4, 4, 4))  # shares one corner voxel with the lesion
    spurious = box(shape, (30, 30, 2), (2, 2, 2))
    result = lesion_metrics(partial | spurious, lesion, (1, 1, 1))
    assert (result["tp"], result["fn"], result["fp"], result["tp_pred"]) == (1, 0, 1, 1)
    assert result["fp_volume_ml"] == pytest.approx(8 / 1000)
    assert result["precision"] == 0.5


def test_corner_touching_voxels_are_one_lesion_by_default_and_two_with_6_connectivity():
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True
    assert lesion_metrics(mask, mask, (1, 1, 1))["n_ref"] == 1
    assert lesion_metrics(mask, mask, (1, 1, 1), connectivity=6)["n_ref"] == 2
    with pytest.raises(ValueError, match="6, 18 or 26"):
        lesion_metrics(mask, mask, (1, 1, 1), connectivity=8)


def test_minimum_lesion_volume_drops_small_components_from_both_sides():
    shape = (20, 40, 40)
    big, small = box(shape, (5, 5, 5), (5, 5, 5)), box(shape, (30, 30, 10), (2, 2, 2))
    assert lesion_metrics(big, big | small, (1, 1, 1))["fn"] == 1
    filtered = lesion_metrics(big | small, big, (1, 1, 1), min_volume_mm3=10.0)
    assert (filtered["n_ref"], filtered["n_pred"], filtered["fp"], filtered["fn"]) == (1, 1, 0, 0)


def test_no_lesions_anywhere_gives_zero_counts_and_null_sensitivity():
    empty = np.zeros((6, 6, 6), dtype=bool)
    result = lesion_metrics(empty, empty, (1, 1, 1))
    assert (result["tp"], result["fp"], result["fn"], result["empty"]) == (0, 0, 0, "both")
    assert result["sensitivity"] is None and result["fp_volume_ml"] == 0.0


def test_lesion_labels_restrict_lesion_counting_to_those_values():
    shape = (20, 40, 40)
    organ, lesion, other = (
        box(shape, (2, 2, 2), (10, 10, 10)),
        box(shape, (25, 25, 5), (3, 3, 3)),
        box(shape, (30, 5, 12), (2, 2, 2)),
    )
    ref = labelmap([(organ, 1), (lesion, 2), (other, 3)])
    pred = labelmap([(organ, 1)])
    only_lesions = evaluate_case(pred, ref, lesion_labels=[2])["lesions"]
    assert (only_lesions["n_ref"], only_lesions["fn"], only_lesions["lesion_labels"]) == (1, 1, [2])
    everything = evaluate_case(pred, ref)["lesions"]
    assert (everything["n_ref"], everything["fn"], everything["lesion_labels"]) == (3, 2, "all foreground")


# -- cohort summary -------------------------------------------------------------------------------


def test_cohort_summary_skips_undefined_distances_and_fills_absent_labels_as_both_empty():
    from lesionseg.metrics.cohort import summarize

    shape = (16, 24, 24)
    organ = ball(shape, (12, 12, 8), 6, (1, 1, 1))
    shifted = ball(shape, (13, 12, 8), 6, (1, 1, 1))
    extra = box(shape, (1, 1, 1), (2, 2, 2))
    cases = [
        evaluate_case(labelmap([(organ, 1)]), labelmap([(organ, 1)])),
        evaluate_case(labelmap([(shifted, 1), (extra, 3)]), labelmap([(organ, 1), (extra, 3)])),
        evaluate_case(Image(np.zeros(shape, dtype=np.uint8)), labelmap([(organ, 1)])),  # nothing predicted
    ]
    summary = summarize(cases)
    hd95 = [case["labels"]["1"]["hd95_mm"] for case in cases]
    assert hd95[2] is None
    assert summary["labels"]["1"]["hd95_mm"] == {"mean": np.mean(hd95[:2]), "std": np.std(hd95[:2], ddof=1), "n": 2}
    assert summary["labels"]["1"]["dice"]["n"] == 3
    assert summary["labels"]["1"]["empty_cases"] == {"both": 0, "prediction": 1, "reference": 0}
    # Label 3 appears only in case 2; the others had none in either image, which is a correct "nothing".
    assert [case["labels"]["3"]["empty"] for case in cases] == ["both", None, "both"]
    assert summary["labels"]["3"]["dice"]["mean"] == 1.0
    assert summary["lesions"]["totals"]["fn"] == 1 and summary["lesions"]["fp_per_case"] == 0.0
    json.dumps(summary, allow_nan=False)


def test_prediction_stored_in_another_axis_order_is_evaluated_on_the_same_voxels():
    from lesionseg.image import Image
    from lesionseg.metrics import evaluate_case
    from lesionseg.orientation import reorient

    ref = Image(np.zeros((8, 9, 10), np.uint8), (0.8, 0.9, 2.5), (10.0, -20.0, 30.0))
    ref.array[2:6, 3:7, 2:8] = 1
    pred = ref.copy()
    pred.array[2:6, 3:7, 2:5] = 0
    expected = evaluate_case(pred, ref)["labels"]["1"]["dice"]
    stored_ras = reorient(pred, "RAI")  # same voxels, other storage order (as a NIfTI tool might write)
    assert evaluate_case(stored_ras, ref)["labels"]["1"]["dice"] == pytest.approx(expected)
    shifted = Image(pred.array, pred.spacing, pred.origin + 1.0, pred.direction)
    with pytest.raises(ValueError, match="does not lie on the reference"):
        evaluate_case(shifted, ref)
