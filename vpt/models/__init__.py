"""Backends (one module or package each), autoencoders, and the shared building blocks."""
