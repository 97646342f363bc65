# Quick start: `make run` (set up, then the whole study on the embedded demo data set) and
# `make test` (set up, then the tests). Everything `make run` writes goes under runs/demo/.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo
SML := $(BIN)/sml
DEVICE ?= cpu
QUICK ?= 0

.PHONY: setup run run-released run-field run-grid run-modern test test-all bench lint docs docs-setup clean-demo gpu-check gpu-wheels

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; a second `make setup` takes well under a second.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

run: setup
	$(SML) data demo --out $(DEMO)/data
	$(SML) train --model mlgcn --root $(DEMO)/data --out $(DEMO)/ckpt/mlgcn.pt --resume
	$(SML) train --model mlliw --root $(DEMO)/data --out $(DEMO)/ckpt/mlliw.pt --resume \
	    --backbone-weights $(DEMO)/ckpt/mlgcn.pt --normalization imagenet
	$(SML) evaluate --checkpoint $(DEMO)/ckpt/mlgcn.pt $(DEMO)/ckpt/mlliw.pt --out $(DEMO)/table1.json
	$(SML) sweep sweeps/demo.toml --out $(DEMO)/store.zarr
	$(SML) report $(DEMO)/store.zarr --out $(DEMO)/reports

# The same demo under the study's released code (preset "released"); needs `make run`'s models.
run-released: run
	$(SML) sweep sweeps/demo_released.toml --out $(DEMO)/released.zarr
	$(SML) report $(DEMO)/released.zarr --out $(DEMO)/reports-released

# The field's other attacks (Rank I/II, ML-JSMA, TkML-AP, kFool, kUAP, MLAE-DE) on the demo; needs
# `make run`'s models. Under 15 minutes on two CPU cores.
run-field: run
	$(SML) sweep sweeps/field.toml --out $(DEMO)/field.zarr
	$(SML) report $(DEMO)/field.zarr --out $(DEMO)/reports-field

# A parameter grid (PGD: 4 budgets x 2 iteration counts) on the demo; needs `make run`'s models.
run-grid: run
	$(SML) sweep sweeps/demo_grid.toml --out $(DEMO)/grid.zarr
	$(SML) report $(DEMO)/grid.zarr --out $(DEMO)/reports-grid

# A timm model (timm's small test_resnet, 8 epochs from random weights) trained on the demo data set
# with the ASL loss, then the study's nine attacks on it (200 samples each) and their tables.
run-modern: setup
	$(SML) data demo --out $(DEMO)/data
	$(SML) train --timm test_resnet --root $(DEMO)/data --out $(DEMO)/ckpt/timm-test_resnet.pt --resume --loss asl \
	    --epochs 8
	$(SML) evaluate --timm test_resnet --checkpoint $(DEMO)/ckpt/timm-test_resnet.pt --dataset demo \
	    --root $(DEMO)/data --out $(DEMO)/table1-modern.json
	$(SML) sweep sweeps/demo_modern.toml --out $(DEMO)/modern.zarr
	$(SML) report $(DEMO)/modern.zarr --out $(DEMO)/reports-modern

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python -m bench --device $(DEVICE) $(if $(filter 1,$(QUICK)),--quick,)

lint: setup
	$(BIN)/ruff check engine kernels cli tests bench docs

# The documentation site: regenerate the generated pages (from the registry, the CLI and
# bench/results), then build under --strict into build/site/.
DOCS_STAMP := $(VENV)/.docs-installed
docs-setup: setup $(DOCS_STAMP)
$(DOCS_STAMP): pyproject.toml
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test,docs]'
	@touch $(DOCS_STAMP)

docs: docs-setup
	$(BIN)/python docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean-demo:
	rm -rf $(DEMO)

# On a lent GPU machine, which is bare and offline: no `make setup` there, the python3 on the PATH,
# the wheels `make gpu-wheels` put in bench/wheels (carry that folder). <= 6 minutes; without CUDA it
# says so in one line and exits 0. See bench/gpu_check.py.
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	@$(GPU_PY) -m bench.gpu_check

# Here, online: cp312 manylinux wheels of what the GPU machine lacks (zarr, numcodecs, highspy and
# their small needs, ~13 MB), pinned to the versions installed here, into bench/wheels (ignored).
gpu-wheels: setup
	$(BIN)/python -m bench.gpu_check --download-wheels
