"""Byzantine-robust aggregation rules as pure tensor math.

Every rule follows the contract of :class:`~flwr_tempered.aggregators.base.Rule`::

    rule = get_rule("trimmed_mean", b=1)
    new_model = rule(own, received, weights=None, round=t)

See :mod:`flwr_tempered.aggregators.base` for the non-finite input policy.
"""

from .averaging import Gossip, Local, Mean
from .balance import Balance
from .base import (
    Rule,
    available_rules,
    get_rule,
    register_rule,
    resolve_rule,
    rule_class,
    rule_parameters,
)
from .clipping import CenteredClipping, ClippedGossip, clip_rows
from .clipping_wrappers import AdaptiveRobustClipping, StaticClipping
from .composition import Bucketing, NearestNeighborMixing, PreAggregation
from .covariance_filter import CovarianceFilter, covariance_filter
from .fltrust import FLTrust
from .geometric_median import GeometricMedian, smoothed_weiszfeld
from .krum import Bulyan, Krum, MultiKrum, krum_scores, multi_krum_select
from .linalg import pairwise_sq_distances, row_distances
from .monna import MoNNA
from .mozi import Mozi
from .order_statistics import (
    MeanAroundMedian,
    Median,
    TrimmedMean,
    coordinate_median,
    coordinate_trimmed_mean,
)
from .subset_selection import MinimumDiameterAveraging, SmallestMaxEigenvalueAveraging

__all__ = [
    "AdaptiveRobustClipping",
    "Balance",
    "Bucketing",
    "Bulyan",
    "CenteredClipping",
    "ClippedGossip",
    "CovarianceFilter",
    "FLTrust",
    "GeometricMedian",
    "Gossip",
    "Krum",
    "Local",
    "Mean",
    "MeanAroundMedian",
    "Median",
    "MinimumDiameterAveraging",
    "MoNNA",
    "Mozi",
    "MultiKrum",
    "NearestNeighborMixing",
    "PreAggregation",
    "Rule",
    "SmallestMaxEigenvalueAveraging",
    "StaticClipping",
    "TrimmedMean",
    "available_rules",
    "clip_rows",
    "coordinate_median",
    "coordinate_trimmed_mean",
    "covariance_filter",
    "get_rule",
    "krum_scores",
    "multi_krum_select",
    "pairwise_sq_distances",
    "register_rule",
    "resolve_rule",
    "row_distances",
    "rule_class",
    "rule_parameters",
    "smoothed_weiszfeld",
]
