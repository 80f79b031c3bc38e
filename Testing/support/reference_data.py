"""Real DICOM test data, fetched once from PyPI into a local cache and checked by hash.

The CT series is ``tests/reference_files/example_ct_dicom`` of the TotalSegmentator 2.18.0
source distribution (Apache-2.0; see Testing/data/README.md): 20 slices of 512x512, JPEG 2000
lossless.  Only that folder and the package's LICENSE are extracted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

TOTALSEG_VERSION = "2.18.0"
TOTALSEG_REQUIREMENT = f"totalsegmentator=={TOTALSEG_VERSION}"
# Observed on 2026-11-23 and equal to the hash PyPI's simple index publishes for this file.
TOTALSEG_SDIST_SHA256 = "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03"
TOTALSEG_CT_MEMBER = f"totalsegmentator-{TOTALSEG_VERSION}/tests/reference_files/example_ct_dicom/"
TOTALSEG_LICENSE_MEMBER = f"totalsegmentator-{TOTALSEG_VERSION}/LICENSE"
TOTALSEG_CT_FILES = 20

LICENSE_NOTE = f"""# Provenance of this folder

`example_ct_dicom/` is copied unchanged from `tests/reference_files/example_ct_dicom/` of the
TotalSegmentator {TOTALSEG_VERSION} source distribution on PyPI:

- Fetched with: pip download --no-deps --no-binary :all: {TOTALSEG_REQUIREMENT}
- SHA-256 of the archive: {TOTALSEG_SDIST_SHA256}
- Licence: Apache License 2.0 (the full text, from the same archive, is in `LICENSE`).
  Author, per the package metadata: Jakob Wasserthal (https://github.com/wasserth/TotalSegmentator).

LesionSeg uses it only as test input for its DICOM reader; it is not redistributed in the repository.
"""


def cache_root() -> Path:
    """``$LESIONSEG_TEST_DATA``, or ``~/.cache/lesionseg/test-data``."""
    configured = os.environ.get("LESIONSEG_TEST_DATA")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lesionseg" / "test-data"


def _download(target: Path, sha256: str) -> None:
    """Fetch the sdist with pip (by package name, from the configured index), check its hash, move it in place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pip-download.", dir=target.parent))
    try:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        command += [TOTALSEG_REQUIREMENT, "--dest", str(staging)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise OSError(f"pip download failed: {done.stderr.strip()[-800:]}")
        archives = list(staging.glob("*.tar.gz"))
        if len(archives) != 1:
            raise OSError(f"pip download left {[p.name for p in staging.iterdir()]}, expected one .tar.gz")
        got = _sha256(archives[0])
        if got != sha256:
            raise RuntimeError(
                f"{archives[0].name} has SHA-256 {got}, expected {sha256}: refusing a changed or corrupted download"
            )
        os.replace(archives[0], target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _extract(archive: Path, destination: Path) -> None:
    """Extract the CT folder and the licence into ``destination`` (created atomically)."""
    staging = Path(tempfile.mkdtemp(prefix=".staging.", dir=destination.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is ordinary shared data
    try:
        (staging / "example_ct_dicom").mkdir()
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                name = member.name
                if name == TOTALSEG_LICENSE_MEMBER:
                    out = staging / "LICENSE"
                elif name.startswith(TOTALSEG_CT_MEMBER) and member.isfile():
                    leaf = name[len(TOTALSEG_CT_MEMBER) :]
                    # Refuse anything that could land outside the folder.
                    if not leaf or "/" in leaf or leaf in (".", "..") or os.path.isabs(leaf):
                        raise RuntimeError(f"unexpected member {name!r} in {archive.name}")
                    out = staging / "example_ct_dicom" / leaf
                else:
                    continue
                if not member.isfile():
                    raise RuntimeError(f"{name!r} in {archive.name} is not a regular file")
                source = tar.extractfile(member)
                assert source is not None
                with source, open(out, "wb") as handle:
                    shutil.copyfileobj(source, handle)
        count = len(list((staging / "example_ct_dicom").iterdir()))
        if count != TOTALSEG_CT_FILES or not (staging / "LICENSE").is_file():
            raise RuntimeError(f"{archive.name} held {count} CT files (expected {TOTALSEG_CT_FILES}) or no LICENSE")
        (staging / "LICENSE-NOTE.md").write_text(LICENSE_NOTE, encoding="utf-8")
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def totalsegmentator_ct_dicom() -> Path:
    """The folder of the real 20-slice CT series, downloading it on first use.

    Raises RuntimeError with the reason when it cannot be fetched: a test that needs real
    data fails loudly instead of skipping.
    """
    root = cache_root()
    folder = root / f"totalsegmentator-{TOTALSEG_VERSION}"
    series = folder / "example_ct_dicom"
    if series.is_dir() and len(list(series.iterdir())) == TOTALSEG_CT_FILES and (folder / "LICENSE").is_file():
        return series
    archive = root / "downloads" / f"totalsegmentator-{TOTALSEG_VERSION}.tar.gz"
    try:
        if not archive.is_file() or _sha256(archive) != TOTALSEG_SDIST_SHA256:
            _download(archive, TOTALSEG_SDIST_SHA256)
        root.mkdir(parents=True, exist_ok=True)
        _extract(archive, folder)
    except (OSError, tarfile.TarError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(
            f"could not fetch the real CT test series ({TOTALSEG_REQUIREMENT} from PyPI): {error}. "
            f"Run `python scripts/fetch_test_data.py` with network access, or put an extracted copy in {folder} "
            "(set LESIONSEG_TEST_DATA to use another cache folder)"
        ) from error
    return series
