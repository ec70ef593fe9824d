"""Data pipeline: video I/O, frame extraction, HDF5 shards, clip datasets, built-in synthetic data."""
