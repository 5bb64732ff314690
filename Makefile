# Thyroid AI Node: the two commands of a fresh machine are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup run test peers viewer demo bench-ingest bench-nm bench-ct bench-us

# A virtual environment with the node installed. torch first, from the CPU wheel
# (pip install torch==2.13.0), so nothing pulls a multi-GB CUDA build.
$(BIN)/thyroid-node: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/thyroid-node

# Build (once, cached in ~/.cache/thyroid-node) the phantom-trained demo weights.
demo: setup
	$(BIN)/thyroid-node build-demo

# The node on its embedded defaults: listener on 127.0.0.1:11112, spool in ./var,
# SQLite broker, workers in-process. Pass CONFIG=file.yaml for a real site.
run: demo
	$(BIN)/thyroid-node serve $(if $(CONFIG),--config $(CONFIG))

# Real peers for the tests: dcmtk, dicom3tools, Orthanc (apt), a Redis on 127.0.0.1:6379.
peers:
	deploy/ensure-test-peers.sh

# The real-viewer test's tools (tests/viewer): Debian's chromium (apt), OHIF's prebuilt viewer and
# playwright-core (npm, pinned by tests/viewer/package-lock.json), cached in ~/.cache/thyroid-node/viewer.
viewer:
	deploy/ensure-viewer.sh

test: setup peers demo viewer
	$(BIN)/mypy
	$(BIN)/python -m pytest

bench-ingest: setup peers
	$(BIN)/python benchmarks/ingest.py

bench-nm: demo peers
	$(BIN)/python benchmarks/nm_latency.py

bench-ct: demo peers
	$(BIN)/python benchmarks/ct_latency.py

bench-us: demo peers
	$(BIN)/python benchmarks/us_throughput.py
