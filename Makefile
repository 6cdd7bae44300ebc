# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 8501

.PHONY: run dev test bench assets browser screenshots clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's dependencies change; torch and torchvision are pinned to the releases
# this project is tested with (newer ones are not on every machine). TORCH_INDEX=https://download.pytorch.org/whl/cpu
# takes PyTorch's CPU-only build from its own index instead of PyPI's CUDA build (2.9 GB of wheels).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install torch==2.14.1 torchvision==0.29.1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/cnnviz app --port $(PORT)

# For developers: reload on save, full error details and Streamlit's developer menu. `make run` serves with
# .streamlit/config.toml; these variables override it.
dev: $(STAMP)
	STREAMLIT_SERVER_FILE_WATCHER_TYPE=auto STREAMLIT_SERVER_RUN_ON_SAVE=true \
	STREAMLIT_CLIENT_SHOW_ERROR_DETAILS=full STREAMLIT_CLIENT_TOOLBAR_MODE=developer \
	$(VENV)/bin/cnnviz app --port $(PORT)

# Chromium for the browser tests, from Debian's packages, when it is missing and we may install it.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get install -y chromium || (apt-get update && apt-get install -y chromium); \
		else echo "chromium not found: the browser tests will be skipped (apt-get install chromium)"; fi; }

test: $(STAMP) browser
	$(PY) -m pytest -q

# The README's screenshots, taken by the browser tests.
screenshots: $(STAMP) browser
	CNNVIZ_SCREENSHOTS=1 $(PY) -m pytest -q -m browser

# Benchmarks (python -m benchmarks --help), meant to fit in 30 minutes: fails when a target is missed, rewrites
# the parts of docs/benchmarks.md it ran. The libraries compared with (the bench extra) are installed here only.
# `make bench BENCH="gradcam-libs pointing"` runs some sections; BENCH="--quick" is a smoke run.
bench: $(STAMP)
	$(PY) -c "import pytorch_grad_cam, torchcam" 2>/dev/null || $(PY) -m pip install -e '.[bench]'
	$(PY) -m benchmarks $(BENCH)

# The shipped model: trained reproducibly from a fixed seed by our own code.
assets: $(STAMP)
	$(PY) -m cnnviz.assets

clean:
	rm -rf $(VENV) .pytest_cache
