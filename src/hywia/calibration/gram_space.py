"""Bounded work space for the d x d float64 matrices (Grams, inverses) that dominate the peak memory: gathers
that shrink a matrix inside its own storage, a Cholesky factorisation in place, the diagonal blocks of a matrix
as a view, and a finiteness check that allocates no full-size temporary.

Used where a d_in^2 float64 Gram or inverse is the largest thing alive: the sequential coarse score drops
removed units from its inverse as it goes, the reconstruction turns the Gram G into its kept block G_SS.
Both copy chunk by chunk towards the start of the storage; with ascending indices, destination i lies at or
before source index[i], so no row is overwritten before it is read.
"""

from __future__ import annotations

import torch

CHUNK_BYTES = 2**27  # rows gathered per chunk (128 MiB)


def compact_rows(matrix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``matrix[rows]`` written over the start of ``matrix``'s own storage (``rows`` ascending, ``matrix``
    contiguous); returns the view of it."""
    width = matrix.shape[1]
    flat = matrix.view(-1)
    per_chunk = max(1, CHUNK_BYTES // (matrix.element_size() * width))
    for first in range(0, len(rows), per_chunk):
        last = min(len(rows), first + per_chunk)
        flat[first * width : last * width] = matrix.index_select(0, rows[first:last]).reshape(-1)
    return flat[: len(rows) * width].view(len(rows), width)


def compact_square(matrix: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``matrix[index][:, index]`` of a square contiguous matrix, in place (``compact_rows``' argument, with
    the columns gathered per chunk of rows: k <= n and index[i] >= i keep every unread row intact)."""
    n, k = matrix.shape[0], len(index)
    flat = matrix.view(-1)
    per_chunk = max(1, CHUNK_BYTES // (matrix.element_size() * n))
    for first in range(0, k, per_chunk):
        last = min(k, first + per_chunk)
        flat[first * k : last * k] = matrix.index_select(0, index[first:last]).index_select(1, index).reshape(-1)
    return flat[: k * k].view(k, k)


def all_finite(tensor: torch.Tensor) -> bool:
    """``torch.isfinite(tensor).all()`` in chunks of ``CHUNK_BYTES``: isfinite builds ``abs(tensor)`` (a full-size
    copy of a 1 GiB float64 Gram at 7B scale) and a mask of its own."""
    flat = tensor.reshape(-1)  # a view for the contiguous tensors checked here
    step = max(1, CHUNK_BYTES // tensor.element_size())
    return all(bool(torch.isfinite(flat[first : first + step]).all()) for first in range(0, flat.numel(), step))


def cholesky_in_place(matrix: torch.Tensor) -> torch.Tensor | None:
    """The lower Cholesky factor of the symmetric float64 ``matrix``, written over it (no second d x d copy), or
    None when it is not positive definite (``matrix`` is overwritten either way).

    LAPACK and cuSOLVER factorise column-major matrices: handed a row-major ``out``, torch factorises a
    column-major temporary and copies it back (a second d x d matrix: 0.86 GiB at the 7B reconstruction's
    peak). A symmetric matrix is its own transpose, so its column-major view ``matrix.mT`` is the same matrix
    and serves as input and output: the factor comes back as that view (``matrix`` then holds L^T)."""
    info = torch.empty((), dtype=torch.int32, device=matrix.device)
    column_major = matrix.mT
    factor, info = torch.linalg.cholesky_ex(column_major, out=(column_major, info))
    return None if int(info) else factor


def diagonal_blocks(matrix: torch.Tensor, size: int) -> torch.Tensor:
    """The ``size`` x ``size`` diagonal blocks [n / size, size, size] of a square contiguous ``matrix``, as a view."""
    units = matrix.shape[0] // size
    return matrix.view(units, size, units, size).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
