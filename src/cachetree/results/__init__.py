"""Results above the cache tree: combining parts with combiners, merging and splitting
separately computed outputs."""

from .adding import CONFIG_PART, add_part, add_shared, get_combiner, set_combiner
from .combiners import (
    BUILTIN_COMBINERS,
    PartView,
    combine_canvas_mean,
    combine_concatenate,
    combine_sum,
    resolve_combiner,
)
from .combining import CombineReport, combine
from .merging import check_merge, merge, split

__all__ = [
    "BUILTIN_COMBINERS",
    "CONFIG_PART",
    "CombineReport",
    "PartView",
    "add_part",
    "add_shared",
    "check_merge",
    "combine",
    "combine_canvas_mean",
    "combine_concatenate",
    "combine_sum",
    "get_combiner",
    "merge",
    "resolve_combiner",
    "set_combiner",
    "split",
]
