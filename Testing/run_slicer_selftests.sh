#!/usr/bin/env bash
# Run the self-tests of LesionSeg's Slicer modules inside a real 3D Slicer, from this source tree.
#
# Usage:
#   SLICER_EXECUTABLE=/path/to/Slicer Testing/run_slicer_selftests.sh [Module ...]
#
#   SLICER_EXECUTABLE  the Slicer launcher (Linux: <Slicer>/Slicer, macOS: Slicer.app/Contents/MacOS/Slicer,
#                      Windows with Git Bash: <Slicer>/Slicer.exe). Required. Slicer 5.10 or newer
#                      (its Python 3.12; the engine needs Python >= 3.10).
#   SLICERRT_MODULE_PATHS  optional: SlicerRT's module folders, separated by ';', to run the SlicerRT export
#                      scenario, e.g. "<SlicerRT>/lib/Slicer-5.10/qt-loadable-modules;<SlicerRT>/lib/Slicer-5.10/qt-scripted-modules"
#                      (<SlicerRT> is the extension's folder that Application Settings > Modules lists).
#   Module ...         which modules to test (default: SpleenSeg ProstateMetSeg LesionSegTraining).
#
# Each module runs in its own Slicer process, the way Slicer's ctest runs slicer_add_python_unittest:
#   Slicer --no-splash --no-main-window --testing --additional-module-paths <module folders>
#          --python-code "import slicer.testing; slicer.testing.runUnitTest([<folder>], '<Module>')"
# runUnitTest runs every test_* method of <Module>Test with unittest: a scenario that cannot run here calls
# skipTest and is reported as skipped, not passed. With --testing, Slicer exits after the code,
# with a non-zero status when it raised (a failed test raises). The modules find the engine package
# (lesionseg/) and their shared package (LesionSegLib/) in the repository root, as they do for a developer
# who adds the module folders under Application Settings > Modules.
#
# The segmentation and training scenarios run real background jobs with Slicer's PythonSlicer and a tiny
# model the test builds (LesionSegLib.selftest): they need torch and monai in that Slicer's Python (install
# them once, e.g. through a first Segment click or PyTorchUtils) and are reported as skipped without them.
# The DICOM export scenario loads a CT through a temporary DICOM database and writes its RTSTRUCT with LesionSeg's
# writer (the route for every CT from DICOM); its DICOM SEG part expects the "install highdicom" refusal in a
# Slicer without highdicom (5.10 as shipped).
# SlicerRT's route (RTSTRUCT of a CT with no DICOM series) needs SlicerRT loaded. --testing runs Slicer with
# temporary settings, so extensions installed through the Extensions Manager are NOT on its module path even
# when installed; the launcher still sets their library paths. Give SlicerRT's module folders in
# SLICERRT_MODULE_PATHS to run that scenario; without them it is reported as skipped and the route is not covered.
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
if [[ -n "${SLICERRT_MODULE_PATHS:-}" ]]; then
  IFS=';' read -r -a SLICERRT_PATHS <<< "$SLICERRT_MODULE_PATHS"
  for path in "${SLICERRT_PATHS[@]}"; do
    [[ -z "$path" ]] && continue
    if [[ ! -d "$path" ]]; then
      echo "error: SLICERRT_MODULE_PATHS names $path, which is not a folder; give SlicerRT's qt-loadable-modules" \
        "and qt-scripted-modules folders, separated by ';'" >&2
      exit 2
    fi
    MODULE_PATHS+=("$path")
  done
  echo "SlicerRT module folders added: the SlicerRT export scenario runs"
else
  echo "SLICERRT_MODULE_PATHS is not set: the SlicerRT export scenario is skipped (that route is not covered)"
fi
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
