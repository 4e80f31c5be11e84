"""The version of mixir (one place: the package root, the tuning database's provenance and the CLI
read it here)."""
__version__ = "0.1.0"
