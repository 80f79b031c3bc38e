"""Synthetic CT studies for tests, training and the demo.

Everything this package makes is **synthetic**: abdominal-pelvic phantoms computed from random
numbers, not images of patients, and not for clinical use.

* ``tissues``: the label values (``PHANTOM_LABELS``) and tissue densities, as data.
* ``shapes``: implicit solids in LPS mm and their partial-volume rendering.
* ``phantom``: random anatomy (body, skeleton, organs, spleen of varied shape and place).
* ``lesions``: sclerotic and lytic bone metastases and enlarged lymph nodes.
* ``study``: scan geometry, noise, and writing a cohort (``generate_cohort``).
"""

from lesionseg.data.study import (
    GENERATOR_VERSION,
    SIZE_PRESETS,
    SyntheticCase,
    SynthOptions,
    generate_case,
    generate_cohort,
    plan_case,
    write_case,
)
from lesionseg.data.tissues import LABEL, PHANTOM_LABELS

__all__ = [
    "GENERATOR_VERSION",
    "LABEL",
    "PHANTOM_LABELS",
    "SIZE_PRESETS",
    "SynthOptions",
    "SyntheticCase",
    "generate_case",
    "generate_cohort",
    "plan_case",
    "write_case",
]
