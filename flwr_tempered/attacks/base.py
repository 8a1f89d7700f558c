"""The attack contract: what a Byzantine node knows (the views), the two attack base
classes, and the name registry.

Model-poisoning attacks
-----------------------
A Byzantine node is omniscient: for every honest neighbour ``t`` it is about to send a
vector to, it sees a :class:`TargetView` (``t``'s half-step model, the models and mixing
weights of ``t``'s honest neighbours, how much weight ``t`` gives to Byzantine neighbours,
optionally ``t``'s model at the start of the round and ``t``'s aggregation rule). The attack
is called once per round with an :class:`AttackView` and returns one vector per recipient::

    attack(view) -> Tensor[len(view.targets), d]     # row i is sent to view.targets[i]

with the dtype and device of ``view.own``. Attacks that need the optional fields say so
through class attributes (:attr:`ModelPoisoningAttack.needs_previous`, ``needs_own_previous``,
``needs_rule``) and read-if-given ones through ``uses_previous`` / ``uses_rule``, so a runtime
knows what it must fill in; a needed field left ``None`` raises ``ValueError`` naming it.

Throughout the package the *honest set* of a target is ``H_t = {x_t} ∪ {x_j : j honest
neighbour of t}`` (:meth:`TargetView.honest_set`, ``x_t`` first).

Data-poisoning attacks
----------------------
A :class:`DataPoisoningAttack` transforms the Byzantine node's training batches
(:meth:`DataPoisoningAttack.poison`); the node trains honestly on the poisoned data and sends
that model to everyone, so its ``__call__`` returns ``view.own`` for every target.

Randomness
----------
Attacks that draw random numbers take a ``seed`` and keep a CPU ``torch.Generator`` on the
instance (``self.generator``), so the stream advances from call to call. A runtime that
rebuilds the attack object every round should derive ``seed`` from (node, round) itself, or
persist :meth:`AttackBase.state_dict`.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from flwr_tempered.aggregators.base import Rule
from flwr_tempered.registry import Registry

__all__ = [
    "AttackBase",
    "AttackView",
    "DataPoisoningAttack",
    "ModelPoisoningAttack",
    "TargetView",
    "attack_class",
    "attack_parameters",
    "available_attacks",
    "get_attack",
    "register_attack",
]


# ------------------------------------------------------------------------------- views
def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


@dataclass(frozen=True)
class TargetView:
    """What the attacker knows about one recipient ``t`` (an honest neighbour).

    Attributes:
        node: id of ``t``.
        model: ``x_t``, the target's current half-step model, ``Tensor[d]``.
        honest_neighbors: ``Tensor[h, d]``, the models of ``t``'s honest neighbours
            (excluding ``t`` itself); ``h`` may be 0.
        honest_weights: ``Tensor[h]``, the mixing weights ``W_tj`` of those neighbours.
        byzantine_weight: ``sum_k W_tk`` over the Byzantine neighbours ``k`` of ``t`` (> 0).
        n_byzantine: number of Byzantine neighbours of ``t`` (>= 1).
        self_weight: ``W_tt``.
        previous: ``t``'s model at the start of the round, the reference for the honest
            "update direction" (server-assisted use: the global model), or ``None``.
        rule: ``t``'s aggregation rule object, for adaptive attacks, or ``None``.

    Shapes, dtypes and devices are checked on construction (``ValueError`` naming them).
    """

    node: int
    model: Tensor
    honest_neighbors: Tensor
    honest_weights: Tensor
    byzantine_weight: float
    n_byzantine: int
    self_weight: float
    previous: Tensor | None = None
    rule: Rule | None = None

    def __post_init__(self) -> None:
        where = f"TargetView(node={self.node})"
        x = self.model
        if not isinstance(x, Tensor) or x.dim() != 1:
            shape = _shape(x) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{where}: model must be a vector Tensor[d], got {shape}")
        if not x.is_floating_point():
            raise ValueError(f"{where}: model must be floating point, got {x.dtype}")
        d = x.shape[0]
        nb = self.honest_neighbors
        if not isinstance(nb, Tensor) or nb.dim() != 2 or nb.shape[1] != d:
            shape = _shape(nb) if isinstance(nb, Tensor) else type(nb).__name__
            raise ValueError(
                f"{where}: honest_neighbors must have shape (h, d) with d = {d}, got {shape}"
            )
        h = nb.shape[0]
        w = self.honest_weights
        if not isinstance(w, Tensor) or _shape(w) != (h,):
            shape = _shape(w) if isinstance(w, Tensor) else type(w).__name__
            raise ValueError(
                f"{where}: honest_weights must have shape (h,) = ({h},) to match "
                f"honest_neighbors {_shape(nb)}, got {shape}"
            )
        _check_same(where, "honest_neighbors", nb, x)
        _check_same(where, "honest_weights", w, x)
        if h and (not bool(torch.isfinite(w).all()) or bool((w < 0).any())):
            raise ValueError(
                f"{where}: honest_weights must be finite and >= 0, got {w.tolist()}"
            )
        if self.previous is not None:
            p = self.previous
            if not isinstance(p, Tensor) or _shape(p) != (d,):
                shape = _shape(p) if isinstance(p, Tensor) else type(p).__name__
                raise ValueError(
                    f"{where}: previous must have the model's shape ({d},), got {shape}"
                )
            _check_same(where, "previous", p, x)
        bw = self.byzantine_weight
        if not (isinstance(bw, int | float) and math.isfinite(bw) and bw > 0):
            raise ValueError(f"{where}: byzantine_weight must be a finite number > 0, got {bw!r}")
        nbyz = self.n_byzantine
        if isinstance(nbyz, bool) or not isinstance(nbyz, int) or nbyz < 1:
            raise ValueError(f"{where}: n_byzantine must be an integer >= 1, got {nbyz!r}")
        sw = self.self_weight
        if not (isinstance(sw, int | float) and math.isfinite(sw) and sw >= 0):
            raise ValueError(f"{where}: self_weight must be a finite number >= 0, got {sw!r}")

    @property
    def dim(self) -> int:
        """The model dimension ``d``."""
        return int(self.model.shape[0])

    @property
    def n_honest(self) -> int:
        """``|H_t|``: the target plus its honest neighbours."""
        return int(self.honest_neighbors.shape[0]) + 1

    @property
    def n_inputs(self) -> int:
        """``n = |H_t| + n_byzantine``: every vector ``t`` aggregates, itself included."""
        return self.n_honest + self.n_byzantine

    def honest_set(self) -> Tensor:
        """``H_t`` as ``Tensor[h+1, d]``, the target's own model first."""
        return torch.cat([self.model.unsqueeze(0), self.honest_neighbors], dim=0)


def _check_same(where: str, name: str, tensor: Tensor, reference: Tensor) -> None:
    if tensor.dtype != reference.dtype:
        raise ValueError(
            f"{where}: {name} has dtype {tensor.dtype} but the model has dtype {reference.dtype}"
        )
    if tensor.device != reference.device:
        raise ValueError(
            f"{where}: {name} is on {tensor.device} but the model is on {reference.device}"
        )


@dataclass(frozen=True)
class AttackView:
    """Everything a Byzantine node knows in one round.

    Attributes:
        own: the attacker's own honestly trained model, ``Tensor[d]``.
        targets: one :class:`TargetView` per recipient (stored as a tuple).
        own_previous: the attacker's model at the start of the round, or ``None``.
        round: the current round (>= 0).
        total_rounds: the number of rounds of the run, or ``None`` if unknown.
    """

    own: Tensor
    targets: Sequence[TargetView] = field(default_factory=tuple)
    own_previous: Tensor | None = None
    round: int = 0
    total_rounds: int | None = None

    def __post_init__(self) -> None:
        own = self.own
        if not isinstance(own, Tensor) or own.dim() != 1:
            shape = _shape(own) if isinstance(own, Tensor) else type(own).__name__
            raise ValueError(f"AttackView: own must be a vector Tensor[d], got {shape}")
        if not own.is_floating_point():
            raise ValueError(f"AttackView: own must be floating point, got {own.dtype}")
        object.__setattr__(self, "targets", tuple(self.targets))
        d = own.shape[0]
        for target in self.targets:
            if not isinstance(target, TargetView):
                raise ValueError(
                    f"AttackView: targets must be TargetView objects, got {type(target).__name__}"
                )
            if target.model.shape[0] != d:
                raise ValueError(
                    f"AttackView: target {target.node} has a model of shape "
                    f"{_shape(target.model)} but own has shape {_shape(own)}"
                )
            _check_same("AttackView", f"target {target.node}'s model", target.model, own)
        if self.own_previous is not None:
            p = self.own_previous
            if not isinstance(p, Tensor) or _shape(p) != (d,):
                shape = _shape(p) if isinstance(p, Tensor) else type(p).__name__
                raise ValueError(
                    f"AttackView: own_previous must have own's shape ({d},), got {shape}"
                )
            _check_same("AttackView", "own_previous", p, own)
        r = self.round
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"AttackView: round must be an integer >= 0, got {r!r}")
        total = self.total_rounds
        if total is not None and (isinstance(total, bool) or not isinstance(total, int)
                                  or total < 1):
            raise ValueError(f"AttackView: total_rounds must be an integer >= 1, got {total!r}")


# ----------------------------------------------------------------------- base classes
class AttackBase(ABC):
    """Common machinery of every attack: name, config, seeded generator, stats."""

    #: Registry name, set by :func:`register_attack`.
    name: ClassVar[str] = ""
    #: The attack raises ``ValueError`` if a target's ``previous`` is ``None``.
    needs_previous: ClassVar[bool] = False
    #: The attack raises ``ValueError`` if ``view.own_previous`` is ``None``.
    needs_own_previous: ClassVar[bool] = False
    #: The attack raises ``ValueError`` if a target's ``rule`` is ``None``.
    needs_rule: ClassVar[bool] = False
    #: The attack reads a target's ``previous`` when it is given (true if needed).
    uses_previous: ClassVar[bool] = False
    #: The attack reads a target's ``rule`` when it is given (true if needed).
    uses_rule: ClassVar[bool] = False
    #: The attack reads the targets' models and honest neighbours (false for attacks
    #: built from the attacker's own model alone), so a runtime may skip gathering them.
    uses_targets_models: ClassVar[bool] = True

    @property
    def reads_own_model(self) -> bool:
        """Whether what the attacker sends depends on its own trained model (true unless a
        subclass says otherwise). Where it does not, the attacker's local training has no
        observable effect and the runtimes skip it: with 11 attackers among 16 nodes
        (the ClippedGossip paper's honest-majority runs) that is most of a round's work."""
        return True

    def __init__(self, seed: int | None = None) -> None:
        self.stats: dict[str, float] = {}
        self.seed = seed
        self.generator = torch.Generator()
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise ValueError(f"{self.name}: seed must be an integer, got {seed!r}")
            self.generator.manual_seed(seed)

    def config(self) -> dict[str, Any]:
        """The attack's name and knobs, for logs and run configs."""
        params = {
            key: getattr(self, key)
            for key in inspect.signature(type(self).__init__).parameters
            if key != "self" and hasattr(self, key)
        }
        return {"name": self.name, **params}

    def state_dict(self) -> dict[str, Any]:
        """The generator state, so a runtime can persist the random stream."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def _rand(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``U[0, 1)`` draws from the instance generator, with ``like``'s dtype and device."""
        return torch.rand(shape, generator=self.generator, dtype=like.dtype).to(like.device)

    def _randn(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """``N(0, 1)`` draws from the instance generator, with ``like``'s dtype and device."""
        return torch.randn(shape, generator=self.generator, dtype=like.dtype).to(like.device)

    @abstractmethod
    def __call__(self, view: AttackView) -> Tensor:
        """The vectors sent, ``Tensor[len(view.targets), d]``."""


class ModelPoisoningAttack(AttackBase):
    """An attack that crafts the vectors a Byzantine node sends.

    Subclasses implement :meth:`craft` (one vector for one target); attacks whose output
    does not depend on the target may override :meth:`craft_all` instead.
    """

    def __call__(self, view: AttackView) -> Tensor:
        if not isinstance(view, AttackView):
            raise ValueError(f"{self.name}: expected an AttackView, got {type(view).__name__}")
        self.check_view(view)
        self.stats = {"targets": float(len(view.targets))}
        d = view.own.shape[0]
        if not view.targets:
            return view.own.new_empty((0, d))
        out = self.craft_all(view)
        expected = (len(view.targets), d)
        if _shape(out) != expected:  # pragma: no cover - a subclass bug
            raise RuntimeError(f"{self.name}: produced shape {_shape(out)}, expected {expected}")
        return out.to(dtype=view.own.dtype, device=view.own.device)

    def check_view(self, view: AttackView) -> None:
        """Raise ``ValueError`` if a field this attack needs is ``None``."""
        if self.needs_own_previous and view.own_previous is None:
            raise ValueError(
                f"{self.name}: needs AttackView.own_previous (the attacker's model at the start "
                "of the round), got None"
            )
        for target in view.targets:
            if self.needs_previous and target.previous is None:
                raise ValueError(
                    f"{self.name}: needs TargetView.previous (the target's model at the start "
                    f"of the round) for target node {target.node}, got None"
                )
            if self.needs_rule and target.rule is None:
                raise ValueError(
                    f"{self.name}: needs TargetView.rule (the target's aggregation rule) for "
                    f"target node {target.node}, got None"
                )

    def craft_all(self, view: AttackView) -> Tensor:
        """One row per target; by default :meth:`craft` stacked."""
        return torch.stack([self.craft(view, target) for target in view.targets])

    def craft(self, view: AttackView, target: TargetView) -> Tensor:
        """The vector sent to ``target`` (``Tensor[d]``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement craft or craft_all")


class DataPoisoningAttack(AttackBase):
    """An attack that poisons the Byzantine node's training data.

    The node trains on ``poison(images, labels)`` instead of its clean batches and sends the
    resulting model unchanged to every neighbour.
    """

    def __call__(self, view: AttackView) -> Tensor:
        if not isinstance(view, AttackView):
            raise ValueError(f"{self.name}: expected an AttackView, got {type(view).__name__}")
        self.stats = {"targets": float(len(view.targets))}
        n = len(view.targets)
        return view.own.unsqueeze(0).expand(n, -1).clone()

    @abstractmethod
    def poison(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The poisoned batch; ``images`` is ``[B, C, H, W]`` or ``[B, H, W]``, ``labels``
        ``[B]``. Inputs are not modified in place."""


def check_batch(name: str, images: Tensor, labels: Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` is ``[B, C, H, W]``/``[B, H, W]`` and
    ``labels`` is an integer ``[B]``."""
    if not isinstance(images, Tensor) or images.dim() not in (3, 4):
        shape = _shape(images) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name}: images must be [B, C, H, W] or [B, H, W], got {shape}")
    if not isinstance(labels, Tensor) or _shape(labels) != (images.shape[0],):
        shape = _shape(labels) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(
            f"{name}: labels must have shape (B,) = ({images.shape[0]},) to match images "
            f"{_shape(images)}, got {shape}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name}: labels must be an integer tensor, got {labels.dtype}")


# ------------------------------------------------------------------------ validation
def check_finite(name: str, param: str, value: float, *, minimum: float | None = None,
                 strict: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite real (``> minimum`` if ``strict``,
    else ``>= minimum``, when ``minimum`` is given)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise ValueError(f"{name}: {param} must be a finite number{bound}, got {value!r}")


def check_choice(name: str, param: str, value: object, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(
            f"{name}: {param} must be one of {', '.join(map(repr, choices))}, got {value!r}"
        )


def check_int(name: str, param: str, value: int, minimum: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {param} must be an integer >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------- helpers
def require_previous(name: str, target: TargetView) -> Tensor:
    """``target.previous``, or ``ValueError`` if it is ``None``."""
    if target.previous is None:
        raise ValueError(
            f"{name}: needs TargetView.previous for target node {target.node}, got None"
        )
    return target.previous


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``Tensor[m, n]`` of ``||a_i - b_j||^2``, computed from differences (no Gram-matrix
    cancellation), one row of the smaller operand at a time to bound memory."""
    if a.shape[0] <= b.shape[0]:
        rows = [((b - a_i) ** 2).sum(dim=1) for a_i in a]
        return torch.stack(rows) if rows else a.new_zeros((0, b.shape[0]))
    cols = [((a - b_j) ** 2).sum(dim=1) for b_j in b]
    return torch.stack(cols, dim=1) if cols else a.new_zeros((a.shape[0], 0))


def population_std(x: Tensor) -> Tensor:
    """Coordinate-wise population standard deviation (divide by ``n``) of ``x[n, d]``.

    The package's single std convention (ALIE, min-max/min-sum ``"std"``): it is defined
    for one vector (0) and is the maximum-likelihood estimate the papers' Gaussian model
    suggests.
    """
    return x.std(dim=0, correction=0)


# --------------------------------------------------------------------------- registry
ATTACKS: Registry[type[AttackBase]] = Registry("attack")

AttackT = TypeVar("AttackT", bound=type[AttackBase])


def register_attack(name: str) -> Callable[[AttackT], AttackT]:
    """Class decorator that makes an attack available to :func:`get_attack` under ``name``."""

    def decorate(cls: AttackT) -> AttackT:
        ATTACKS.add(name, cls)
        cls.name = name
        return cls

    return decorate


def available_attacks() -> list[str]:
    """Names accepted by :func:`get_attack`, sorted."""
    return ATTACKS.names()


def attack_class(name: str) -> type[AttackBase]:
    """The class registered under ``name``; ``ValueError`` listing the valid names if none."""
    return ATTACKS.factory(name)


def attack_parameters(name: str) -> dict[str, Any]:
    """Constructor parameters of attack ``name`` with their defaults
    (``inspect.Parameter.empty`` when required)."""
    return ATTACKS.parameters(name)


def get_attack(name: str, **params: Any) -> AttackBase:
    """Build the attack registered as ``name`` with knobs ``params``.

    A misspelt name or parameter raises ``ValueError`` listing the valid ones.
    """
    attack: AttackBase = ATTACKS.build(name, **params)
    return attack
