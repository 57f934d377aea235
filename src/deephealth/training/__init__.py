"""Training, calibration and export: the only sub-package that imports PyTorch ([train] extra)."""
