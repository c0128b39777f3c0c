"""The compensated removal error against a brute-force least-squares refit."""

import pytest
import torch

from hywia.errors import HywiaError
from hywia.importance import compensated
from hywia.importance.compensated import compensated_scores, damped_factor, inverse_blocks
from least_squares import brute_force_error


@pytest.mark.parametrize("centred", [False, True])
@pytest.mark.parametrize("unit_size", [1, 3])
def test_matches_brute_force_refit(centred, unit_size):
    torch.manual_seed(0)
    units, d_out, n, damping = 4, 5, 40, 0.3
    d_in = units * unit_size
    x = torch.randn(n, d_in, dtype=torch.float64) @ torch.randn(d_in, d_in, dtype=torch.float64) + 0.7
    weight = torch.randn(d_out, d_in, dtype=torch.float64)
    gram, total = x.T @ x, x.sum(0)
    extra = dict(input_sum=total, count=n) if centred else {}
    centred_gram = gram - n * torch.outer(total / n, total / n) if centred else gram
    lam = damping * float(centred_gram.diagonal().mean())
    errors = compensated_scores(weight, gram.clone(), units, damping, overwrite=True, **extra)
    for unit in range(units):
        columns = list(range(unit * unit_size, (unit + 1) * unit_size))
        assert float(errors[unit]) == pytest.approx(brute_force_error(weight, x, columns, lam, centred), rel=1e-4)


def test_correlated_copy_is_cheap_to_remove():
    """A unit whose input duplicates a kept one costs almost nothing; a magnitude x norm score cannot see that."""
    torch.manual_seed(1)
    x = torch.randn(500, 3, dtype=torch.float64)
    x = torch.cat([x, x[:, :1] * 2.0], 1)  # column 3 = 2 * column 0
    weight = torch.ones(2, 4, dtype=torch.float64)
    errors = compensated_scores(weight, x.T @ x, 4, 1e-6)
    assert errors[3] < 1e-3 * errors[1] and errors[0] < 1e-3 * errors[1]


def test_rejects_bad_inputs():
    with pytest.raises(HywiaError, match="damping"):
        damped_factor(torch.eye(3), 0.0)
    with pytest.raises(HywiaError, match="NaN"):
        damped_factor(torch.full((2, 2), float("nan")), 0.1)
    with pytest.raises(HywiaError, match="split"):
        compensated_scores(torch.ones(2, 5), torch.eye(5, dtype=torch.float64), 2, 0.1)


@pytest.mark.parametrize("size", [1, 4])
def test_inverse_blocks_in_small_chunks_equal_the_inverse(monkeypatch, size):
    """The chunked trailing-triangle solves give the diagonal blocks of the explicit inverse."""
    torch.manual_seed(2)
    x = torch.randn(64, 24, dtype=torch.float64)
    gram = x.T @ x
    explicit = torch.linalg.inv(gram + 0.1 * gram.diagonal().mean() * torch.eye(24, dtype=torch.float64))
    monkeypatch.setattr(compensated, "CHUNK_BYTES", 8 * 24 * size * 2)  # two units per chunk: several chunks
    blocks = inverse_blocks(damped_factor(gram, 0.1), size)
    for unit in range(24 // size):
        c = slice(unit * size, (unit + 1) * size)
        assert torch.allclose(blocks[unit], explicit[c, c], atol=1e-12)


def test_overwrite_consumes_the_gram_and_gives_the_same_scores():
    torch.manual_seed(3)
    x = torch.randn(50, 12, dtype=torch.float64)
    weight = torch.randn(3, 12, dtype=torch.float64)
    gram = x.T @ x
    kept = compensated_scores(weight, gram, 4, 0.2)
    assert torch.equal(gram, x.T @ x)  # not overwritten unless asked
    assert torch.allclose(compensated_scores(weight, gram, 4, 0.2, overwrite=True), kept)
    assert not torch.equal(gram, x.T @ x)
