"""Segmentation plans against the memory this process may really use, and refuses what cannot fit before inference.

The limits are real: a child process runs ``lesionseg segment`` under an address-space limit (``ulimit -v``), and
the cgroup reader is checked on folders laid out as the kernel's cgroup v1 and v2 files are.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support.processes import segment_under_address_space_limit
from support.tiny_models import threshold_spec_dict, threshold_state, write_model_folder

from lesionseg.image import Image
from lesionseg.inference.devices import address_space_room_bytes, cgroup_room_bytes, host_memory
from lesionseg.inference.memory import GIB, MemoryPlanError, check_memory_plan, plan_memory
from lesionseg.inference.network_grid import axis_map, resample_array_in_slabs, resample_separable
from lesionseg.io import write_image


def test_resampling_in_slabs_equals_resampling_in_one_piece():
    rng = np.random.default_rng(3)
    array = rng.integers(-1024, 2000, size=(37, 29, 41), dtype=np.int16)
    # Shrink k, stretch j, keep i: the first (most shrinking) pass is along k, slabs run along another axis.
    maps = [axis_map(37, 15, 2.4, 0.3), axis_map(29, 50, 0.55, -0.2), axis_map(41, 41, 1.0, 0.0)]
    whole = resample_separable(torch.from_numpy(array.astype(np.float32)), maps)
    for slab_voxels in (1, 500, 10_000, 1 << 30):
        pieces = resample_array_in_slabs(array, maps, torch.device("cpu"), slab_voxels=slab_voxels)
        assert pieces.dtype == torch.float32 and pieces.shape == whole.shape
        assert torch.equal(pieces, whole), f"slab size {slab_voxels} changed the result"


def _files(folder: Path, entries: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in entries.items():
        (folder / name).write_text(text)


def test_cgroup_v2_limit_counts_usage_minus_reclaimable_cache(tmp_path):
    root = tmp_path / "cgroup"
    _files(root / "batch" / "job42", {
        "memory.max": str(6 * GIB),
        "memory.current": str(2 * GIB),
        "memory.stat": f"anon {GIB}\ninactive_file {GIB // 2}\nactive_file 0\n",
    })  # fmt: skip
    _files(root / "batch", {"memory.max": "max", "memory.current": str(3 * GIB)})
    (tmp_path / "self").write_text("0::/batch/job42\n")
    assert cgroup_room_bytes(root, tmp_path / "self") == 6 * GIB - (2 * GIB - GIB // 2)


def test_cgroup_v1_limit_is_found_at_the_namespace_root_and_the_tighter_parent_wins(tmp_path):
    root = tmp_path / "cgroup"
    # Inside a cgroup namespace the named path does not exist under the mount: the mount's top is our group.
    _files(root / "memory", {
        "memory.limit_in_bytes": str(4 * GIB),
        "memory.usage_in_bytes": str(GIB),
        "memory.stat": "total_inactive_file 0\n",
    })  # fmt: skip
    (tmp_path / "self").write_text("12:pids:/x\n4:memory:/process_api/abc\n0::/\n")
    assert cgroup_room_bytes(root, tmp_path / "self") == 3 * GIB
    _files(root / "memory" / "process_api" / "abc", {
        "memory.limit_in_bytes": str(9223372036854771712),  # v1's "no limit"
        "memory.usage_in_bytes": str(GIB),
    })  # fmt: skip
    assert cgroup_room_bytes(root, tmp_path / "self") == 3 * GIB
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712")
    assert cgroup_room_bytes(root, tmp_path / "self") is None


def test_host_memory_on_this_machine_is_positive_and_names_its_bound():
    host = host_memory()
    assert host.available_bytes > 0 and host.limited_by
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    assert (address_space_room_bytes() is None) == (soft == resource.RLIM_INFINITY)


def test_a_plan_over_the_limit_is_refused_with_the_figure_the_bound_and_the_remedy():
    plan = plan_memory(200_000_000, 2, (96, 96, 96), 4, "cpu", 0, 64 * GIB, input_voxels=900_000_000, input_itemsize=2)
    small = type(host_memory())(3 * GIB, "this process's cgroup memory limit")
    with pytest.raises(MemoryPlanError) as refused:
        check_memory_plan(plan, small, "cpu", crop_body=False)
    message = str(refused.value)
    assert f"{plan.host_bytes / GIB:.1f} GiB" in message and "3.0 GiB" in message
    assert "cgroup memory limit" in message and "--crop-body" in message
    check_memory_plan(plan, type(small)(64 * GIB, "the machine's available RAM"), "cpu", crop_body=False)
    gpu = plan_memory(10_000_000, 2, (96, 96, 96), 4, "cuda", GIB // 32, 64 * GIB, input_voxels=10_000_000)
    with pytest.raises(MemoryPlanError, match="--device cpu"):
        check_memory_plan(gpu, type(small)(64 * GIB, "the machine's available RAM"), "cuda", crop_body=True)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status for the address-space room")
def test_segment_under_an_address_space_limit_is_refused_before_inference(tmp_path):
    # A model at 0.5 mm on a 1 mm CT: the network grid has 8x the input's voxels, so the plan needs ~2.6 GiB.
    spec = threshold_spec_dict("fine", spacing=(0.5, 0.5, 0.5))
    model = write_model_folder(tmp_path / "fine", spec, threshold_state())
    ct = np.full((200, 256, 256), -1000, dtype=np.int16)
    ct[60:140, 80:180, 80:180] = 300
    source = write_image(Image(ct, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3)), tmp_path / "ct.nrrd")
    # The engine's imports take about 1 GiB of address space; leave about 1 GiB more.
    segment_under_address_space_limit(model, source, tmp_path / "out.nii.gz", 2 * GIB + GIB // 4)
