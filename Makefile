# The two set-up commands of the README: `make run` (main job) and `make test`.
VENV := .venv/bin

.PHONY: setup run test
setup:
	bash scripts/bootstrap.sh

# Main job: the project's own demo weights on a held-out synthetic phantom, no download.
# Writes outputs/demo/{masks.nii.gz, masks.seg.nrrd, answer.txt, report.md, overlay.png}.
run: setup
	$(VENV)/medvlsam2 demo -o outputs/demo

# The tests also cover VoxTell folders, whose packages are an extra (torch stays as installed).
test:
	bash scripts/bootstrap.sh --voxtell
	$(VENV)/python -m pytest -q
