"""A work and time budget for one evaluation, so that no expression can pin a core or fill the memory.

Earth Engine refuses computations that run too long ("Computation timed out.") or grow too big ("User
memory limit exceeded."). The emulator does the same with two numbers from
:class:`~edown.emulator.behaviour.Limits`: ``max_evaluation_nodes`` bounds the steps of one request
(expression nodes evaluated, collection elements produced, bands rendered) and ``max_evaluation_seconds``
its wall time. Steps are charged from wherever the work happens (the expression walker, lazy collections,
lazy image bands) through a context variable, so none of those modules has to pass a budget around; the
server thread that handles a request is the only one charging it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class BudgetExceededError(Exception):
    """An evaluation went over its step or time budget (HTTP 400 naming the limit, as EE's own 400s)."""


class Budget:
    """Steps taken and time left for one request's evaluation."""

    def __init__(self, max_nodes: int, max_seconds: float) -> None:
        self.max_nodes = max_nodes
        self.max_seconds = max_seconds
        self.nodes = 0
        self.deadline = time.monotonic() + max_seconds

    def charge(self, steps: int = 1) -> None:
        self.nodes += steps
        if self.nodes > self.max_nodes:
            raise BudgetExceededError(
                f"User memory limit exceeded: the computation needs more than {self.max_nodes} steps, the edown "
                "emulator's evaluation budget (Limits.max_evaluation_nodes)."
            )
        if time.monotonic() > self.deadline:
            raise BudgetExceededError(
                f"Computation timed out: it ran longer than {self.max_seconds:g} s, the edown emulator's "
                "evaluation limit (Limits.max_evaluation_seconds)."
            )


_current: ContextVar[Budget | None] = ContextVar("edown_emulator_budget", default=None)


def charge(steps: int = 1) -> None:
    """Charge the running evaluation (a no-op outside one, e.g. when a test renders an image directly)."""
    budget = _current.get()
    if budget is not None:
        budget.charge(steps)


@contextmanager
def enforce(max_nodes: int, max_seconds: float) -> Iterator[Budget]:
    """Run the ``with`` block under a fresh budget; Python's recursion limit becomes a 400 as well."""
    budget = Budget(max_nodes, max_seconds)
    token = _current.set(budget)
    try:
        yield budget
    except RecursionError:
        raise BudgetExceededError(
            "The expression is nested too deeply for the edown emulator (Python's recursion limit); "
            "split the computation into smaller expressions."
        ) from None
    finally:
        _current.reset(token)
