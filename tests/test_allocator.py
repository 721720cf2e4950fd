"""runtime.keep_freed_memory (qbench/allocator.py): a network's activations, allocated again at each
forward, reuse the heap's pages instead of faulting in fresh ones, and a run computes the same
numbers either way."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qbench.allocator import _mallopt, heap_in_use
from qbench.run import run
from tests.conftest import compose_config

FAULTS = """
import resource, sys, torch
from qbench.allocator import keep_freed_memory
assert keep_freed_memory(sys.argv[1] == "keep") == (sys.argv[1] == "keep")
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                          torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.BatchNorm2d(16)).eval()
x = torch.randn(128, 3, 64, 64)  # four activations of 32 MiB per forward: above glibc's mmap threshold
with torch.no_grad():
    for _ in range(3):  # the heap reaches its size for this network's activations within a few forwards
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        net(x)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(_mallopt() is None, reason="needs glibc's mallopt")


def page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


def test_freed_activations_are_reused_instead_of_faulting_in_fresh_pages():
    pages = 5 * 4 * (32 << 20) // 4096  # five forwards' activations, had each page been fresh
    assert page_faults("default") > pages // 2  # glibc: each activation mmap'd afresh and touched
    assert page_faults("keep") < pages // 10


def test_a_run_computes_the_same_numbers_either_way(tmp_path):
    records = [run(compose_config(["method=lsq", "bits=3", f"runtime.keep_freed_memory={keep}"], tmp_path / keep))
               for keep in ("true", "false")]
    assert records[0]["fp"]["weights_sha256"] == records[1]["fp"]["weights_sha256"]
    assert records[0]["metrics"] == records[1]["metrics"]


def test_heap_in_use_counts_a_tensor_while_it_lives_whatever_is_kept_for_reuse():
    before = heap_in_use()
    x = torch.empty(10_000_000)  # 40 MB
    during = heap_in_use()
    del x
    after = heap_in_use()
    assert during - before == pytest.approx(40e6, rel=0.01)
    assert abs(after - before) < 1e6
