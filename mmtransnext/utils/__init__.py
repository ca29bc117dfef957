"""Helpers every layer of the package may use (torch and the standard library only)."""
