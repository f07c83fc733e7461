# glip-d2: `make demo` runs the main job, `make test` the test suite; both install on first use.
PY := .venv/bin/python
OUT ?= output/quickstart

.PHONY: install demo test lint clean

install:
	bash tools/install.sh

demo: install
	$(PY) train_net.py --config-file configs/quickstart/glip_tiny_shapes.yaml OUTPUT_DIR $(OUT)

test: install
	$(PY) -m pytest -q tests

lint: install
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

clean:
	rm -rf .venv output
