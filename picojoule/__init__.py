"""picojoule: hardware-aware compression search (bits, channel pruning, low rank) against analytic cost models."""

from picojoule.errors import PicojouleError

__version__ = "0.1.0"
__all__ = ["PicojouleError", "__version__"]
