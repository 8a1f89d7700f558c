"""One participant of a decentralized run, free of any transport."""

from .config import RunConfig
from .node import Node, NodeState, TargetInputs, build_attack, build_rule, screen
from .task import FunctionTask, SupervisedTask, TaskFactory, TrainingTask
from .world import World, build_world, topology_of

__all__ = [
    "FunctionTask",
    "Node",
    "NodeState",
    "RunConfig",
    "SupervisedTask",
    "TargetInputs",
    "TaskFactory",
    "TrainingTask",
    "World",
    "build_attack",
    "build_rule",
    "build_world",
    "screen",
    "topology_of",
]
