"""Simulated MagicMind: the ``magicmind.python`` package level (``runtime`` is the API)."""
