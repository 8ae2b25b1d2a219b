# scar-net developer commands. `make test` and `make demo` work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel: a bare `torch` requirement would pull a multi-GB CUDA build. Installed BEFORE the
# project so pip sees torch already satisfied.
TORCH_SPEC ?= torch==2.13.0
# cluster: Ray, so that the `--ray` tests (tests/runtime/test_ray_run.py) run in CI too
EXTRAS ?= train,export,dicom,openvino,cluster,dev

.PHONY: install test test-fast lint demo bench bench-quick clean

install: $(VENV)/.installed chromium

# The browser tests (tests/runtime/test_review.py) drive Debian's Chromium through Playwright,
# never a browser Playwright downloads. Installed when missing and we are root; if that fails the
# tests skip, saying why, and the install goes on.
.PHONY: chromium
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the browser tests"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
			>/dev/null 2>&1 || echo "make: could not install chromium: the browser tests will skip"; \
	else \
		echo "make: /usr/bin/chromium is missing (sudo apt-get install chromium): the browser tests will skip"; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	# type stubs only (for tests/export/test_gpu_typing.py): --no-deps, since they depend on
	# the download-stub `tensorrt` package, and outside site-packages, where their tensorrt/
	# folder would make `import tensorrt` succeed without TensorRT
	-$(PY) -m pip install --quiet --disable-pip-version-check --no-deps \
		--target $(VENV)/typing-stubs tensorrt-stubs
	touch $@

# Two workers (CI has 2 cores; many tests wait on single-threaded subprocesses). Tests are spread
# one by one, except modules marked xdist_group, whose costly fixtures (exports, the bench run)
# one worker builds once.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check .

demo: install
	$(PY) -m scar_runtime.commands.demo

bench: install
	$(PY) -m benchmarks.run

bench-quick: install
	$(PY) -m benchmarks.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
