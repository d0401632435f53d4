# improvd: `make demo` and `make test` work on a fresh machine with python3 and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test model lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/improvd --seed-file examples/motif.mid --output-file continuation.mid --plot continuation.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check improvd training tests bench

# Reproduces the shipped model (about 90 minutes on 2 cores; see README).
model: $(STAMP)
	$(BIN)/python -m training.prepare --out data/corpus
	$(BIN)/python -m training.train --data data/corpus --out runs/default --max-minutes 80
	$(BIN)/python -m training.export --run runs/default --out exported/improvd --quantize
	$(BIN)/python -m training.evaluate --model exported/improvd.onnx --data data/corpus --report exported/improvd.eval.json

bench: $(STAMP)
	$(BIN)/python bench/step.py

clean:
	rm -rf $(VENV) *.egg-info
