"""Training keeps freed memory for the next step (glibc), and gives it back afterwards."""

import resource

import pytest
import torch

from scvae._heap import _glibc, steady_heap

pytestmark = pytest.mark.skipif(
    _glibc() is None, reason="needs glibc's malloc, and SCVAE_STEADY_HEAP not 0"
)


def _faults_per_step(steps: int) -> float:
    """Page faults per step of a step that allocates and frees 40 MB temporaries."""
    x = torch.ones(10 * 2**20)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        y = (x * 2.0).exp_()
        del y
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / steps


def test_steps_reuse_freed_memory_inside_and_return_it_after():
    before = _faults_per_step(5)
    with steady_heap():
        _faults_per_step(2)  # the heap grows once
        inside = _faults_per_step(5)
    after = _faults_per_step(5)
    pages = 40 * 2**20 / resource.getpagesize()
    # Outside the block, each 40 MB temporary comes fresh from the system (one fault a page);
    # inside, the freed block is reused; afterwards, memory goes back to the system again.
    assert before > 0.5 * pages and after > 0.5 * pages
    assert inside < 0.01 * pages
