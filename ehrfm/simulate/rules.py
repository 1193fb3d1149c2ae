"""A task's outcome read off a simulated future: the task spec (``tasks/*.yaml``) turned into a rule over
generated tokens and the simulated clock.

What a future is: the tokens the pretrained model generates after a task row's last event at or before
prediction time (see :mod:`ehrfm.simulate.futures`). Its clock starts at that event's time and advances as
the tokenizer encodes time (:mod:`ehrfm.simulate.clock`). Every rule reads three things: which token was
generated, the clock when it was, and whether the *index visit* (the row's last visit, when it is still open
at prediction time) has closed.

Supported outcome specs (others are refused with the task and field named):

* ``codes`` + ``within``: positive when a matching code is generated with the clock in
  ``(prediction_time, prediction_time + within]``; negative once the clock passes the window end.
  ``other_encounter``: matching codes generated while the index visit is still open do not count (they belong
  to the index encounter).
* ``codes`` + ``until: encounter_end``: the window ends when the index visit closes (``[VE]``, or a new visit
  opened without one); a death on the clock within the visit is in it. MEDS_DEATH sorts after
  ``ENCOUNTER//*//END`` at equal times, so the close is the ``[VE]`` token, never the END code.
* ``encounter_duration_gt``: positive when the index visit is still open once the clock passes
  ``index time + duration`` (index time = prediction_time - the spec's ``prediction_time`` offset); negative
  when it closes first.

A generated ``MEDS_DEATH`` ends a future: positive when death is the outcome, else negative (censoring
``death: negative``) or excluded from the estimate (``death: exclude``), as the label engine treats a death.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from ehrfm.labels.spec import TaskSpec, codes_matching
from ehrfm.schema import DEATH_CODE
from ehrfm.vocab import Vocabulary

SIMULATED_KINDS = ("binary", "time_to_event")
"""Task kinds whose outcome a future can decide (forecast tasks have no single outcome event)."""


class UnsupportedTaskError(ValueError):
    """The task's outcome cannot be read off a simulated future; the message names the task and field."""


@dataclass(frozen=True)
class OutcomeRule:
    """One task's outcome over simulated futures (build it with :meth:`from_spec`)."""

    task: str
    kind: str
    """``binary`` or ``time_to_event``."""
    outcome_mask: Tensor
    """(V,) bool: generated tokens that are the outcome event (all False for a duration rule)."""
    death_mask: Tensor
    """(V,) bool: the death token(s); a death ends the future."""
    within_days: float | None = None
    """Window end in days after prediction time (None: no fixed end)."""
    until_visit_end: bool = False
    """The window ends when the index visit closes."""
    other_encounter: bool = False
    """Outcome codes generated inside the still-open index visit do not count."""
    duration_days: float | None = None
    """Duration rule: positive when the index visit is open at index time + this many days."""
    index_offset_days: float = 0.0
    """prediction_time - index event time, in days (the spec's ``prediction_time`` offset)."""
    death_is_outcome: bool = False
    """Death is (one of) the outcome codes."""
    death_excludes: bool = False
    """A death before the outcome removes the future from the estimate (censoring ``death: exclude``)."""

    @property
    def horizon_days(self) -> float | None:
        """Days after prediction time by which every future is decided on the clock (None: only the index
        visit's close decides)."""
        if self.duration_days is not None:
            return self.duration_days - self.index_offset_days
        return self.within_days

    def to(self, device: torch.device | str) -> OutcomeRule:
        """The same rule with its token masks on ``device``."""
        return dataclasses.replace(self, outcome_mask=self.outcome_mask.to(device),
                                   death_mask=self.death_mask.to(device))

    @classmethod
    def from_spec(cls, spec: TaskSpec, vocab: Vocabulary) -> OutcomeRule:
        """The rule of ``spec`` over ``vocab``'s tokens; :class:`UnsupportedTaskError` names what cannot be
        simulated."""
        w = f"task {spec.name!r}"
        if spec.kind not in SIMULATED_KINDS:
            raise UnsupportedTaskError(f"{w}: kind: {spec.kind} tasks have no outcome event to simulate "
                                       f"(supported: {', '.join(SIMULATED_KINDS)})")
        o = spec.outcome
        if o.at is not None:
            raise UnsupportedTaskError(f"{w}: outcome.at: {o.at} is not simulated")
        if o.grace != pd.Timedelta(0):
            raise UnsupportedTaskError(f"{w}: outcome.grace: a window past the encounter's end is not "
                                       "simulated")
        tokens = pd.Series(vocab.tokens)
        death = torch.from_numpy((tokens == DEATH_CODE).to_numpy())
        offset = spec.prediction_offset / pd.Timedelta(days=1)
        if o.encounter_duration_gt is not None:
            return cls(spec.name, _kind(spec), torch.zeros(len(vocab), dtype=torch.bool), death,
                       duration_days=o.encounter_duration_gt / pd.Timedelta(days=1), index_offset_days=offset,
                       death_excludes=spec.censoring.death == "exclude")
        if not o.codes:
            raise UnsupportedTaskError(f"{w}: outcome.codes: required to simulate (or encounter_duration_gt)")
        if o.within is None and o.until != "encounter_end":
            raise UnsupportedTaskError(f"{w}: outcome.within: a window end is required to simulate (or "
                                       "until: encounter_end)")
        if spec.kind == "time_to_event" and o.within is None:
            raise UnsupportedTaskError(f"{w}: outcome.within: a time-to-event task needs a horizon to "
                                       "simulate")
        mask = torch.from_numpy(codes_matching(tokens, o.codes).to_numpy())
        if not bool(mask.any()):
            raise UnsupportedTaskError(f"{w}: outcome.codes: no vocabulary token matches "
                                       f"{[p.describe() for p in o.codes]}: the outcome can never be "
                                       "generated")
        return cls(spec.name, _kind(spec), mask, death,
                   within_days=None if o.within is None else o.within / pd.Timedelta(days=1),
                   until_visit_end=o.until == "encounter_end", other_encounter=o.other_encounter,
                   index_offset_days=offset, death_is_outcome=bool((mask & death).any()),
                   death_excludes=spec.censoring.death == "exclude")


def _kind(spec: TaskSpec) -> str:
    return "binary" if spec.kind == "binary" else "time_to_event"
