"""mcit: continual instruction tuning of multimodal LLMs.

The command line (``mcit run``, ``mcit judge``, ...) and this Python API do the same things:

    import mcit
    result = mcit.run(data={"tasks": ["ImageNet", "VQAv2"]}, name="notebook")  # a finished Run
    result.matrix, result.metrics["BWT"]
    mcit.load_run("runs/notebook").stages[0].predictions("ImageNet")

``mcit.Method`` is the interface a continual-tuning method implements (see mcit.methods.base).
Attributes load on first use, so ``import mcit`` does not import torch.
"""
from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mcit")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "run": "mcit.api", "load_run": "mcit.api", "Run": "mcit.api", "Stage": "mcit.api",
    "RunConfig": "mcit.config", "load_config": "mcit.config", "ConfigError": "mcit.config",
    "Method": "mcit.methods.base", "TaskContext": "mcit.methods.base",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mcit' has no attribute {name!r}")
