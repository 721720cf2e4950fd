"""Quantization methods, one module each, registered by name. Importing this package registers
every method."""
from qbench.methods import apot, attention_round, faq, fp, lsq, lsqplus  # noqa: F401  (registration side effect)
from qbench.methods.registry import METHODS, Method, create_method, register_method

__all__ = ["METHODS", "Method", "create_method", "register_method"]
