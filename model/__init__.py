"""Inference-side estimators: classical rPPG, spectral HR, quality, metrics. Pure numpy/scipy."""
