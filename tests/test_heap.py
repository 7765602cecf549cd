"""Training keeps freed memory for the next step (glibc), and gives it back afterwards.

Measured in a fresh interpreter: how ``malloc`` places a block depends on the history of the
process's heap, which in a test session is that of every test before."""

import json
import subprocess
import sys

import pytest

from scvae._train.heap import _glibc

pytestmark = pytest.mark.skipif(
    _glibc() is None, reason="needs glibc's malloc, and SCVAE_STEADY_HEAP not 0"
)

_PROBE = """
import json, resource, torch
from scvae._train.heap import steady_heap

def resident():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()

def step(x):
    y = (x * 2.0).exp_()  # a 40 MB temporary, freed at once
    del y

def faults_per_step(x, steps):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step(x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / steps

x = torch.ones(10 * 2**20)
outside = faults_per_step(x, 3)
base = resident()
with steady_heap():
    for _ in range(3):  # the heap finds its shape in the first steps
        step(x)
    kept = resident() - base
    inside = faults_per_step(x, 20)
returned = resident() - base
print(json.dumps({"outside": outside, "inside": inside, "kept": kept, "returned": returned}))
"""


def test_steps_reuse_freed_memory_inside_and_return_it_after():
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    )
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    step_bytes, pages = 40 * 2**20, 40 * 2**20 / 4096
    # Outside the block each 40 MB temporary comes fresh from the system (a fault a page);
    # inside, the freed block stays in the process and the next steps reuse it (most steps
    # fault on no page; now and then the heap grows by one more block); afterwards it is
    # given back.
    assert probe["outside"] > 0.5 * pages
    assert probe["kept"] > 0.8 * step_bytes
    assert probe["inside"] < 0.25 * probe["outside"]
    assert probe["returned"] < 0.25 * step_bytes
