"""The aggregation-rule contract shared by every robust rule, and the name registry.

A rule aggregates a node's own model vector with the vectors it received from its
neighbours (decentralized use) or the clients' models with the current global model as
``own`` (server-assisted use). Every rule in this package follows one calling convention::

    rule(own, received, weights=None, *, round=0) -> Tensor[d]

``own`` is ``Tensor[d]``, ``received`` is ``Tensor[k, d]`` with ``k >= 1`` and ``weights``
is ``Tensor[k+1]`` (``weights[0]`` is own's mixing weight, ``weights[1:]`` the received
ones) or ``None`` for the rule's default.

Non-finite policy
-----------------
A received row that holds a NaN or an infinity never reaches the arithmetic: it is removed
before the rule runs and counted in ``stats["rejected_nonfinite"]``. Its mixing weight is
not redistributed among the other neighbours; weight-based rules (gossip, ClippedGossip)
leave it on the node itself, exactly as if that neighbour had stayed silent. Each rejected
row is a proven-faulty input, so rules with a Byzantine budget (``b`` or ``f``) lower that
budget by one per rejected row, so the remaining inputs still satisfy the rule's
preconditions. Two corner cases are settled conservatively: when every received row is
rejected, the rule returns a copy of ``own``; when the Krum family is left with fewer than
three inputs (too few to score), it also returns ``own``. Wrappers (bucketing) lower the
inner rule's budget by the number of buckets lost, which never exceeds the rows rejected.
A non-finite ``own`` is the caller's bug and raises ``ValueError``.

Server-side use
---------------
:meth:`Rule.aggregate_clients` aggregates the clients' models for a central server. The
clients' models are the only inputs of the rule's statistics; the current global model is
the *reference point* of the rules that have one (``server_reference = True``: clipping
centres, BALANCE's acceptance radius, FLTrust's trusted update) and is otherwise unused.
Non-finite client models are rejected there as above.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from flwr_tempered.registry import Registry

#: Relative tolerance when checking that mixing weights sum to one.
WEIGHT_SUM_TOLERANCE = 1e-4


class Rule(ABC):
    """Base class of all aggregation rules.

    Subclasses validate their hyper-parameters in ``__init__`` (raising ``ValueError`` that
    names the offending value) and implement :meth:`_aggregate` on inputs that are already
    checked and free of non-finite rows. ``stats`` reports what the last call did so that
    runtimes can log it as metrics (counts are floats so they fit a Flower ``MetricRecord``).
    """

    #: Registry name, set by :func:`register_rule`.
    name: ClassVar[str] = ""
    #: Whether the rule reads ``weights``; rules that do not ignore them.
    uses_weights: ClassVar[bool] = False
    #: Whether the rule refuses to run without explicit ``weights``.
    requires_weights: ClassVar[bool] = False
    #: Server-side: whether the global model is the rule's reference point (``own``) rather
    #: than unused (the statistics run over the clients' models only).
    server_reference: ClassVar[bool] = False
    #: Whether the rule has a server-side form at all (``local``, which keeps each node's
    #: own model, has none); rules without one are not offered as server strategies.
    server_form: ClassVar[bool] = True

    def __init__(self) -> None:
        self.stats: dict[str, float] = {}
        #: Which received rows the last call let into its average (``Tensor[k]`` bool, in
        #: the caller's row order, non-finite rows ``False``), for rules that accept or
        #: reject whole inputs (BALANCE, MOZI, the Krum family); ``None`` for the others.
        #: A runtime that knows which senders are Byzantine (a simulation) splits it into
        #: the acceptance rate of honest and of Byzantine inputs.
        self.accepted_rows: Tensor | None = None
        self._accepted_kept: Tensor | None = None

    # ----------------------------------------------------------------------------- API
    def __call__(
        self,
        own: Tensor,
        received: Tensor,
        weights: Tensor | None = None,
        *,
        round: int = 0,
        refused: int = 0,
    ) -> Tensor:
        """Aggregate ``own`` with ``received`` and return the new ``Tensor[d]``.

        ``refused`` counts inputs the caller already threw out as faulty (malformed, or
        failing the ledger's signature checks): they count towards the rule's input count
        and lower its Byzantine budget exactly like non-finite rows.
        """
        own, received, weights = _validate_inputs(
            own, received, weights, rule_name=self.name, requires_weights=self.requires_weights
        )
        if round < 0:
            raise ValueError(f"{self.name}: round must be >= 0, got {round}")
        _check_refused(self.name, refused)
        self.check_input_count(received.shape[0] + refused)
        finite = finite_rows(received)
        rejected = int(received.shape[0] - int(finite.sum()))
        if rejected:
            received = received[finite]
            if weights is not None:
                weights = torch.cat([weights[:1], weights[1:][finite]])
        self.stats = {
            "received": float(finite.shape[0]),
            "rejected_nonfinite": float(rejected),
        }
        if refused:
            self.stats["refused"] = float(refused)
        self.accepted_rows = self._accepted_kept = None
        if received.shape[0] == 0:
            return own.clone()
        result = self._aggregate(own, received, weights, round=round, rejected=rejected + refused)
        if self._accepted_kept is not None:
            self.accepted_rows = torch.zeros_like(finite)
            self.accepted_rows[finite] = self._accepted_kept.to(finite.device)
        return result.to(device=own.device, dtype=own.dtype)

    def _note_accepted(self, kept_rows: Tensor) -> None:
        """Record which rows of ``received`` (as :meth:`_aggregate` sees it: finite rows
        only) entered the average; :meth:`__call__` maps it to :attr:`accepted_rows`."""
        self._accepted_kept = kept_rows

    def aggregate_clients(
        self,
        reference: Tensor,
        updates: Tensor,
        weights: Tensor | None = None,
        *,
        round: int = 0,
        refused: int = 0,
    ) -> Tensor:
        """Server-side aggregation: the new global model from the clients' models.

        ``reference`` is the current global model ``Tensor[d]``, ``updates`` the clients'
        models ``Tensor[k, d]`` and ``weights`` optional per-client weights ``Tensor[k]``
        (e.g. their example counts; only rules that read weights use them, normalised over
        the clients that survive the non-finite filter). ``refused`` counts clients the
        caller already dropped as malformed: they lower the rule's Byzantine budget like
        non-finite rows. See the module docstring for the role of ``reference``.
        """
        reference, updates, _ = _validate_inputs(
            reference, updates, None, rule_name=self.name, requires_weights=False
        )
        client_weights = _client_weights(self.name, weights, updates)
        _check_refused(self.name, refused)
        finite = finite_rows(updates)
        rejected = int(updates.shape[0] - int(finite.sum()))
        if rejected:
            updates = updates[finite]
            if client_weights is not None:
                client_weights = client_weights[finite]
        if client_weights is not None:
            total = client_weights.sum()
            client_weights = (
                client_weights / total if float(total) > 0.0
                else torch.full_like(client_weights, 1.0 / max(len(client_weights), 1))
            )
        return self._aggregate_clients(
            reference, updates, client_weights, round=round, refused=refused + rejected
        )

    def _aggregate_clients(
        self, reference: Tensor, updates: Tensor, weights: Tensor | None, *, round: int,
        refused: int,
    ) -> Tensor:
        """:meth:`aggregate_clients` on finite ``updates`` and normalised ``weights``.

        By default a reference-point rule gets the global model as ``own`` with zero mixing
        weight, and any other rule gets the first client's model as ``own`` and the rest as
        ``received``, so its statistics span exactly the clients. Wrappers override this.
        """
        k = updates.shape[0]
        self.check_client_count(k + refused)
        if self.server_reference:
            if k == 0:
                self.stats = {"received": 0.0, "rejected_nonfinite": float(refused)}
                return reference.clone()
            full = None
            if self.uses_weights:
                per_client = (weights if weights is not None
                              else torch.full((k,), 1.0 / k, dtype=reference.dtype,
                                              device=reference.device))
                full = torch.cat([per_client.new_zeros(1), per_client])
            return self(reference, updates, full, round=round, refused=refused)
        if k == 0:
            self.stats = {"received": 0.0, "rejected_nonfinite": float(refused)}
            return reference.clone()
        if k == 1:
            self.stats = {"received": 1.0, "rejected_nonfinite": float(refused)}
            return updates[0].clone()
        result = self(updates[0], updates[1:], weights if self.uses_weights else None,
                      round=round, refused=refused)
        self.stats["received"] = float(k)
        return result

    def check_input_count(self, k: int) -> None:
        """Raise ``ValueError`` if the rule cannot run on ``k`` received vectors.

        Called with the number of received vectors before non-finite rows are removed, so
        a misconfigured rule fails the same way whatever the neighbours send.
        """

    def check_client_count(self, num_clients: int) -> None:
        """Server-side :meth:`check_input_count`: raise ``ValueError`` if
        :meth:`aggregate_clients` cannot run on ``num_clients`` clients' models (refused ones
        included).

        A server strategy calls it with the number of clients it samples before the round
        is sent, so that a budget the sample cannot fit fails before any training instead
        of at every aggregation. By default the clients are the rule's ``n`` inputs (the
        global model adds one input for a reference-point rule); rules whose server form
        counts differently override this.
        """
        self.check_input_count(num_clients if self.server_reference else num_clients - 1)

    def reset(self) -> None:
        """Forget any state kept between calls (stateful rules override this)."""

    def state_dict(self) -> dict[str, Any]:
        """State kept between calls, so a runtime can persist it (e.g. in node state)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def config(self) -> dict[str, Any]:
        """The rule's name and hyper-parameters, for logs and run configs."""
        params = {
            key: getattr(self, key)
            for key in inspect.signature(type(self).__init__).parameters
            if key != "self" and hasattr(self, key)
        }
        shown = {k: (v.config() if isinstance(v, Rule) else v) for k, v in params.items()}
        return {"name": self.name, **{k: v for k, v in shown.items() if not callable(v)}}

    def __repr__(self) -> str:
        cfg = self.config()
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items() if k != "name")
        return f"{type(self).__name__}({args})"

    # ---------------------------------------------------------------------- subclasses
    @abstractmethod
    def _aggregate(
        self, own: Tensor, received: Tensor, weights: Tensor | None, *, round: int, rejected: int
    ) -> Tensor:
        """Aggregate validated, finite inputs; ``rejected`` rows were already removed."""


def _validate_inputs(
    own: Tensor,
    received: Tensor,
    weights: Tensor | None,
    *,
    rule_name: str,
    requires_weights: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Check shapes, dtypes and devices of a rule's inputs; raise ``ValueError`` if wrong."""
    if not isinstance(own, Tensor) or not isinstance(received, Tensor):
        raise ValueError(
            f"{rule_name}: own and received must be torch tensors, got "
            f"{type(own).__name__} and {type(received).__name__}"
        )
    if own.dim() != 1:
        raise ValueError(
            f"{rule_name}: own must be a vector Tensor[d], got shape {tuple(own.shape)}"
        )
    if received.dim() != 2:
        raise ValueError(
            f"{rule_name}: received must be a matrix Tensor[k, d], "
            f"got shape {tuple(received.shape)}"
        )
    k, d = received.shape
    if k == 0:
        raise ValueError(f"{rule_name}: received is empty (k = 0); a rule needs k >= 1 inputs")
    if d != own.shape[0]:
        raise ValueError(
            f"{rule_name}: dimension mismatch: own has d = {own.shape[0]}, received has d = {d}"
        )
    if not own.is_floating_point():
        raise ValueError(f"{rule_name}: own must be floating point, got {own.dtype}")
    if received.device != own.device:
        raise ValueError(
            f"{rule_name}: own is on {own.device} but received is on {received.device}"
        )
    if not bool(finite_rows(own.unsqueeze(0))[0]):
        raise ValueError(f"{rule_name}: own holds non-finite values (NaN or Inf)")
    if received.dtype != own.dtype:
        received = received.to(own.dtype)
    if weights is None:
        if requires_weights:
            raise ValueError(f"{rule_name}: this rule needs mixing weights (Tensor[k+1]), got None")
        return own, received, None
    if not isinstance(weights, Tensor):
        weights = torch.as_tensor(weights)
    weights = weights.to(device=own.device, dtype=own.dtype)
    if weights.shape != (k + 1,):
        raise ValueError(
            f"{rule_name}: weights must have shape (k+1,) = ({k + 1},), got {tuple(weights.shape)}"
        )
    if not torch.isfinite(weights).all() or bool((weights < 0).any()):
        raise ValueError(
            f"{rule_name}: weights must be finite and non-negative, got {weights.tolist()}"
        )
    total = float(weights.sum())
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"{rule_name}: weights must sum to 1, got sum {total:.6g}")
    return own, received, weights


def _check_refused(rule_name: str, refused: object) -> None:
    """Raise ``ValueError`` unless ``refused`` is an integer >= 0."""
    if isinstance(refused, bool) or not isinstance(refused, int) or refused < 0:
        raise ValueError(f"{rule_name}: refused must be an integer >= 0, got {refused!r}")


def _client_weights(rule_name: str, weights: Tensor | None, updates: Tensor) -> Tensor | None:
    """Per-client weights as a checked ``Tensor[k]`` in the updates' dtype, or ``None``."""
    if weights is None:
        return None
    weights = torch.as_tensor(weights).to(device=updates.device, dtype=updates.dtype)
    k = updates.shape[0]
    if weights.shape != (k,):
        raise ValueError(
            f"{rule_name}: client weights must have shape (k,) = ({k},), "
            f"got {tuple(weights.shape)}"
        )
    if not torch.isfinite(weights).all() or bool((weights < 0).any()):
        raise ValueError(
            f"{rule_name}: client weights must be finite and non-negative, got {weights.tolist()}"
        )
    return weights


def finite_rows(matrix: Tensor) -> Tensor:
    """Boolean ``Tensor[k]``: which rows of ``matrix`` hold only finite values.

    A row whose sum is finite holds no NaN or Inf, so one cheap reduction settles almost
    every row; only rows whose sum is not finite (a NaN, an Inf, or a finite overflow) get
    the exact element-wise check.
    """
    finite = torch.isfinite(matrix.sum(dim=1))
    suspects = (~finite).nonzero().flatten()
    if suspects.numel():
        finite[suspects] = torch.isfinite(matrix[suspects]).all(dim=1)
    return finite


def check_positive(rule_name: str, param: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value > 0`` (and finite)."""
    if not (isinstance(value, int | float) and value > 0 and value != float("inf")):
        raise ValueError(f"{rule_name}: {param} must be a finite number > 0, got {value!r}")


def check_int_at_least(rule_name: str, param: str, value: int, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{rule_name}: {param} must be an integer >= {minimum}, got {value!r}")


def check_majority(rule_name: str, n: int, f: int) -> None:
    """Raise ``ValueError`` unless ``n >= 2f + 1`` (the honest majority a rule assumes)."""
    if n < 2 * f + 1:
        raise ValueError(
            f"{rule_name}: needs n >= 2f + 1 inputs (own plus received), got n = {n}, f = {f}"
        )


def check_fraction(rule_name: str, param: str, value: float, *, open_low: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` lies in [0, 1] (or (0, 1] if ``open_low``)."""
    low_ok = value > 0 if open_low else value >= 0
    if not (isinstance(value, int | float) and low_ok and value <= 1):
        interval = "(0, 1]" if open_low else "[0, 1]"
        raise ValueError(f"{rule_name}: {param} must lie in {interval}, got {value!r}")


class HonestMajorityRule(Rule):
    """A rule with a Byzantine budget ``f`` over ``n`` inputs (own plus received; server-side,
    the clients) that needs ``n >= 2f + 1``; :meth:`budget` is ``f`` lowered by the inputs
    proven faulty, as the non-finite policy says."""

    def __init__(self, f: int) -> None:
        super().__init__()
        check_int_at_least(self.name, "f", f, 0)
        self.f = f

    def check_input_count(self, k: int) -> None:
        check_majority(self.name, k + 1, self.f)

    def budget(self, rejected: int) -> int:
        """``f`` lowered by one per rejected (or refused) input, never below zero."""
        return max(self.f - rejected, 0)


# ---------------------------------------------------------------------------- registry
RULES: Registry[type[Rule]] = Registry("rule")

RuleT = TypeVar("RuleT", bound=type[Rule])


def register_rule(name: str) -> Callable[[RuleT], RuleT]:
    """Class decorator that makes a rule available to :func:`get_rule` under ``name``."""

    def decorate(cls: RuleT) -> RuleT:
        RULES.add(name, cls)
        cls.name = name
        return cls

    return decorate


def available_rules() -> list[str]:
    """Names accepted by :func:`get_rule`, sorted."""
    return RULES.names()


def rule_class(name: str) -> type[Rule]:
    """The class registered under ``name``; ``ValueError`` listing the valid names if none."""
    return RULES.factory(name)


def rule_parameters(name: str) -> dict[str, Any]:
    """The constructor parameters of rule ``name`` with their defaults
    (``inspect.Parameter.empty`` when required)."""
    return RULES.parameters(name)


def get_rule(name: str, **params: Any) -> Rule:
    """Build the rule registered as ``name`` with hyper-parameters ``params``.

    A misspelt name or parameter raises ``ValueError`` listing the valid ones; a missing
    required parameter names itself. Wrapper rules (``nnm``, ``bucketing``) accept ``inner``
    as a rule, a rule name, or a mapping ``{"name": ..., **params}``.
    """
    rule: Rule = RULES.build(name, **params)
    return rule


def resolve_rule(spec: Rule | str | Mapping[str, Any]) -> Rule:
    """Turn a rule, a rule name, or ``{"name": ..., **params}`` into a rule object."""
    if isinstance(spec, Rule):
        return spec
    if isinstance(spec, str):
        return get_rule(spec)
    if isinstance(spec, Mapping):
        params = dict(spec)
        if "name" not in params:
            raise ValueError(f"a rule mapping needs a 'name' key, got keys {sorted(params)}")
        return get_rule(str(params.pop("name")), **params)
    raise ValueError(f"cannot build a rule from {spec!r}")
