"""Distance computations shared by the rules, written to stream over large inputs.

A model vector has up to millions of coordinates and a rule sees up to hundreds of them;
materialising ``received - own`` allocates (and page-faults) a buffer as large as the
input on every call, which costs more than the arithmetic. These helpers work in blocks of
about ``BLOCK_ELEMENTS`` values so that the temporaries stay small and hot in cache.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Size of the temporaries the streaming helpers allocate, in tensor elements.
BLOCK_ELEMENTS = 1 << 21


def row_distances(rows: Tensor, point: Tensor) -> Tensor:
    """Euclidean distance of every row of ``rows`` (``Tensor[k, d]``) to ``point``."""
    k, d = rows.shape
    block = max(1, BLOCK_ELEMENTS // max(d, 1))
    if block >= k:
        return (rows - point).norm(dim=1)
    return torch.cat([(rows[i : i + block] - point).norm(dim=1) for i in range(0, k, block)])


def centred_norms_and_dots(
    rows: Tensor, point: Tensor, direction: Tensor
) -> tuple[Tensor, Tensor]:
    """``||rows_i - point||`` and ``(rows_i - point) . direction`` for every row, from one
    streamed pass (the differences are formed explicitly, so no cancellation)."""
    k, d = rows.shape
    block = max(1, BLOCK_ELEMENTS // max(d, 1))
    norms, dots = [], []
    for i in range(0, k, block):
        difference = rows[i : i + block] - point
        norms.append(difference.norm(dim=1))
        dots.append(difference @ direction)
    return torch.cat(norms), torch.cat(dots)


#: Recentre when float rounding could distort some pairwise distance by more than this.
RELATIVE_PRECISION = 1e-3


def centred_gram(inputs: Tensor, point: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``(inputs - point) (inputs - point)^T`` (``Tensor[n, n]``), accumulated over column
    blocks so that no ``[n, d]`` temporary is formed; in ``dtype`` (default: the inputs')."""
    n, d = inputs.shape
    dtype = inputs.dtype if dtype is None else dtype
    gram = torch.zeros(n, n, dtype=dtype, device=inputs.device)
    width = max(1, BLOCK_ELEMENTS // max(n, 1))
    for lo in range(0, d, width):
        centred = (inputs[:, lo : lo + width] - point[lo : lo + width]).to(dtype)
        gram.addmm_(centred, centred.T)
    return gram


def _gram_sq_distances(inputs: Tensor, centre: int) -> tuple[Tensor, Tensor]:
    """Squared distances via a Gram matrix of the rows centred at row ``centre``, and the
    squared norms of those centred rows (accumulated over column blocks)."""
    gram = centred_gram(inputs, inputs[centre])
    sq_norms = gram.diagonal().clone()
    dist = sq_norms.unsqueeze(0) + sq_norms.unsqueeze(1) - 2.0 * gram
    dist.fill_diagonal_(0.0)
    return dist.clamp_(min=0.0), sq_norms


def pairwise_sq_distances(inputs: Tensor) -> Tensor:
    """Squared Euclidean distances between the rows of ``inputs`` (``Tensor[n, n]``).

    One Gram matrix product (``|a|^2 + |b|^2 - 2 a.b``) on rows centred at a reference row:
    distances do not change under translation, and centring limits the cancellation the
    formula suffers when rows are long and close together (models near consensus). The
    first row is the reference; if rounding could then distort some distance by more than
    ``RELATIVE_PRECISION`` (a first row far from a tight cluster), the distances are
    recomputed around the row closest to all others.
    """
    dist, sq_norms = _gram_sq_distances(inputs, centre=0)
    eps = torch.finfo(inputs.dtype).eps
    error_bound = 4.0 * eps * (sq_norms.unsqueeze(0) + sq_norms.unsqueeze(1))
    error_bound.fill_diagonal_(0.0)
    tiny = torch.finfo(inputs.dtype).tiny
    if bool((error_bound > RELATIVE_PRECISION * dist.clamp(min=tiny)).any()):
        medoid = int(torch.argmin(dist.sum(dim=1)))
        if medoid != 0:
            dist, _ = _gram_sq_distances(inputs, centre=medoid)
    return dist
