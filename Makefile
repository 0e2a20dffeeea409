# The two set-up commands of the README: `make demo` and `make test`.
VENV := .venv/bin

.PHONY: setup demo test
setup:
	bash scripts/bootstrap.sh

demo: setup
	$(VENV)/medvlsam2 demo --out outputs/demo

test: setup
	$(VENV)/python -m pytest -q
