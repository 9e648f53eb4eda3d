"""The package version, in a module of its own so any layer can name it without importing
the public API in ``convssl/__init__.py`` (which sits above everything)."""

__version__ = "0.1.0"
