"""The batched engine: every node of a run as rows of one ``[N, d]`` tensor on one device,
stepped as one computation (batched local steps, batched rules and attacks, per-node
fallback for the rest). :func:`run_batched` runs a :class:`~flwr_tempered.node.RunConfig`
and writes the same results folder as the per-node and Flower engines."""

from .run import BatchedEngine, EngineOptions, run_batched

__all__ = ["BatchedEngine", "EngineOptions", "run_batched"]
