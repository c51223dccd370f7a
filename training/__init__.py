"""NBHRnet training in PyTorch (issue 4); nothing here yet is needed by the workers."""
