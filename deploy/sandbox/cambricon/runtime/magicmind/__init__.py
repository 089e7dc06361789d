"""Simulated Cambricon MagicMind (sandbox boards only): ``import magicmind.python.runtime as mm``.

Nothing here is Cambricon software and none of it runs on an MLU; see ../../README.md.
"""
