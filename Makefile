# The two commands that matter: `make run` and `make test`. Both set everything up themselves
# (libtorch in a cached venv, generated test models) and are safe to repeat.
SHELL := /bin/bash
WITH := scripts/with-libtorch.sh

.PHONY: run test setup models examples fixtures bench lint fmt clean-cache

## run: score the bundled example images (the service replaces this in a later release)
run: models
	$(WITH) cargo run --quiet -- score examples/A examples/B

## test: the whole test suite
test: models
	$(WITH) cargo test --quiet

## setup: install the pinned libtorch (torch==2.11.0 from PyPI) under ~/.cache/gapmeter
setup:
	$(WITH) true

## models: write the untrained, seeded test extractors to ~/.cache/gapmeter/models
models: setup
	$(WITH) bash -c '"$$GAPMETER_PYTHON" scripts/make_test_models.py'

## examples: regenerate examples/A and examples/B (committed; rarely needed)
examples: setup
	$(WITH) bash -c '"$$GAPMETER_PYTHON" scripts/make_examples.py'

## fixtures: regenerate reference values with pytorch-fid, torch-fidelity and clean-fid (PyPI)
fixtures: models
	$(WITH) bash -c '"$$(scripts/reference/setup.sh)" scripts/reference/make_metric_fixtures.py'

## bench: metric benchmarks (prints timings). The dev profile shares the test build (dependencies
## at opt-level 3; the heavy lifting is inside libtorch either way).
bench: models
	$(WITH) cargo bench --profile dev --bench metrics

## lint: formatting and clippy, as CI runs them
lint:
	cargo fmt --check
	$(WITH) cargo clippy --all-targets --quiet -- -D warnings

fmt:
	cargo fmt
