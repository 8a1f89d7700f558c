"""Byzantine attacks: model poisoning (crafted vectors per recipient) and data poisoning.

Build one by name with :func:`get_attack`; :func:`available_attacks` lists the names. See
:mod:`flwr_tempered.attacks.base` for the contract.
"""

from __future__ import annotations

from .alie import ALIE, alie_default_z
from .balance_adaptive import BalanceAdaptive
from .base import (
    AttackBase,
    AttackView,
    DataPoisoningAttack,
    ModelPoisoningAttack,
    TargetView,
    attack_class,
    attack_parameters,
    available_attacks,
    get_attack,
    register_attack,
)
from .data_poisoning import Backdoor, LabelFlip, triggered_test_set
from .dissensus import Dissensus
from .fang import FangKrum, FangTrim
from .mimic import Mimic
from .min_max import MinMax, MinSum
from .optimal import OptimalALIE, OptimalIPM
from .simple import BitFlip, Gaussian, Inf, InnerProductManipulation, SignFlip

__all__ = [
    "ALIE",
    "AttackBase",
    "AttackView",
    "Backdoor",
    "BalanceAdaptive",
    "BitFlip",
    "DataPoisoningAttack",
    "Dissensus",
    "FangKrum",
    "FangTrim",
    "Gaussian",
    "Inf",
    "InnerProductManipulation",
    "LabelFlip",
    "Mimic",
    "MinMax",
    "MinSum",
    "ModelPoisoningAttack",
    "OptimalALIE",
    "OptimalIPM",
    "SignFlip",
    "TargetView",
    "alie_default_z",
    "attack_class",
    "attack_parameters",
    "available_attacks",
    "get_attack",
    "register_attack",
    "triggered_test_set",
]
