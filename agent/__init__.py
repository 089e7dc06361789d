"""The on-board agent: images -> preprocess -> backend -> top-k -> results.

Runs on the board's own Python (>= 3.7) with numpy, Pillow and one inference
backend only. It never imports the host-side ``deploy`` package.
"""

__version__ = "0.1.0"
