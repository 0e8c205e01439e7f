# Two commands set everything up on a fresh machine with Python 3.10+:
#   make demo   - segment the brain in a real MRI (MNI152 T1 shipped in nilearn) offline, bundled LiteMedSAM
#   make test   - the whole test suite (CPU only) and the linter
PYTHON ?= python3
# UTF-8 file reads whatever the locale (CI runs with LANG unset)
export PYTHONUTF8 := 1
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medsegany-installed
DEMO_OUT ?= demo_output

.PHONY: venv demo test lint accuracy clean

venv: $(STAMP)

# torch comes from PyPI (its CUDA build also runs on the CPU); slicer-core gives the headless MRML tests
# real Slicer classes; segment-anything is Meta's SAM code for the SAM/MedSAM ViT backends.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,sam2,sam,slicer-test]"
	touch $(STAMP)

demo: venv
	$(BIN)/python -m medsegany.demo --out $(DEMO_OUT)

test: venv lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check MedSegAnyLib MedSegAny Testing benchmarks

accuracy: venv
	$(BIN)/python benchmarks/accuracy.py --cases ../shared/data/cases.json --model litemedsam \
		--out benchmarks/results/accuracy_litemedsam.json

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
