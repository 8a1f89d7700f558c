"""One participant of a decentralized run, free of any transport."""

from .config import RunConfig
from .node import Node, NodeState, TargetInputs, screen
from .world import World, build_world, topology_of

__all__ = [
    "Node", "NodeState", "RunConfig", "TargetInputs", "World", "build_world", "screen",
    "topology_of",
]
