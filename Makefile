# Two commands set up everything on a fresh clone:
#   make run   - install what is missing, then train SEA on a generated catalogue on a local Ray cluster
#   make test  - install what is missing, then run the test suite (slow tests: make test-slow)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp makes a second call skip pip entirely (seconds, not minutes).
STAMP := $(VENV)/.installed-stamp
RUN_DIR ?= runs/demo
DATA_DIR ?= runs/data/demo

.PHONY: install run test test-slow doctor clean

install: $(STAMP)

# pip's output goes to a log: on success the install is silent, on failure its tail is shown.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing sea-dist and its pinned stack into $(VENV) (log: $(VENV)/install.log)"
	@$(BIN)/python -m pip install -e '.[dev]' > $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

doctor: install
	@$(BIN)/sea-dist doctor

# The run prints the doctor's lines, the data table, one progress bar and the run's summary.
run: install
	@$(BIN)/sea-dist doctor
	@test -f $(DATA_DIR)/meta.json || $(BIN)/sea-dist data generate $(DATA_DIR) --no-progress \
		--users 3000 --items 2000 --interactions 60000 --modalities image:128,text:96 --seed 0 \
		> /dev/null
	@$(BIN)/sea-dist data inspect $(DATA_DIR)
	@rm -rf $(RUN_DIR)
	@$(BIN)/sea-dist train --config configs/demo.yaml --output $(RUN_DIR)

test: install
	$(BIN)/python -m pytest -m "not slow"

# Multi-minute end-to-end runs (killed workers, two-node clusters, benchmark scenarios); CI runs them.
test-slow: install
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf runs .pytest_cache
