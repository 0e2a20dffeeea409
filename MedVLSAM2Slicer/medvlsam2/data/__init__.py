"""Datasets: synthetic abdominal CT phantoms and readers for public 3D CT layouts (torch-free records)."""
