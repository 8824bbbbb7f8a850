"""A mail server for a small box."""

__version__ = "0.1.0"
