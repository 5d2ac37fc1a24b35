"""The protodb version (one place; the package and every catalog row it writes read it here)."""

__version__ = "0.1.0"
