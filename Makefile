# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint pytest fuzz bench fixtures clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hyperkit demo

test: lint pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n 2 --doctest-modules hyperkit tests

# Random exploration at scale (not in CI): every property and fuzz test with fresh random draws
# and 20x the examples. Takes 10-20 minutes on 2 cores; run it before submitting reader changes.
FUZZ_SCALE ?= 20
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz HYPERKIT_FUZZ_SCALE=$(FUZZ_SCALE) HYPERKIT_PROPERTY_SCALE=$(FUZZ_SCALE) \
		$(BIN)/pytest -n 2 -p no:cacheprovider tests/test_fuzz_mutations.py tests/test_malicious_pickles.py \
		tests/test_properties.py tests/test_crafted_regressions.py tests/test_hostile_files.py

bench: $(STAMP)
	$(BIN)/python scripts/bench.py

fixtures: $(STAMP)
	$(BIN)/python scripts/make_fixtures.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
