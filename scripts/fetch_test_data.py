"""Fetch the real DICOM test data into the cache the tests use (needs access to PyPI once).

Usage: python scripts/fetch_test_data.py    (cache: $LESIONSEG_TEST_DATA or ~/.cache/lesionseg/test-data)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Testing"))

from support.reference_data import totalsegmentator_ct_dicom  # noqa: E402


def main() -> int:
    try:
        folder = totalsegmentator_ct_dicom()
    except RuntimeError as error:
        print(f"fetch_test_data: error: {error}", file=sys.stderr)
        return 1
    print(f"TotalSegmentator example CT series: {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
