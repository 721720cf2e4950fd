"""Element-wise quantizer kernels: eager, or fused by ``torch.compile`` into one loop each.

Quantizer autograd Functions call their kernels on 1-D views in the tensor's memory order
(:func:`flatten` / :func:`unflatten`), so one compiled kernel serves every shape and layout
(contiguous, channels_last). On a 2-core CPU a fused LSQ backward runs ~20× faster than the
eager one on ResNet18's largest weight; compilation happens once per process, on first use,
and is cached on disk.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch


class Kernel:
    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled: Callable | None = None

    def __call__(self, *args):
        return (self.compiled or self.fn)(*args)


KERNELS: list[Kernel] = []


def kernel(fn: Callable) -> Kernel:
    """Register ``fn`` as a quantizer kernel that :func:`compile_kernels` can fuse."""
    k = Kernel(fn)
    KERNELS.append(k)
    return k


RECOMPILE_LIMIT = 32
"""Compiled variants per kernel: one per combination of its Python arguments (an activation's
name, an offset or none, signed or unsigned bounds) and tensor rank; past torch's default of 8 a
kernel would run eagerly, several times slower, without an error."""


def compile_kernels(enabled: bool) -> None:
    """Fuse every registered kernel with ``torch.compile`` (``runtime.compile_quantizers``),
    or return them to eager mode."""
    if enabled:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for k in KERNELS:
        if enabled and k.compiled is None:
            k.compiled = torch.compile(k.fn, dynamic=True)
        elif not enabled:
            k.compiled = None


def memory_order(t: torch.Tensor) -> tuple[int, ...]:
    """The dimension order in which ``t``'s elements lie in memory (outermost first)."""
    return _memory_order(t.shape, t.stride())


@functools.lru_cache(maxsize=4096)
def _memory_order(shape: torch.Size, stride: tuple[int, ...]) -> tuple[int, ...]:
    """:func:`memory_order` of a layout, computed once per layout (a quantizer is called on the
    same few layouts every step)."""
    return tuple(sorted(range(len(shape)), key=lambda d: (-stride[d], -shape[d])))


def flatten(t: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """``t`` as a 1-D tensor in ``order``: a view when ``t`` is dense in that order, detached so
    that it has no base tensor (a compiled kernel would guard on the base's strides)."""
    return t.permute(order).contiguous().view(-1).detach()


def unflatten(flat: torch.Tensor, shape: torch.Size, order: tuple[int, ...]) -> torch.Tensor:
    """Undo :func:`flatten`: a view of ``flat`` with ``shape`` in the layout ``order`` describes."""
    permuted = [shape[d] for d in order]
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return flat.view(permuted).permute(inverse)
