"""Host side of atlas-deploy: inventory -> plan -> bundle -> push -> run -> pull."""

__version__ = "0.1.0"
