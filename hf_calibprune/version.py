"""The library version, recorded in every config and report it writes."""

__version__ = "0.1.0"
