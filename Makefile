# The two commands that matter: `make run` and `make test`. Both set everything up themselves
# (libtorch in a cached venv, generated test models) and are safe to repeat.
SHELL := /bin/bash
WITH := scripts/with-libtorch.sh
# Tests create one database per test on this server (#[sqlx::test]); DATABASE_URL overrides.
TEST_DATABASE_URL := $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/postgres)

.PHONY: run demo test test-reference setup models examples fixtures openapi bench bench-e2e bench-extraction bench-upload bench-jobs bench-memory gpu-bench-binary coverage lint fmt check-deploy smoke soak soak-ci fuzz

## run: start the service on 127.0.0.1:8080 (database, admin and demo keys set up on first start)
run: models
	$(WITH) cargo build --quiet
	$(WITH) scripts/run-dev.sh

## demo: score the bundled example images from the command line
demo: models
	$(WITH) cargo run --quiet -- score examples/A examples/B

## test: the whole test suite
test: models
	DATABASE_URL=$(TEST_DATABASE_URL) $(WITH) cargo test --quiet

## test-reference: the tests ignored by `make test` because they need the reference venv
## (open_clip, timm: scripts/reference/setup.sh, several GB from PyPI, own venv); not in CI
test-reference: models
	$(WITH) bash -c 'py="$$(scripts/reference/setup.sh)" && GAPMETER_REFERENCE_PYTHON="$$py" cargo test --quiet --test extractors --test tokenizer -- --ignored'

## setup: install the pinned libtorch (torch==2.11.0 from PyPI) under ~/.cache/gapmeter
setup:
	$(WITH) true

## models: write the untrained, seeded test extractors to ~/.cache/gapmeter/models
models: setup
	$(WITH) bash -c '"$$GAPMETER_PYTHON" scripts/make_test_models.py'

## examples: regenerate examples/A and examples/B (committed; rarely needed)
examples: setup
	$(WITH) bash -c '"$$GAPMETER_PYTHON" scripts/make_examples.py'

## fixtures: regenerate reference values with pytorch-fid, torch-fidelity, clean-fid, prdc and
## Pillow (PyPI, own venv): metric values, decode/resize pixels, end-to-end FID parity
fixtures: models
	$(WITH) bash -c 'py="$$(scripts/reference/setup.sh)" && "$$py" scripts/reference/make_metric_fixtures.py && "$$py" scripts/reference/make_imaging_fixtures.py && "$$py" scripts/reference/make_extractor_fixtures.py && "$$py" scripts/reference/make_pad_fixture.py && "$$py" scripts/reference/make_transform_fixture.py && "$$py" scripts/reference/make_tokenizer_fixture.py'

## openapi: regenerate openapi/openapi.json from the code
openapi: setup
	$(WITH) cargo run --quiet -- openapi > openapi/openapi.json

## bench: metric benchmarks (prints timings). The dev profile shares the test build (dependencies
## at opt-level 3; the heavy lifting is inside libtorch either way).
bench: models
	$(WITH) cargo bench --profile dev --bench metrics

## bench-e2e: images/s of `gapmeter score` against clean-fid 0.1.35 on the same generated JPEGs and
## seeded FID Inception, interleaved rounds, and the model-alone ceiling (docs/performance.md).
## The binary is the one `make run` builds. E2E_ARGS="--images 32 --rounds 1" for a quick look.
bench-e2e: models
	$(WITH) cargo build --quiet
	$(WITH) bash -c 'py="$$(scripts/bench/setup.sh)" && "$$py" scripts/bench/e2e.py --gapmeter "$${CARGO_TARGET_DIR:-target}/debug/gapmeter" --models-dir "$$GAPMETER_MODELS_DIR" $(E2E_ARGS)'

## bench-extraction: images/s of the FID Inception on the CPU by batch size, intra-op threads and
## replicas (the figures behind --batch-size auto, docs/performance.md)
bench-extraction: models
	$(WITH) cargo bench --profile dev --bench extraction

## gpu-bench-binary: the binary scripts/gpu-bench.sh runs on a lent GPU machine (gpu-bench/gapmeter,
## stripped so it travels light; it links that machine's own torch 2.11.0 at run time)
gpu-bench-binary: setup
	$(WITH) cargo build --quiet
	mkdir -p gpu-bench
	strip -o gpu-bench/gapmeter "$${CARGO_TARGET_DIR:-target}/debug/gapmeter"

## bench-upload: stream a ~500 MB upload into the service, print peak memory (needs PostgreSQL)
bench-upload: setup
	DATABASE_URL=$(TEST_DATABASE_URL) $(WITH) cargo bench --profile dev --bench upload_memory

## bench-jobs: latency of scoring through HTTP: cold job, cached re-score p50/p99 (needs PostgreSQL)
bench-jobs: models
	DATABASE_URL=$(TEST_DATABASE_URL) $(WITH) cargo bench --profile dev --bench rescore

## bench-memory: peak memory and time of `gapmeter score` on two 50,000 × 2048 float32 .npy files
## (FID, KID, PRDC; PRDC takes minutes), and KID with and without kernel reuse at 5,000 per side.
## GAPMETER_MEMORY_N=5000 for a quick look; docs/metrics.md, "Memory".
bench-memory: setup
	$(WITH) cargo build --quiet
	$(WITH) cargo bench --profile dev --bench memory

## coverage: simulate the intervals' coverage on distributions with known FID and KID (prints the
## table of docs/metrics.md; COVERAGE_ARGS=--quick for a fast look, "--only-d 64" for one half).
## One libtorch thread: its many small operations run faster without OpenMP's spinning.
coverage: setup
	OMP_NUM_THREADS=1 GAPMETER_COVERAGE_ARGS="$(COVERAGE_ARGS)" $(WITH) cargo bench --profile dev --bench coverage

## lint: formatting and clippy, as CI runs them
lint:
	cargo fmt --check
	$(WITH) cargo clippy --all-targets --quiet -- -D warnings

fmt:
	cargo fmt

## soak: the service's bad days, measured (docs/reliability.md): 100 worker kills, database restarts,
## a full and a read-only blob store, 60 s of load, against a private PostgreSQL cluster (root
## for the tmpfs; ~15 min). SOAK_ARGS overrides, e.g. SOAK_ARGS="--kill-trials 20 --load-seconds 0"
SOAK_ARGS ?= --kill-trials 100 --db-restarts 2 --downtime 5-20 --storage-faults 2 --load-seconds 60 --shutdowns 2
soak: models
	$(WITH) cargo bench --profile dev --bench soak -- $(SOAK_ARGS)

## soak-ci: the short version CI runs: 10 kills, one restart, one storage fault, 10 s of load, one shutdown
soak-ci: models
	$(WITH) cargo bench --profile dev --bench soak -- --kill-trials 10 --db-restarts 1 --downtime 5-5 --storage-faults 1 --load-seconds 10 --shutdowns 1

## check-deploy: lint the Dockerfiles and scripts, validate docker/compose.yaml, render the Kubernetes
## overlays and validate them against the API schemas (tools from PyPI into a cached venv; seconds)
check-deploy:
	scripts/check-deploy.sh

## smoke: build the CPU image, run docker/compose.yaml with podman-compose, score examples/A vs B
## through the API and compare with the CLI (root on Debian; ~30 min the first time)
smoke: models
	docker/smoke.sh

## fuzz: build the cargo fuzz targets (fuzz/) and run each for FUZZ_SECONDS (default 60); prints
## executions and findings per target, fails on a finding (docs/reliability.md, "Fuzzing").
## FUZZ_SANITIZER=none builds without AddressSanitizer. The first build takes ~25 min on 2 cores.
fuzz: setup
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) scripts/fuzz.sh $(FUZZ_TARGETS)
