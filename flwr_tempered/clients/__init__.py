"""Attack clients for ordinary (server-assisted) Flower apps: wrap any ``ClientApp`` so
that chosen nodes poison their data or their model updates."""

from .data_poisoning import poison_batch, poisoned_dataloaders
from .malicious import (
    VIEWS,
    malicious_clientapp,
    malicious_partitions,
    smallest_attacking_fraction,
)

__all__ = [
    "VIEWS",
    "malicious_clientapp",
    "malicious_partitions",
    "poison_batch",
    "poisoned_dataloaders",
    "smallest_attacking_fraction",
]
