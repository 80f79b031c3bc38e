#!/usr/bin/env bash
# Run the self-tests of LesionSeg's Slicer modules inside a real 3D Slicer, from this source tree.
#
# Usage:
#   SLICER_EXECUTABLE=/path/to/Slicer Testing/run_slicer_selftests.sh [Module ...]
#
#   SLICER_EXECUTABLE  the Slicer launcher (Linux: <Slicer>/Slicer, macOS: Slicer.app/Contents/MacOS/Slicer,
#                      Windows with Git Bash: <Slicer>/Slicer.exe). Required. Slicer 5.10 or newer
#                      (its Python 3.12; the engine needs Python >= 3.10).
#   Module ...         which modules to test (default: SpleenSeg ProstateMetSeg LesionSegTraining).
#
# Each module runs in its own Slicer process, the way Slicer's ctest runs slicer_add_python_unittest:
#   Slicer --no-splash --no-main-window --testing --additional-module-paths <module folders>
#          --python-code "import slicer.testing; slicer.testing.runUnitTest([<folder>], '<Module>')"
# runUnitTest runs every test_* method of <Module>Test. With --testing, Slicer exits after the code,
# with a non-zero status when it raised (a failed test raises). The modules find the engine package
# (lesionseg/) and their shared package (LesionSegLib/) in the repository root, as they do for a developer
# who adds the module folders under Application Settings > Modules.
#
# The segmentation and training scenarios run real background jobs with Slicer's PythonSlicer and a tiny
# model the test builds (LesionSegLib.selftest): they need torch and monai in that Slicer's Python (install
# them once, e.g. through a first Segment click or PyTorchUtils) and are reported as skipped without them.
# The DICOM export scenario uses a temporary DICOM database; with SlicerRT installed it exports through
# SlicerRT's plugin, otherwise through LesionSeg's own RTSTRUCT writer.
#
# Slicer needs a display even without its main window: on Linux with no DISPLAY the script runs it
# under `xvfb-run -a` (Debian/Ubuntu package: xvfb).
#
# Exit status: 0 when every module's self-test passed, 1 when one failed, 2 for a usage problem.
set -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if command -v cygpath >/dev/null 2>&1; then
  REPO="$(cygpath -m "$REPO")"  # Git Bash on Windows: Slicer wants C:/... paths, not /c/...
fi
ALL_MODULES=(SpleenSeg ProstateMetSeg LesionSegTraining)

if [[ -z "${SLICER_EXECUTABLE:-}" ]]; then
  echo "error: SLICER_EXECUTABLE is not set; point it at the Slicer launcher, e.g." >&2
  echo "  SLICER_EXECUTABLE=\$HOME/Slicer-5.10.0-linux-amd64/Slicer $0" >&2
  exit 2
fi
if [[ ! -x "$SLICER_EXECUTABLE" ]]; then
  echo "error: SLICER_EXECUTABLE=$SLICER_EXECUTABLE is not an executable file; give the path of the Slicer launcher" >&2
  exit 2
fi

if [[ $# -gt 0 ]]; then
  MODULES=("$@")
else
  MODULES=("${ALL_MODULES[@]}")
fi

MODULE_PATHS=()
for module in "${ALL_MODULES[@]}"; do
  MODULE_PATHS+=("$REPO/$module")
done
for module in "${MODULES[@]}"; do
  if [[ ! -f "$REPO/$module/$module.py" ]]; then
    echo "error: no module named $module; choose from: ${ALL_MODULES[*]}" >&2
    exit 2
  fi
done

DISPLAY_WRAPPER=()
if [[ "$(uname -s)" == Linux && -z "${DISPLAY:-}" && -z "${WAYLAND_DISPLAY:-}" ]]; then
  if ! command -v xvfb-run >/dev/null 2>&1; then
    echo "error: no display and no xvfb-run; install Xvfb (apt-get install xvfb) or run from a desktop session" >&2
    exit 2
  fi
  DISPLAY_WRAPPER=(xvfb-run -a)
fi

failed=()
for module in "${MODULES[@]}"; do
  echo "=== $module self-test"
  code="import slicer.testing; slicer.testing.runUnitTest(['$REPO/$module'], '$module')"
  # --disable-cli-modules: the self-tests use no CLI module, and skipping them halves the start-up time.
  # The ${arr[@]+...} form keeps an empty wrapper list from tripping macOS's bash 3.2.
  if ${DISPLAY_WRAPPER[@]+"${DISPLAY_WRAPPER[@]}"} "$SLICER_EXECUTABLE" --no-splash --no-main-window --testing \
      --disable-cli-modules --additional-module-paths "${MODULE_PATHS[@]}" --python-code "$code"; then
    echo "=== $module: passed"
  else
    echo "=== $module: FAILED"
    failed+=("$module")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "self-tests failed: ${failed[*]}" >&2
  exit 1
fi
echo "all self-tests passed: ${MODULES[*]}"
