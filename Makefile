# The two commands of the README: `make demo` and `make test`. Both work from a
# fresh clone: they create .venv, install the package, and install Mosquitto
# with apt-get when it is missing and we are root (else say how to get it).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: test demo venv mosquitto clean

# The style first (seconds), then the tests: a lint or type regression fails CI as a test would.
test: venv mosquitto
	$(VENV)/bin/ruff check mqttlb tests
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

demo: venv mosquitto
	$(PY) -m mqttlb demo

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

mosquitto:
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Mosquitto with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
	else \
		echo "mqttlb needs Mosquitto: run 'sudo apt-get install mosquitto mosquitto-clients' and try again" >&2; exit 1; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
