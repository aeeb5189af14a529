"""toolbox: a typed, registry-driven training toolbox for PyTorch."""

__version__ = "0.1.0"
