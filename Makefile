# The two commands of the README: `make demo` and `make test`; `make docs` builds the site.
# Both create .venv if it is missing and install what they need into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned in the same pip command as everything that depends on it, so that pip takes
# the CPU build that lies on these machines' disk instead of a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: test demo docs install-test install-demo install-docs bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PIP) install --quiet "$(TORCH_PIN)" -e ".[test]"
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PIP) install --quiet "$(TORCH_PIN)" -e ".[cli]"
	touch $@

$(VENV)/.docs-installed: pyproject.toml | $(PY)
	$(PIP) install --quiet -e ".[docs]"
	touch $@

install-test: $(VENV)/.test-installed
install-demo: $(VENV)/.demo-installed
install-docs: $(VENV)/.docs-installed

# The test suite, plus the runnable examples in the package's docstrings. It also runs every
# code block of the README and the guides, builds the site (mkdocs build --strict) and the
# sdist and wheel (twine check): tests/test_docs.py, tests/test_packaging.py.
test: install-test
	$(PY) -m pytest --doctest-modules tests amosopt

demo: install-demo
	$(VENV)/bin/amos compare --quick --jobs 2

# The documentation site, into site/ (open site/index.html); broken references fail the build.
docs: install-docs
	$(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache
