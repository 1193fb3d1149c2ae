"""Zero-shot risk by simulated futures (``ehrfm simulate``): from a task row's recurrent state at prediction
time, the pretrained model samples M futures (batched, one O(1) ``step`` per token), a simulated clock tracks
time as the tokenizer encodes it, and the task's outcome rule decides each future; the risk is the share of
futures with the outcome, with a Monte-Carlo interval. See docs/simulate.md.

Modules: :mod:`~ehrfm.simulate.rules` (task spec -> outcome rule), :mod:`~ehrfm.simulate.clock` (interval
tokens, within-visit gaps, value-bin values), :mod:`~ehrfm.simulate.futures` (the batched sampler),
:mod:`~ehrfm.simulate.estimate` (share, interval, survival), :mod:`~ehrfm.simulate.stage` (the CLI stage).
"""

from ehrfm.simulate.clock import StreamTables, interval_ranges
from ehrfm.simulate.estimate import binary_columns, jeffreys_interval, tte_columns
from ehrfm.simulate.futures import FutureOutcomes, Settings, TokenInfo, simulate_rows, strip_prompt
from ehrfm.simulate.rules import OutcomeRule, UnsupportedTaskError

__all__ = ["FutureOutcomes", "OutcomeRule", "Settings", "StreamTables", "TokenInfo", "UnsupportedTaskError",
           "binary_columns", "interval_ranges", "jeffreys_interval", "simulate_rows", "strip_prompt",
           "tte_columns"]
