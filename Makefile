# The two set-up commands of the README: `make run` (main job) and `make test`.
VENV := .venv/bin

.PHONY: setup run test
setup:
	bash scripts/bootstrap.sh

# Main job until the interactive demo lands (issue 3/6): model configs, parameter counts, device.
run: setup
	$(VENV)/medvlsam2 info --model tiny

test: setup
	$(VENV)/python -m pytest -q
