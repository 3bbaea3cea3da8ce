# Each target sets up .venv itself when it is missing, so a fresh clone needs only `make demo`
# or `make test`. PyTorch is pinned to the local CPU build; see README.
PYTHON ?= python3
# Datasets: a shared folder beside the checkout when there is one, else attnlab's default
# (~/.cache/attnlab/data, where missing datasets are fetched on first use).
ifneq ($(wildcard ../shared/data),)
export ATTNLAB_DATA ?= $(abspath ../shared/data)
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test tutorials docs jupyter bench screenshot lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m attnlab.kernels.cpu  # attnlab's CPU kernels, built once here
	touch $(STAMP)

demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/attnlab train gpt --config configs/demo_stdlib.toml
	@echo "--- three samples from the model (prompt: 'def '):"
	$(BIN)/attnlab sample runs/demo --prompt "def " --max-new-tokens 300 --num-samples 3

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# every tutorial notebook, run at its default size: tutorials/NN_name.ipynb with the outputs;
# SIZE=quick for the small check that needs no downloads, ONLY="3 8" for some of them
tutorials: $(STAMP)
	$(BIN)/python tutorials/build.py run $(if $(SIZE),--size $(SIZE)) $(ONLY)

# the documentation site in build/site (tutorials changed since they last ran run first, quick)
docs: $(STAMP)
	$(BIN)/python tutorials/build.py site

# Jupyter Lab on the tutorials (installed into .venv on first use); a click on a tutorial's .py
# opens it as a notebook (jupytext), and saving writes the .py
JUPYTER_SETTINGS := $(VENV)/share/jupyter/lab/settings
jupyter: $(STAMP)
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install -q jupyterlab
	mkdir -p $(JUPYTER_SETTINGS)
	echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}, "@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}' > $(JUPYTER_SETTINGS)/overrides.json
	$(BIN)/jupyter lab tutorials/ $(if $(filter 0,$(shell id -u)),--allow-root)

# the self-contained measurements, each printing a markdown table (benchmarks/RESULTS.md)
BENCHMARKS := train_throughput cold_start tokenizer_speed kernel_timings mixer_scan
bench: $(STAMP)
	for f in $(BENCHMARKS); do echo "== $$f"; $(BIN)/python benchmarks/$$f.py || exit 1; done

# the README's pictures: the attention viewer (a small model trained first, about 2 minutes)
# and the documentation site's tutorial index (the site built first)
screenshot: $(STAMP) docs
	$(BIN)/python tests/viewer_screenshot.py
	$(BIN)/python tests/site_screenshot.py

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format --check . || true

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache tutorials/*.ipynb
