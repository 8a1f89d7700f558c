"""The resolved configuration of a decentralized run, shared by every participant.

Every node rebuilds the same world from it (topology, its data partition, its rule or
attack, the model), so messages carry only what changes per round: digests of models.
It travels as a Flower run config (flat keys; parameter dicts as JSON strings) and is
written as JSON into the run's results folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from typing import Any

from flwr_tempered.ledger import EQUIVOCATOR_POLICIES
from flwr_tempered.training import AUGMENTATIONS, step_lr

#: How models move between nodes (see :mod:`flwr_tempered.runtime.exchange`): a
#: shared-memory store (simulation), inside the relay's messages, or peer to peer.
EXCHANGES = ("shared", "inline", "p2p")

#: The faults :attr:`RunConfig.faults` can inject.
FAULT_KINDS = ("nan", "inf", "shape", "dtype", "empty", "raise", "timeout",
               "unsigned", "forge", "replay", "mismatch")


#: The embedded default run's settings of a rule, used when a run names the rule but no
#: ``rule_args``. BALANCE here keeps a constant acceptance radius (``kappa = 0``) of half
#: the node's model norm: with the paper's shrinking radius (``gamma = 0.3``, ``kappa = 1``)
#: the small CNN's honest neighbours fall outside it after about ten rounds and the honest
#: nodes train alone from then on (measured: README, "The main job").
DEFAULT_RULE_ARGS: dict[str, dict[str, Any]] = {"balance": {"gamma": 0.5, "kappa": 0.0}}


class _RuleDefaults(dict[str, Any]):
    """``rule_args`` that were not given: :class:`RunConfig` fills in the rule's
    :data:`DEFAULT_RULE_ARGS` and keeps the mark, so ``dataclasses.replace(config,
    rule="median")`` gets median's defaults rather than BALANCE's settings."""


def default_rule_args(rule: str) -> dict[str, Any]:
    """The settings the embedded default run uses for ``rule`` (``{}``: the rule's own
    defaults)."""
    return dict(DEFAULT_RULE_ARGS.get(rule, {}))


@dataclass(frozen=True)
class RunConfig:
    """What a decentralized run does. Defaults are the embedded default run."""

    topology: str = "erdos_renyi"
    topology_args: Mapping[str, Any] = field(default_factory=lambda: {"p": 0.3})
    nodes: int = 16
    byzantine: int = 3
    rule: str = "balance"
    #: The rule's parameters; when not given, :data:`DEFAULT_RULE_ARGS` of ``rule``.
    rule_args: Mapping[str, Any] = field(default_factory=_RuleDefaults)
    attack: str = "alie"
    attack_args: Mapping[str, Any] = field(default_factory=lambda: {"z": 10.0})
    dataset: str = "mnist-5k"
    partition: str = "iid"
    partition_args: Mapping[str, Any] = field(default_factory=dict)
    model: str = "small_cnn"
    model_args: Mapping[str, Any] = field(default_factory=dict)
    rounds: int = 20
    local_steps: int = 5
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    #: Step learning-rate schedule: the lr of round ``t`` (0-based, the round index a node
    #: trains in) is ``lr * lr_gamma ** (number of milestones <= t)``. Milestones are
    #: strictly increasing positive round indices; ``()`` keeps the lr constant. In a
    #: Flower run config it is a JSON list string such as ``"[80, 120]"``.
    lr_milestones: tuple[int, ...] = ()
    #: The factor, in (0, 1], the lr is multiplied by at each milestone.
    lr_gamma: float = 0.1
    #: Augmentation of every training batch: ``none`` or ``crop_flip`` (random crop of the
    #: image zero-padded by 4 pixels on each side, then a random horizontal flip; see
    #: :func:`flwr_tempered.training.crop_flip`).
    augment: str = "none"
    eval_every: int = 5
    seed: int = 0
    exchange: str = "shared"
    round_timeout: float = 120.0
    #: Ray ``client_resources`` per simulated node (fractions allowed: 0.25 GPU lets four
    #: nodes share one GPU). Used by ``flwr-tempered run``/``simulate``; ``flwr run``
    #: takes them from the federation's options instead.
    node_cpus: float = 1.0
    node_gpus: float = 0.0
    #: Fault injection for robustness tests: position -> {"kind": ..., "rounds": [...]}.
    #: Kinds: nan, inf, shape, dtype, empty (what the node publishes is corrupted),
    #: raise (the node's handler raises), timeout (it answers after the round timeout);
    #: and against the ledger: unsigned (no signature), forge (signed with a key that is
    #: not the node's), replay (re-sends its previous round's message), mismatch (signs
    #: one model, sends another).
    faults: Mapping[str, Any] = field(default_factory=dict)
    #: Keep a ledger (signed messages, one quorum-endorsed block per round, equivocation
    #: evidence) in ``ledger.sqlite`` of the results folder.
    ledger: bool = True
    #: Faulty validators the ledger tolerates; blocks need 2f + 1 endorsements. -1: the
    #: largest f with nodes >= 3f + 1.
    ledger_f: int = -1
    #: What honest nodes do with a proven equivocator: ``keep`` aggregating its messages
    #: (the robust rule copes) or ``exclude`` them from the round after the evidence.
    equivocators: str = "keep"
    #: Graph nodes hosted by one Flower ClientApp (SuperNode). 1: one node per SuperNode.
    #: K > 1: consecutive groups of K positions per SuperNode, each group stepped by the
    #: batched engine (``flwr_tempered.engine.group``), so a large graph needs few
    #: SuperNodes and Ray actors; the run then keeps no ledger and injects no faults.
    nodes_per_client: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.rule_args, _RuleDefaults):
            object.__setattr__(self, "rule_args", _RuleDefaults(default_rule_args(self.rule)))
        for name in ("nodes", "rounds", "local_steps", "batch_size", "eval_every",
                     "nodes_per_client"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.byzantine, int) or not 0 <= self.byzantine < self.nodes:
            raise ValueError(
                f"byzantine must be an integer in [0, nodes - 1] = [0, {self.nodes - 1}], "
                f"got {self.byzantine!r}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum!r}")
        self._check_schedule()
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, "
                             f"got {self.augment!r}")
        if self.exchange not in EXCHANGES:
            raise ValueError(f"exchange must be one of {', '.join(map(repr, EXCHANGES))}, "
                             f"got {self.exchange!r}")
        if self.exchange == "p2p" and self.nodes_per_client > 1:
            raise ValueError("exchange 'p2p' runs one topology node per SuperNode; "
                             "nodes_per_client must be 1")
        if not self.node_cpus > 0 or self.node_gpus < 0:
            raise ValueError(
                f"node_cpus must be > 0 and node_gpus >= 0, got {self.node_cpus!r} and "
                f"{self.node_gpus!r}"
            )
        if not self.round_timeout > 0:
            raise ValueError(f"round_timeout must be > 0, got {self.round_timeout!r}")
        if isinstance(self.ledger_f, bool) or not isinstance(self.ledger_f, int) or (
                self.ledger_f < -1 or self.nodes < 3 * self.ledger_f + 1):
            raise ValueError(
                f"ledger_f must be -1 (default) or an integer f >= 0 with nodes >= 3f + 1 "
                f"(nodes = {self.nodes}), got {self.ledger_f!r}"
            )
        if self.nodes_per_client > 1 and (self.ledger or self.faults):
            raise ValueError(
                f"nodes_per_client = {self.nodes_per_client} hosts several graph nodes per "
                f"SuperNode, which signs nothing and injects no faults: set ledger=False "
                f"(--no-ledger) and no faults, or nodes_per_client = 1")
        if self.equivocators not in EQUIVOCATOR_POLICIES:
            raise ValueError(f"equivocators must be one of {', '.join(EQUIVOCATOR_POLICIES)}, "
                             f"got {self.equivocators!r}")
        for position, fault in self.faults.items():
            kind = fault.get("kind") if isinstance(fault, Mapping) else None
            if kind not in FAULT_KINDS:
                raise ValueError(
                    f"fault for node {position}: kind must be one of {', '.join(FAULT_KINDS)}, "
                    f"got {kind!r}"
                )

    def _check_schedule(self) -> None:
        """Validate ``lr_milestones`` (normalised to a tuple: lists are accepted) and
        ``lr_gamma``."""
        milestones = self.lr_milestones
        if isinstance(milestones, list):
            milestones = tuple(milestones)
            object.__setattr__(self, "lr_milestones", milestones)
        if not isinstance(milestones, tuple) or not all(
                isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in milestones
        ) or any(a >= b for a, b in pairwise(milestones)):
            raise ValueError(
                f"lr_milestones must be a strictly increasing sequence of integers >= 1, "
                f"got {self.lr_milestones!r}"
            )
        gamma = self.lr_gamma
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0 < gamma <= 1:
            raise ValueError(f"lr_gamma must lie in (0, 1], got {gamma!r}")

    def lr_at(self, round: int) -> float:
        """The learning rate of round ``round`` (0-based) under the step schedule."""
        return step_lr(self.lr, round, self.lr_milestones, self.lr_gamma)

    def fault_at(self, position: int, round: int) -> str | None:
        """The fault node ``position`` injects in ``round``, if any."""
        fault = self.faults.get(str(position))
        if fault is None:
            return None
        rounds = fault.get("rounds")
        return str(fault["kind"]) if rounds is None or round in rounds else None

    # ------------------------------------------------------------------ conversions
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dictionary (parameter mappings as dicts, ``lr_milestones``
        as a list)."""
        values = asdict(self)
        values["lr_milestones"] = list(self.lr_milestones)
        return {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in values.items()}

    def to_flower(self) -> dict[str, int | float | str | bool]:
        """Flat Flower run config: mappings and lists become JSON strings, keys use
        dashes."""
        flat: dict[str, int | float | str | bool] = {}
        for key, value in self.to_dict().items():
            flat[key.replace("_", "-")] = (
                json.dumps(value) if isinstance(value, dict | list) else value
            )
        return flat

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build from a dict or a Flower run config (dashes or underscores; JSON strings
        for the ``*_args`` mappings and for ``lr_milestones``, which also takes a list).
        Unknown keys raise ``ValueError`` listing the valid."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = raw_key.replace("-", "_")
            if key not in known:
                raise ValueError(
                    f"unknown run config key {raw_key!r}; valid keys: {', '.join(sorted(known))}"
                )
            if key == "rule_args" and isinstance(value, str) and not value.strip():
                # Not given: the rule's defaults of the default run, whichever rule a
                # ``--run-config "rule='median'"`` override names.
                kwargs[key] = _RuleDefaults()
                continue
            if (key.endswith("_args") or key == "faults") and isinstance(value, str):
                try:
                    value = json.loads(value) if value.strip() else {}
                except json.JSONDecodeError as error:
                    raise ValueError(f"{raw_key} must be a JSON object: {error}") from None
            if (key.endswith("_args") or key == "faults") and not isinstance(value, Mapping):
                raise ValueError(f"{raw_key} must be a mapping, got {value!r}")
            if key == "lr_milestones":
                value = _milestones(raw_key, value)
            kwargs[key] = value
        return cls(**kwargs)


def _milestones(raw_key: str, value: Any) -> Any:
    """``lr_milestones`` from a JSON list string (``"[80, 120]"``, ``""`` for none) or a
    list/tuple, as a tuple; the dataclass validates the entries."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as error:
            raise ValueError(f"{raw_key} must be a JSON list of integers: {error}") from None
    if not isinstance(value, list | tuple):
        raise ValueError(f"{raw_key} must be a list of integers, got {value!r}")
    return tuple(value)
