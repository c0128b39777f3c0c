"""The bounded-space helpers: in-place compaction against plain indexing, the chunked finiteness check
against torch.isfinite."""

import math

import pytest
import torch

import hywia.calibration.gram_space as gram_space


@pytest.mark.parametrize("chunk_bytes", [8, 8 * 7, 2**27])  # one row per chunk, a few rows, everything at once
def test_in_place_compaction_equals_plain_indexing(monkeypatch, chunk_bytes):
    monkeypatch.setattr(gram_space, "CHUNK_BYTES", chunk_bytes)
    square = torch.randn(9, 9, dtype=torch.float64)
    rows = torch.randn(9, 4, dtype=torch.float64)
    keep = torch.tensor([0, 2, 3, 7, 8])
    expected_square, expected_rows = square[keep][:, keep].clone(), rows[keep].clone()
    torch.testing.assert_close(gram_space.compact_square(square, keep), expected_square, rtol=0, atol=0)
    torch.testing.assert_close(gram_space.compact_rows(rows, keep), expected_rows, rtol=0, atol=0)


@pytest.mark.parametrize("chunk_bytes", [8, 40, 2**27])
def test_chunked_finiteness_check_agrees_with_isfinite(monkeypatch, chunk_bytes):
    monkeypatch.setattr(gram_space, "CHUNK_BYTES", chunk_bytes)
    clean = torch.randn(7, 5, dtype=torch.float64)
    assert gram_space.all_finite(clean)
    for bad in (math.inf, -math.inf, math.nan):
        broken = clean.clone()
        broken[6, 4] = bad  # the very last element: every chunk must be looked at
        assert not gram_space.all_finite(broken)


def test_a_taken_gram_is_no_longer_held_by_its_statistics():
    from hywia.calibration.layerwise import GramStats

    stats = GramStats(3)
    x = torch.randn(5, 3)
    stats.add_batch(x)
    gram = stats.take_gram()
    torch.testing.assert_close(gram, x.double().T @ x.double())
    assert stats.gram is None and stats.count == 5  # sums and count stay for the intercept / means
    torch.testing.assert_close(stats.sum, x.double().sum(0))


def test_cholesky_in_place_overwrites_the_matrix_with_its_factor_or_says_none():
    x = torch.randn(9, 4, dtype=torch.float64)
    spd = x.T @ x + torch.eye(4, dtype=torch.float64)
    expected = torch.linalg.cholesky(spd)
    matrix = spd.clone()
    factor = gram_space.cholesky_in_place(matrix)
    torch.testing.assert_close(torch.tril(factor), expected)
    assert factor.data_ptr() == matrix.data_ptr()  # the same storage: no second copy
    assert gram_space.cholesky_in_place(-spd.clone()) is None


def test_diagonal_blocks_are_the_square_blocks_on_the_diagonal():
    matrix = torch.arange(36.0).reshape(6, 6)
    blocks = gram_space.diagonal_blocks(matrix, 2)
    for unit in range(3):
        torch.testing.assert_close(blocks[unit], matrix[2 * unit : 2 * unit + 2, 2 * unit : 2 * unit + 2])
