"""Quantization methods, one module each, registered by name. Importing this package imports
every module in it, so a new method is one file (and its ``conf/method/<name>.yaml``)."""
import importlib
import pkgutil

from qbench.methods.registry import METHODS, Method, RunFacts, create_method, register_method

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "Method", "RunFacts", "create_method", "register_method"]
