"""vpt: one toolkit for video prediction, from raw videos to samples and metrics."""

__version__ = "0.1.0"
