# glip-d2: `make demo` runs the main job, `make test` the test suite; both install on first use.
PY := .venv/bin/python
OUT ?= output/quickstart

.PHONY: install demo test lint clean self-training web

install:
	bash tools/install.sh

demo: install
	$(PY) train_net.py --config-file configs/quickstart/glip_tiny_shapes.yaml OUTPUT_DIR $(OUT)

# The self-training reproduction (README "Self-training and auto-labelling"), about 25 min.
self-training: install
	$(PY) tools/self_training.py --out output/self_training

# The web demo (README "Web demo") on the quick start's weights; `make demo` trains them.
web: install
	$(PY) demo/app.py --config-file configs/quickstart/glip_tiny_shapes.yaml \
		--opts MODEL.WEIGHTS $(OUT)/model_final.pth

test: install
	$(PY) -m pytest -q tests

lint: install
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

clean:
	rm -rf .venv output
