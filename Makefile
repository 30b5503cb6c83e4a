# Two entry points: `make demo` (the whole pipeline on generated shapes) and `make test`.
# Both create .venv and install the pinned requirements on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv browser clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash demo.sh

test: $(STAMP) browser
	$(PY) -m pytest -q

# The web app's end-to-end test drives Debian's Chromium (Playwright downloads no browser here).
browser:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: could not install chromium (needs root and apt); the browser test will be skipped"

bench: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash bench/run_all.sh

clean:
	rm -rf demo_out .pytest_cache
