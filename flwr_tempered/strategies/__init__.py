"""Flower strategies: the decentralized strategy (neighbour exchange over a Grid)."""

from .decentralized import DecentralizedStrategy

__all__ = ["DecentralizedStrategy"]
