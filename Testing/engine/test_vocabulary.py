"""The vocabulary written once: spec defaults, which labels are lesions, and the metrics' names and units."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json

import numpy as np
import pytest
from support.tiny_models import threshold_spec_dict

from lesionseg.image import Image
from lesionseg.labels import LabelInfo
from lesionseg.metrics import DEFINITIONS, MASK_METRICS, evaluate_case, mask_metrics, metric_info
from lesionseg.metrics.tables import write_case_csv
from lesionseg.models import builtin_specs, spec_from_dict, spec_schema
from lesionseg.models.spec import InferenceSpec, IntensitySpec, ModelSpec, PostprocessSpec, PreprocessSpec


def _defaults(cls) -> dict:
    # As JSON writes them: a tuple default (inference.tta) is the schema's list.
    fields = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    return {name: list(value) if isinstance(value, tuple) else value for name, value in fields.items()}


def _schema_defaults(properties: dict) -> dict:
    return {name: each["default"] for name, each in properties.items() if "default" in each}


def test_every_default_the_schema_shows_is_the_one_the_engine_uses():
    schema = spec_schema()["properties"]
    pairs = [
        (schema["preprocessing"]["properties"], PreprocessSpec),
        (schema["inference"]["properties"], InferenceSpec),
        (schema["postprocessing"]["properties"], PostprocessSpec),
        (schema, ModelSpec),
        *((kind["properties"], IntensitySpec) for kind in schema["preprocessing"]["properties"]["intensity"]["oneOf"]),
    ]
    shown = 0
    for properties, cls in pairs:
        engine = _defaults(cls)
        for name, value in _schema_defaults(properties).items():
            assert name in engine, f"the schema shows a default for {name!r}, which {cls.__name__} does not have"
            assert engine[name] == value, f"{cls.__name__}.{name}: schema says {value!r}, the engine {engine[name]!r}"
            shown += 1
    assert shown >= 12  # overlap, sw_batch_size, blend, flip_tta, amp, precision, threshold, quirk, post..., demo


def test_a_spec_that_leaves_out_the_sliding_window_runs_it_as_monai_would():
    from monai.inferers import SlidingWindowInferer

    monai = inspect.signature(SlidingWindowInferer).parameters
    data = threshold_spec_dict()
    data["inference"] = {"roi_size": [32, 32, 32]}
    inference = spec_from_dict(data).inference
    assert inference.overlap == monai["overlap"].default
    assert inference.sw_batch_size == monai["sw_batch_size"].default
    assert inference.blend == str(monai["mode"].default)


def test_an_older_spec_with_the_retired_fields_loads_as_the_same_model():
    current = threshold_spec_dict()
    older = copy.deepcopy(current)
    older["task"] = "segmentation"
    older["preprocessing"]["interpolation"] = "bilinear"
    older["inference"]["activation"] = "softmax"
    assert spec_from_dict(older) == spec_from_dict(current)
    # The retired fields still only take the value that was ever allowed: a spec asking for more is refused.
    older["preprocessing"]["interpolation"] = "nearest"
    with pytest.raises(ValueError, match="preprocessing/interpolation"):
        spec_from_dict(older)


def test_the_shipped_specs_no_longer_carry_retired_fields():
    for spec in builtin_specs():
        text = json.dumps(spec.source)
        assert '"task"' not in text and '"interpolation"' not in text and '"activation"' not in text, spec.id


def test_a_label_is_a_lesion_when_the_spec_says_so_whatever_its_name():
    data = threshold_spec_dict()
    data["labels"] = [{"value": 1, "name": "liver"}, {"value": 2, "name": "tumour"}]
    data["network"]["parameters"]["out_channels"] = 3
    data["lesion_labels"] = [1]
    assert [label.is_lesion for label in spec_from_dict(data).labels] == [True, False]
    # A spec without lesion_labels (older specs, MONAI bundles) leaves it to the label names.
    del data["lesion_labels"]
    assert [label.is_lesion for label in spec_from_dict(data).labels] == [False, True]


@pytest.mark.parametrize(
    ("name", "lesion"),
    [
        ("Bone metastasis", True),
        ("nodal metastases", True),
        ("Tumor", True),
        ("GTV primary", True),
        ("lung nodule", True),
        ("Lymph node", False),
        ("spleen", False),
        ("Label_3", False),
    ],
)
def test_a_label_read_from_a_file_is_judged_by_its_name(name, lesion):
    assert LabelInfo(1, name).is_lesion is lesion
    assert LabelInfo(1, name, is_lesion=not lesion).is_lesion is not lesion  # a stated answer wins


def test_dicom_seg_codes_a_label_the_spec_calls_a_lesion_as_a_lesion():
    pytest.importorskip("highdicom")
    from lesionseg.dicomseg import segment_codes

    assert segment_codes(LabelInfo(1, "prostate bed", is_lesion=True))[1].meaning == "Lesion"
    assert segment_codes(LabelInfo(1, "tumour", is_lesion=False))[1].meaning == "Tissue"
    # "Lymph node" is anatomy: SNOMED CT's organ code, not the lesion code.
    assert segment_codes(LabelInfo(1, "Lymph node"))[1].meaning == "Lymph Node"


def test_every_mask_metric_is_described_once_with_a_unit_for_each_distance_and_volume():
    spacing = np.array([1.0, 1.0, 2.0])
    pred = np.zeros((4, 6, 6), bool)
    pred[1:3, 1:4, 1:4] = True
    ref = np.roll(pred, 1, axis=2)
    measured = mask_metrics(pred, ref, spacing)
    keys = [info.key for info in MASK_METRICS]
    assert len(set(keys)) == len(keys) and set(keys) <= set(measured)
    for info in MASK_METRICS:
        assert info.title and info.description, info.key
        assert info.unit == {"_mm": "mm", "_ml": "mL"}.get(info.key[-3:], ""), info.key
    assert metric_info("hd95_mm").header == "HD95 (mm)" and metric_info("dice").header == "Dice"
    assert DEFINITIONS["hd95_mm"] == metric_info("hd95_mm").description
    with pytest.raises(KeyError, match="no metric is called 'hd99'"):
        metric_info("hd99")


def test_the_evaluate_csv_header_is_the_metric_keys_in_their_described_order(tmp_path):
    ref = np.zeros((6, 8, 8), np.uint8)
    ref[2:4, 2:6, 2:6] = 1
    image = Image(ref, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    result = evaluate_case(image, image)
    written = write_case_csv(tmp_path / "metrics.csv", result)[0].read_bytes()
    header = written.split(b"\n", 1)[0].decode()
    assert header == ",".join(["label", "name", *(info.key for info in MASK_METRICS), "empty"])
    # Byte for byte the header files have always had.
    assert header == "label,name,dice,iou,hd95_mm,hd_mm,assd_mm,volume_pred_ml,volume_ref_ml,volume_diff_ml,empty"


def test_the_report_titles_its_metric_columns_from_the_same_descriptors():
    from lesionseg.report.document import _LABEL_HEADER

    assert _LABEL_HEADER[2:-1] == [info.short_header for info in MASK_METRICS]
    # The report reads as it always has.
    expected = "Label,Name,Dice,IoU,HD95 (mm),HD (mm),ASSD (mm),V pred (mL),V ref (mL),ΔV (mL),Empty"
    assert ",".join(_LABEL_HEADER) == expected
