# The README's two commands: `make demo` and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch alone first, pinned: this platform keeps its CPU build on disk, and a bare `torch` would pull CUDA.
TORCH_SPEC ?= torch==2.13.0
APT_TOOLS := dicom3tools plastimatch
STAMP := $(VENV)/.installed

.PHONY: demo test lint format setup system-tools clean

$(STAMP): requirements/test.txt requirements/nnunet.txt requirements/nnunet-training.txt requirements/slicer-5.10.txt pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -r requirements/test.txt
# --no-deps: nnunetv2's own dependency chain would replace the CPU torch (requirements/nnunet.txt says why).
	$(PIP) install --quiet --no-deps -r requirements/nnunet.txt -r requirements/nnunet-training.txt
	$(PIP) install --quiet --no-deps --upgrade --target $(VENV)/slicer-5.10 -r requirements/slicer-5.10.txt
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	@$(PY) -c "import torch; assert not torch.version.cuda or '$(ALLOW_CUDA)', 'a CUDA torch build was installed: ' + torch.__version__" 
	touch $(STAMP)

setup: $(STAMP) system-tools

# The tests judge our DICOM output with real tools: dciodvfy (dicom3tools) and plastimatch.
system-tools:
	@missing=""; command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	command -v plastimatch >/dev/null || missing="$$missing plastimatch"; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing with apt-get"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The main job: one synthetic patient from DICOM to a report (prints where the report is).
demo: setup
	$(PY) -m lesionseg demo --output demo-output

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info demo-output
