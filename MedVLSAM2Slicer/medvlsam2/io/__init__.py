"""CT input/output and geometry (SimpleITK), windowing, and model-input preprocessing with inverses."""
