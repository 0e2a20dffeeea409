"""Datasets: synthetic abdominal CT phantoms and readers for public 3D CT layouts (torch-free records)."""

HELD_OUT_FIRST_SEED = 100000  # phantom seeds from here on are reserved for evaluation (never trained on)
