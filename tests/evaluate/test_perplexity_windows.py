"""Perplexity window arithmetic (non-overlapping windows, ragged tail dropped)."""

import math

import pytest
import torch

from hywia.errors import HywiaError
from hywia.evaluate.perplexity import perplexity, split_windows


def test_split_windows_drops_the_tail():
    windows = split_windows(torch.arange(10), 4)
    assert windows.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_split_windows_exact_multiple():
    assert split_windows(torch.arange(12), 4).shape == (3, 4)


@pytest.mark.parametrize("length,window", [(3, 4), (10, 1)])
def test_split_windows_errors(length, window):
    with pytest.raises(HywiaError):
        split_windows(torch.arange(length), window)


def test_perplexity_counts_window_minus_one_tokens_per_window():
    from tiny import tiny_llama

    result = perplexity(tiny_llama(), torch.randint(0, 256, (50,)), window=16, batch_size=2, progress=False)
    assert (result.windows, result.window, result.tokens_scored) == (3, 16, 3 * 15)
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll))
