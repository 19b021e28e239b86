# Quick start: `make demo` (main job: Yao 2020 and Wang 2019 on simulated chips, one report) and `make test` (whole test suite).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
OUT    ?= runs/demo

.PHONY: demo demo-quick experiments test venv clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[gui,test]'

demo: venv
	$(BIN)/hil demo --out $(OUT) --seed 0
	@echo "report: $(OUT)/report.md"

demo-quick: venv
	$(BIN)/hil demo --quick --out $(OUT)-quick --seed 0

experiments: venv
	$(BIN)/hil program --station sim --pattern levels32 --seed 1 --out $(OUT)/program.h5 --plot $(OUT)/plots
	$(BIN)/hil experiment read-disturb --station sim --seed 1 --reads 1000000 --out $(OUT)/read-disturb.h5 --plot $(OUT)/plots
	$(BIN)/hil experiment drift --station sim --seed 1 --days 30 --out $(OUT)/drift.h5 --plot $(OUT)/plots

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
