"""Adapters that plug evosparse into other training frameworks (optional dependencies)."""
