"""Slow, obviously-correct reference implementations of the aggregation rules.

Everything here works on plain Python lists of floats with explicit loops over inputs and
coordinates, straight from the definitions in the reproduction spec, and never imports
``flwr_tempered``: a test compares a rule's tensor output against these.

Conventions: ``own`` is a list of ``d`` floats, ``received`` a list of ``k`` such lists,
``weights`` (where used) a list of ``k + 1`` floats, ``weights[0]`` own's. Each function
returns ``(result, stats)`` where ``stats`` holds the counts the rule should report (only
the keys a test checks); a count given as a ``(low, high)`` pair is decided by inputs
that sit on a threshold up to rounding, where either side is right. Parameters are the
ones the rule sees *after* the non-finite filter: a test that removes rows passes the
lowered budget and the original neighbour count itself.

Ties are broken towards the lower input index (own is index 0), as a stable sort does.
The one numerical routine borrowed is ``numpy.linalg.eigh``, for the top eigenpair of an
explicit ``d x d`` covariance matrix (the rules never form that matrix).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

Vector = list[float]
Matrix = list[list[float]]
Stats = dict[str, float | tuple[float, float]]
#: Relative width of a threshold (clipping radius) within which rounding decides.
BOUNDARY_RTOL = 1e-5


# ------------------------------------------------------------------------------ helpers
def vec(values: Sequence[float]) -> Vector:
    return [float(v) for v in values]


def add(a: Sequence[float], b: Sequence[float]) -> Vector:
    return [x + y for x, y in zip(a, b, strict=True)]


def sub(a: Sequence[float], b: Sequence[float]) -> Vector:
    return [x - y for x, y in zip(a, b, strict=True)]


def scale(a: Sequence[float], c: float) -> Vector:
    return [c * x for x in a]


def dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(a: Sequence[float]) -> float:
    return math.sqrt(sum(x * x for x in a))


def dist(a: Sequence[float], b: Sequence[float]) -> float:
    return norm(sub(a, b))


def sq_dist(a: Sequence[float], b: Sequence[float]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def average(rows: Sequence[Sequence[float]]) -> Vector:
    d = len(rows[0])
    return [sum(row[c] for row in rows) / len(rows) for c in range(d)]


def weighted_sum(rows: Sequence[Sequence[float]], weights: Sequence[float]) -> Vector:
    d = len(rows[0])
    return [sum(w * row[c] for w, row in zip(weights, rows, strict=True)) for c in range(d)]


def clip(v: Sequence[float], tau: float) -> Vector:
    """``v * min(1, tau / ||v||)`` (a zero vector stays zero)."""
    length = norm(v)
    if length <= tau or length == 0.0:
        return vec(v)
    return scale(v, tau / length)


def count_beyond(lengths: Sequence[float], radius: float) -> float | tuple[float, float]:
    """How many ``lengths`` exceed ``radius``; ``(low, high)`` if some lie on it."""
    low = sum(length > radius * (1 + BOUNDARY_RTOL) for length in lengths)
    high = sum(length > radius * (1 - BOUNDARY_RTOL) for length in lengths)
    return float(low) if low == high else (float(low), float(high))


def all_inputs(own: Sequence[float], received: Sequence[Sequence[float]]) -> Matrix:
    return [vec(own)] + [vec(row) for row in received]


def argsort(values: Sequence[float]) -> list[int]:
    """Indices that sort ``values`` ascending; ties keep index order (stable)."""
    return sorted(range(len(values)), key=lambda i: (values[i], i))


def column(rows: Sequence[Sequence[float]], c: int) -> list[float]:
    return [row[c] for row in rows]


def median_of(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    if n % 2 == 1:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2.0


# ------------------------------------------------------------------------ averaging
def mean(own: Vector, received: Matrix, weights: Vector | None = None) -> tuple[Vector, Stats]:
    """Plain mean of own and received; with weights, ``sum w_j x_j / sum w_j``."""
    inputs = all_inputs(own, received)
    if weights is None:
        return average(inputs), {}
    total = sum(weights)
    return scale(weighted_sum(inputs, weights), 1.0 / total), {}


def local(own: Vector, received: Matrix) -> tuple[Vector, Stats]:
    """No collaboration: own, whatever arrived."""
    return list(own), {}


def gossip(own: Vector, received: Matrix, weights: Vector) -> tuple[Vector, Stats]:
    """``sum_j W_ij x_j`` over self and neighbours (``weights[0]`` is the self weight)."""
    return weighted_sum(all_inputs(own, received), weights), {}


# ------------------------------------------------------------------- order statistics
def median(own: Vector, received: Matrix) -> tuple[Vector, Stats]:
    inputs = all_inputs(own, received)
    return [median_of(column(inputs, c)) for c in range(len(own))], {}


def trimmed_mean(own: Vector, received: Matrix, b: int) -> tuple[Vector, Stats]:
    inputs = all_inputs(own, received)
    n = len(inputs)
    assert 2 * b < n
    result = []
    for c in range(len(own)):
        kept = sorted(column(inputs, c))[b : n - b]
        result.append(sum(kept) / len(kept))
    return result, {}


def mean_around_median(rows: Matrix, count: int) -> Vector:
    """Per coordinate, the mean of the ``count`` values closest to the median."""
    result = []
    for c in range(len(rows[0])):
        values = column(rows, c)
        centre = median_of(values)
        closest = sorted(values, key=lambda v, centre=centre: abs(v - centre))[:count]
        result.append(sum(closest) / count)
    return result


def meamed(own: Vector, received: Matrix, f: int) -> tuple[Vector, Stats]:
    """MeaMed: per coordinate, the mean of the ``n - f`` values closest to the median."""
    keep = len(received) + 1 - f
    return mean_around_median(all_inputs(own, received), keep), {"selected": float(keep)}


# --------------------------------------------------------------------- geometric median
def geometric_median(
    own: Vector, received: Matrix, iterations: int = 8, nu: float = 0.1
) -> tuple[Vector, Stats]:
    """Start at the mean; ``iterations`` smoothed Weiszfeld steps with weights
    ``1 / max(||z - x_k||, nu)``."""
    inputs = all_inputs(own, received)
    z = average(inputs)
    for _ in range(iterations):
        betas = [1.0 / max(dist(z, x), nu) for x in inputs]
        total = sum(betas)
        z = weighted_sum(inputs, [beta / total for beta in betas])
    return z, {}


# ---------------------------------------------------------------------------- Krum family
#: One admissible result of a selection rule and its stats. Krum scores of two mutually
#: nearest inputs are equal whenever only one distance is summed (``n - f - 2 = 1``), and
#: all scores are 0 when none is (``n - f - 2 <= 0``, late Bulyan stages): the definition
#: then allows several selections. The ``*_outcomes`` functions return every one of them.
Outcome = tuple[Vector, Stats]


def krum_score(inputs: Matrix, i: int, f: int) -> float:
    """Sum of squared distances from input ``i`` to its ``n - f - 2`` closest others (an
    empty sum, 0, when ``n - f - 2 <= 0``)."""
    n = len(inputs)
    others = sorted(sq_dist(inputs[i], inputs[j]) for j in range(n) if j != i)
    return sum(others[: max(n - f - 2, 0)])


def lowest(
    scores: Sequence[float], m: int, tie_rtol: float, scale: float = 0.0
) -> list[list[int]]:
    """Every way to choose ``m`` indices with the lowest scores, treating scores within
    ``tie_rtol * max(largest score, scale)`` as equal; index order within a choice."""
    order = argsort(scores)
    threshold = scores[order[m - 1]]
    tol = tie_rtol * max(max(abs(s) for s in scores), scale)
    sure = [i for i in order if scores[i] < threshold - tol]
    tied = [i for i in range(len(scores)) if abs(scores[i] - threshold) <= tol]
    return [sure + list(extra) for extra in itertools.combinations(tied, m - len(sure))]


def squared_scale(inputs: Matrix) -> float:
    """The largest squared norm of the inputs: rounding errors of squared distances
    computed in floating point are relative to it (identical inputs give scores of pure
    rounding noise, which must count as tied)."""
    return max(norm(x) ** 2 for x in inputs)


def multi_krum_outcomes(
    own: Vector, received: Matrix, f: int, m: int = 1, tie_rtol: float = 0.0
) -> list[Outcome]:
    """Average of the ``m`` inputs (own is input 0) with the lowest Krum scores.

    When fewer than three inputs are left (possible only after rows were rejected) no
    score exists and the rule keeps own.
    """
    inputs = all_inputs(own, received)
    n = len(inputs)
    if n < 3:
        return [(vec(own), {"accepted": 1.0, "own_selected": 1.0})]
    m = min(m, n - f)
    scores = [krum_score(inputs, i, f) for i in range(n)]
    return [
        (average([inputs[i] for i in chosen]),
         {"accepted": float(m), "own_selected": float(0 in chosen)})
        for chosen in lowest(scores, m, tie_rtol, squared_scale(inputs))
    ]


def multi_krum(own: Vector, received: Matrix, f: int, m: int = 1) -> Outcome:
    """Multi-Krum with ties broken towards the lower index."""
    return multi_krum_outcomes(own, received, f, m)[0]


def krum(own: Vector, received: Matrix, f: int) -> Outcome:
    return multi_krum(own, received, f, 1)


def bulyan_outcomes(own: Vector, received: Matrix, f: int, tie_rtol: float = 0.0
                    ) -> list[Outcome]:
    """Pick ``theta = n - 2f`` inputs by repeated Krum (each pick removed, scores
    recomputed on what remains with the same ``f``), then per coordinate average the
    ``beta = theta - 2f`` selected values closest to the selected set's median."""
    inputs = all_inputs(own, received)
    n = len(inputs)
    theta = n - 2 * f
    beta = theta - 2 * f

    def selections(remaining: list[int], picked: list[int]) -> list[list[int]]:
        if len(picked) == theta:
            return [picked]
        pool = [inputs[i] for i in remaining]
        scores = [krum_score(pool, p, f) for p in range(len(pool))]
        found = []
        for (best,) in lowest(scores, 1, tie_rtol, squared_scale(inputs)):
            rest = remaining[:best] + remaining[best + 1 :]
            found += selections(rest, [*picked, remaining[best]])
        return found

    return [(mean_around_median([inputs[i] for i in picked], beta),
             {"accepted": float(theta), "own_selected": float(0 in picked)})
            for picked in selections(list(range(n)), [])]


def bulyan(own: Vector, received: Matrix, f: int) -> Outcome:
    """Bulyan with ties broken towards the lower index."""
    return bulyan_outcomes(own, received, f)[0]


# ---------------------------------------------------- MoNNA, subset selection, CAF
def mean_of_nearest(rows: Matrix, pivot: Vector, count: int) -> Vector:
    """The mean of the ``count`` rows nearest to ``pivot`` (ties: the earlier row)."""
    order = argsort([dist(x, pivot) for x in rows])
    return average([rows[i] for i in order[:count]])


def monna(own: Vector, received: Matrix, f: int) -> tuple[Vector, Stats]:
    """The mean of the ``n - f`` inputs nearest to own (own, at distance 0, included)."""
    inputs = all_inputs(own, received)
    keep = len(inputs) - f
    return mean_of_nearest(inputs, own, keep), {"selected": float(keep)}


def covariance(rows: Matrix, weights: Sequence[float] | None = None) -> Matrix:
    """``sum_i w_i (x_i - mu)(x_i - mu)^T / sum_i w_i`` with ``mu`` the weighted mean."""
    w = [1.0] * len(rows) if weights is None else list(weights)
    total = sum(w)
    mu = scale(weighted_sum(rows, w), 1.0 / total)
    d = len(mu)
    return [[sum(wi * (x[a] - mu[a]) * (x[b] - mu[b]) for wi, x in zip(w, rows, strict=True))
             / total for b in range(d)] for a in range(d)]


def top_eigenpair(matrix: Matrix) -> tuple[float, Vector]:
    """The largest eigenvalue of a symmetric matrix and a unit eigenvector for it."""
    values, vectors = np.linalg.eigh(np.array(matrix, dtype=float))
    return float(values[-1]), [float(v) for v in vectors[:, -1]]


def diameter(rows: Matrix) -> float:
    """The largest pairwise distance (0 for a single row)."""
    return max((dist(a, b) for a, b in itertools.combinations(rows, 2)), default=0.0)


def max_eigenvalue(rows: Matrix) -> float:
    """The largest eigenvalue of the rows' empirical covariance."""
    return top_eigenpair(covariance(rows))[0]


def pairwise_spread(rows: Matrix) -> float:
    """The sum of squared distances over the ordered pairs of rows."""
    return sum(sq_dist(a, b) for a in rows for b in rows)


def subset_outcome(inputs: Matrix, subset: Sequence[int]) -> Outcome:
    """The mean of ``inputs[subset]`` and the stats of a subset-selection rule."""
    return (average([inputs[i] for i in subset]),
            {"selected": float(len(subset)), "own_selected": float(0 in subset)})


def near_lowest(values: Sequence[float], tie_rtol: float, scale: float) -> list[int]:
    """Indices of the values within ``tie_rtol * max(largest value, scale)`` of the lowest
    (float rounding may rank any of them first)."""
    tol = tie_rtol * max(max(abs(v) for v in values), scale)
    return [i for i, v in enumerate(values) if v <= min(values) + tol]


def mda_outcomes(own: Vector, received: Matrix, f: int, tie_rtol: float = 0.0
                 ) -> list[Outcome]:
    """MDA: the mean of the ``n - f`` inputs (own is input 0) of smallest diameter; among
    subsets of exactly the same diameter (they share their farthest pair), the one of
    smallest sum of squared pairwise distances. Every diameter within rounding of the
    smallest heads a group of its own that may win."""
    inputs = all_inputs(own, received)
    subsets = list(itertools.combinations(range(len(inputs)), len(inputs) - f))
    diameters = [diameter([inputs[i] for i in subset]) for subset in subsets]
    spreads = [pairwise_spread([inputs[i] for i in subset]) for subset in subsets]
    near = near_lowest(diameters, tie_rtol, math.sqrt(squared_scale(inputs)))
    outcomes = []
    for value in sorted({diameters[i] for i in near}):
        group = [i for i in near if diameters[i] == value]
        for j in near_lowest([spreads[i] for i in group], tie_rtol, squared_scale(inputs)):
            outcomes.append(subset_outcome(inputs, subsets[group[j]]))
    return outcomes


def smea_outcomes(own: Vector, received: Matrix, f: int, tie_rtol: float = 0.0
                  ) -> list[Outcome]:
    """SMEA: the mean of the ``n - f`` inputs (own is input 0) whose covariance has the
    smallest largest eigenvalue."""
    inputs = all_inputs(own, received)
    subsets = list(itertools.combinations(range(len(inputs)), len(inputs) - f))
    scores = [max_eigenvalue([inputs[i] for i in subset]) for subset in subsets]
    return [subset_outcome(inputs, subsets[i])
            for i in near_lowest(scores, tie_rtol, squared_scale(inputs))]


def caf_outcomes(own: Vector, received: Matrix, f: int, tie_rtol: float = 0.0
                 ) -> list[Outcome]:
    """CAF: weights ``c_i = 1``; each weight vector reached is a candidate (its weighted
    mean and the top eigenvalue of its weighted covariance); stop at the first candidate
    with ``sum c <= n - 2f``, else take the top eigenvector ``v``, ``tau_i = ((x_i -
    mu)^T v)^2`` and ``c_i <- c_i (1 - tau_i / max_{j: c_j > 0} tau_j)`` (stop if that
    maximum is 0). The candidate of smallest eigenvalue wins (within ``tie_rtol``)."""
    inputs = all_inputs(own, received)
    n = len(inputs)
    c = [1.0] * n
    candidates: list[tuple[float, Vector]] = []
    steps = 0
    for _ in range(n + 1):
        total = sum(c)
        mu = scale(weighted_sum(inputs, c), 1.0 / total)
        eigenvalue, v = top_eigenpair(covariance(inputs, c))
        candidates.append((max(eigenvalue, 0.0), mu))
        if total <= n - 2 * f:
            break
        tau = [dot(sub(x, mu), v) ** 2 for x in inputs]
        tau_max = max(t for t, weight in zip(tau, c, strict=True) if weight > 0)
        if tau_max <= 0:
            break
        c = [max(weight * (1.0 - t / tau_max), 0.0) for weight, t in zip(c, tau, strict=True)]
        steps += 1
    lowest_value = min(value for value, _ in candidates)
    tol = tie_rtol * max(max(value for value, _ in candidates), squared_scale(inputs))
    return [(mu, {"steps": float(steps)}) for value, mu in candidates
            if value <= lowest_value + tol]


# ---------------------------------------------------------------------------- clipping
def centered_clipping(
    own: Vector, received: Matrix, tau: float, iterations: int = 1, centre: Vector | None = None
) -> tuple[Vector, Stats]:
    """``v <- v + mean_k clip(x_k - v, tau)`` over own and received, ``iterations`` times,
    from ``centre`` (own when None). ``clipped`` counts the inputs clipped in any step."""
    inputs = all_inputs(own, received)
    v = vec(own if centre is None else centre)
    longest = [0.0] * len(inputs)  # each input's longest difference over the steps
    for _ in range(iterations):
        steps = []
        for index, x in enumerate(inputs):
            difference = sub(x, v)
            longest[index] = max(longest[index], norm(difference))
            steps.append(clip(difference, tau))
        v = add(v, average(steps))
    return v, {"clipped": count_beyond(longest, tau)}


def adaptive_tau(own: Vector, received: Matrix, neighbour_weights: Vector,
                 delta: float | None) -> float:
    """The ClippedGossip plug-in oracle radius: the farthest neighbours whose cumulative
    weight stays within ``delta`` (default: the largest neighbour weight) are presumed
    Byzantine; ``tau^2 = (1/delta) sum_{rest} W_ij ||x_j - x_i||^2``; ``delta = 0``: no
    clipping."""
    if delta is None:
        delta = max(neighbour_weights)
    if delta <= 0.0:
        return math.inf
    distances = [dist(x, own) for x in received]
    farthest_first = sorted(range(len(received)), key=lambda j: -distances[j])
    cumulative = 0.0
    spread = 0.0
    for j in farthest_first:
        cumulative += neighbour_weights[j]
        if cumulative <= delta * (1.0 + 1e-9):
            continue  # presumed Byzantine
        spread += neighbour_weights[j] * distances[j] ** 2
    return math.sqrt(spread / delta)


def clipped_gossip(
    own: Vector,
    received: Matrix,
    weights: Vector | None = None,
    tau: float | None = None,
    delta: float | None = None,
    neighbours: int | None = None,
) -> tuple[Vector, Stats]:
    """``x_i + sum_{j in N(i)} W_ij clip(x_j - x_i, tau)``. Default weights are
    ``1 / (neighbours + 1)`` with ``neighbours`` the neighbour count before any row was
    rejected (default ``len(received)``)."""
    k = len(received) if neighbours is None else neighbours
    w = [1.0 / (k + 1)] * len(received) if weights is None else vec(weights[1:])
    radius = adaptive_tau(own, received, w, delta) if tau is None else tau
    result = vec(own)
    for weight, x in zip(w, received, strict=True):
        result = add(result, scale(clip(sub(x, own), radius), weight))
    return result, {"clipped": count_beyond([dist(x, own) for x in received], radius)}


# ----------------------------------------------------------------------- BALANCE, MOZI
def balance(
    own: Vector,
    received: Matrix,
    total_rounds: int,
    gamma: float = 0.3,
    kappa: float = 1.0,
    alpha: float = 0.5,
    round: int = 0,
    neighbours: int | None = None,
) -> tuple[Vector, Stats]:
    """Accept ``j`` iff ``||x_i - x_j|| <= gamma exp(-kappa t / T) ||x_i||``; return
    ``alpha x_i + (1 - alpha) mean(accepted)`` (own when none). The acceptance rate is
    over ``neighbours`` (all neighbours, rejected rows included)."""
    k = len(received) if neighbours is None else neighbours
    radius = gamma * math.exp(-kappa * round / total_rounds) * norm(own)
    accepted = [x for x in received if dist(x, own) <= radius]
    stats = {"accepted": float(len(accepted)), "acceptance_rate": len(accepted) / k}
    if not accepted:
        return vec(own), stats
    return add(scale(own, alpha), scale(average(accepted), 1.0 - alpha)), stats


def mozi(
    own: Vector,
    received: Matrix,
    loss: Callable[[Sequence[float]], float],
    rho: float = 0.5,
    alpha: float = 0.5,
    neighbours: int | None = None,
) -> tuple[Vector, Stats]:
    """Keep the ``max(1, floor(rho * neighbours))`` received closest to own (at most all
    of them); of those the ones with ``loss <= loss(own)`` (none: the single closest);
    ``alpha own + (1 - alpha) mean(kept)``. ``neighbours`` is the neighbour count before
    rejection (the presumed-Byzantine count ``neighbours - keep`` drops by one per
    rejected row, like every budget)."""
    k = len(received) if neighbours is None else neighbours
    keep = min(max(1, math.floor(rho * k)), len(received))
    closest = argsort([dist(x, own) for x in received])[:keep]
    own_loss = loss(own)
    good = [j for j in closest if loss(received[j]) <= own_loss]
    if not good:
        good = closest[:1]
    result = add(scale(own, alpha), scale(average([received[j] for j in good]), 1.0 - alpha))
    return result, {"accepted": float(len(good)), "acceptance_rate": len(good) / k}


# ----------------------------------------------------------------------------- FLTrust
def fltrust(own: Vector, received: Matrix, trusted: Vector) -> tuple[Vector, Stats]:
    """``g_i = x_i - own``, ``g0 = trusted - own``, trust ``ReLU(cos(g_i, g0))``, each
    ``g_i`` rescaled to ``||g0||``; ``own + sum TS_i g_i' / sum TS_i`` (own if no trust)."""
    g0 = sub(trusted, own)
    g0_norm = norm(g0)
    trust, rescaled = [], []
    for x in received:
        g = sub(x, own)
        g_norm = norm(g)
        cosine = dot(g, g0) / (g_norm * g0_norm) if g_norm > 0 and g0_norm > 0 else 0.0
        trust.append(max(cosine, 0.0))
        rescaled.append(scale(g, g0_norm / g_norm) if g_norm > 0 else vec(g))
    stats = {"accepted": float(sum(t > 0 for t in trust))}
    total = sum(trust)
    if total <= 0:
        return vec(own), stats
    return add(own, scale(weighted_sum(rescaled, trust), 1.0 / total)), stats


# ------------------------------------------------------------------------- composition
#: ``inner(own, received, weights, lost)``: every admissible outcome of the wrapped rule's
#: reference, told how many of its inputs were proven faulty (to lower its own budget).
InnerReference = Callable[[Vector, Matrix, Vector | None, int], list[Outcome]]


def prefixed(outcomes: list[Outcome], **extra: float) -> list[Outcome]:
    return [(result, {**extra, **{f"inner_{key}": v for key, v in stats.items()}})
            for result, stats in outcomes]


def nnm(
    own: Vector,
    received: Matrix,
    f: int,
    inner: InnerReference,
    weights: Vector | None = None,
    lost: int = 0,
) -> list[Outcome]:
    """Replace each input (own included) by the mean of its ``n - f`` nearest inputs
    (itself included), then apply ``inner`` with the mixed own as own."""
    inputs = all_inputs(own, received)
    n = len(inputs)
    f = min(f, n - 1)
    mixed = []
    for x in inputs:
        nearest = argsort([sq_dist(x, y) for y in inputs])[: n - f]
        mixed.append(average([inputs[j] for j in nearest]))
    return prefixed(inner(mixed[0], mixed[1:], weights, lost))


def bucketing(
    own: Vector,
    received: Matrix,
    s: int,
    inner: InnerReference,
    permutation: Sequence[int],
    weights: Vector | None = None,
    neighbours: int | None = None,
) -> list[Outcome]:
    """Bucket ``b`` holds ``received[permutation[b*s : (b+1)*s]]``; apply ``inner`` to own
    and the bucket means (a bucket's weight is the sum of its members'). With rows
    rejected (``neighbours`` > ``len(received)``), ``inner`` is told it lost the buckets
    that no longer exist: ``ceil(neighbours / s) - ceil(len(received) / s)``."""
    k = len(received)
    assert sorted(permutation) == list(range(k))
    count = math.ceil(k / s)
    groups = [list(permutation[b * s : (b + 1) * s]) for b in range(count)]
    means = [average([received[j] for j in group]) for group in groups]
    bucket_weights = None
    if weights is not None:
        bucket_weights = [weights[0]] + [sum(weights[1 + j] for j in group) for group in groups]
    total = k if neighbours is None else neighbours
    lost = math.ceil(total / s) - count
    return prefixed(inner(own, means, bucket_weights, lost), buckets=float(count))


def clipped_around(own: Vector, received: Matrix, radius: float) -> Matrix:
    """Every received ``x`` moved to ``own + clip(x - own, radius)``."""
    return [add(own, clip(sub(x, own), radius)) for x in received]


def static_clipping(
    own: Vector, received: Matrix, c: float, inner: InnerReference,
    weights: Vector | None = None, lost: int = 0,
) -> list[Outcome]:
    """Clip every difference from own to norm ``c``, then apply ``inner``."""
    lengths = [dist(x, own) for x in received]
    return prefixed(inner(own, clipped_around(own, received, c), weights, lost),
                    clipped=count_beyond(lengths, c))


def arc(
    own: Vector, received: Matrix, f: int, inner: InnerReference,
    weights: Vector | None = None, lost: int = 0,
) -> list[Outcome]:
    """ARC over the ``n`` inputs (own's difference is 0): ``k = floor(2 (f/n) (n - f))``
    (written in integers, where the floor is exact); the differences are clipped to the
    ``(k + 1)``-th largest difference norm, then ``inner`` runs."""
    n = len(received) + 1
    lengths = [dist(x, own) for x in received]
    k = (2 * f * (n - f)) // n
    radius = sorted([0.0, *lengths], reverse=True)[k]
    return prefixed(inner(own, clipped_around(own, received, radius), weights, lost),
                    clipped=count_beyond(lengths, radius))
