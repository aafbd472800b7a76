"""The cheapest fit: which instance type and market run tasks of a given size most cheaply.

`cheapest` ranks every (instance type, market) that holds at least one task by its price per
concurrent task (hourly price / tasks it runs at once); `plan` turns the ranking into a
number of instances of one type, as meadowrun does.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable

from .pricing import ON_DEMAND, SPOT, Offer

_EPSILON = 1e-9     # 0.1 + 0.2 CPUs per task must still fit three times in 0.9


class NoFit(ValueError):
    """No offer holds one task of the size asked for, within the interruption threshold."""

    def __init__(self, message: str, *, cpu_per_task: float, memory_gb_per_task: float,
                 interruption_threshold: float, largest: list[Offer]) -> None:
        super().__init__(message)
        self.cpu_per_task, self.memory_gb_per_task = cpu_per_task, memory_gb_per_task
        self.interruption_threshold, self.largest = interruption_threshold, largest


@dataclasses.dataclass(frozen=True)
class Allocation:
    """An offer and how many tasks one instance of it runs at once."""
    offer: Offer
    tasks_per_instance: int

    @property
    def price_per_task_hour(self) -> float:
        """What one concurrent task costs per hour on a full instance."""
        return self.offer.price_per_hour / self.tasks_per_instance

    def describe(self) -> str:
        """`r5n.2xlarge (8 CPU/64.0 GB), spot ($0.0898/hr, ...), will run 2 tasks at a time`."""
        many = "task" if self.tasks_per_instance == 1 else "tasks"
        return f"{self.offer.describe()}, will run {self.tasks_per_instance} {many} at a time"


def tasks_per_instance(offer: Offer, cpu_per_task: float, memory_gb_per_task: float) -> int:
    """How many tasks of this size fit on one instance at once (0 if none)."""
    by_cpu = math.floor(offer.vcpu / cpu_per_task + _EPSILON)
    if memory_gb_per_task <= 0:
        return by_cpu
    return min(by_cpu, math.floor(offer.memory_gb / memory_gb_per_task + _EPSILON))


def cheapest(offers: Iterable[Offer], *, cpu_per_task: float, memory_gb_per_task: float,
             interruption_threshold: float,
             exclude: Collection[tuple[str, str]] = ()) -> list[Allocation]:
    """Every fitting (instance type, market), lowest price per concurrent task first.

    A spot offer is eligible when its interruption_pct is at most the threshold; a threshold
    of 0 (or below) means on-demand only. `exclude` holds (instance type, market) pairs that
    failed for capacity or quota. Ties go to the lower interruption chance, then the cheaper
    instance, then the name. Raises NoFit when nothing fits.
    """
    if not cpu_per_task > 0:
        raise ValueError(f"cpu_per_task must be above 0, not {cpu_per_task!r}")
    if not memory_gb_per_task >= 0:
        raise ValueError(f"memory_gb_per_task must be 0 or more, not {memory_gb_per_task!r}")
    offers = list(offers)
    excluded = set(exclude)
    ranked, too_risky, skipped = [], 0, 0
    for offer in offers:
        fits = tasks_per_instance(offer, cpu_per_task, memory_gb_per_task)
        if fits < 1:
            continue
        if offer.market == SPOT and (interruption_threshold <= 0
                                     or offer.interruption_pct > interruption_threshold):
            too_risky += 1
            continue
        if (offer.instance_type, offer.market) in excluded:
            skipped += 1
            continue
        ranked.append(Allocation(offer, fits))
    # rounded: 0.384 / 4 and 0.096 are the same price per task
    ranked.sort(key=lambda a: (round(a.price_per_task_hour, 9), a.offer.interruption_pct,
                               a.offer.price_per_hour, a.offer.instance_type,
                               a.offer.market != ON_DEMAND))
    if not ranked:
        raise _no_fit(offers, cpu_per_task, memory_gb_per_task, interruption_threshold,
                      too_risky, skipped)
    return ranked


def plan(ranked: list[Allocation], tasks: int) -> list[tuple[Allocation, int]]:
    """Instances to launch so `tasks` tasks run at once: [(allocation, count)], one type.

    Of the ranked allocations, the one whose instances cost least per hour in total for this
    many tasks (so 3 tasks do not get a 24-task machine because it is cheapest per task when
    full); ties keep the ranking's order. No tasks: no instances.
    """
    if tasks <= 0:
        return []
    if not ranked:
        raise ValueError("no allocations to plan with (cheapest() raises NoFit first)")
    best, count, total = ranked[0], 0, math.inf
    for allocation in ranked:
        needed = math.ceil(tasks / allocation.tasks_per_instance)
        cost = needed * allocation.offer.price_per_hour
        if cost < total - _EPSILON:
            best, count, total = allocation, needed, cost
    return [(best, count)]


def _no_fit(offers: list[Offer], cpu: float, memory_gb: float, threshold: float,
            too_risky: int, skipped: int) -> NoFit:
    market = ("on-demand only" if threshold <= 0
              else f"on-demand, or spot with at most {threshold:g}% chance of interruption")
    asked = f"no EC2 instance fits {cpu:g} CPU / {memory_gb:g} GB per task ({market})"
    largest: list[Offer] = []
    for key in (lambda o: (o.vcpu, o.memory_gb), lambda o: (o.memory_gb, o.vcpu)):
        top = max(offers, key=key, default=None)       # the most CPUs, then the most memory
        if top is not None and all(o.instance_type != top.instance_type for o in largest):
            largest.append(top)
    if not offers:
        detail = "there are no offers at all (no prices for this region)"
    else:
        sizes = ", ".join(f"{o.instance_type} ({o.vcpu} CPU/{o.memory_gb:.1f} GB)"
                          for o in largest)
        detail = f"the largest offered are {sizes}"
    if too_risky:
        detail += (f"; {too_risky} spot offer{'s' if too_risky > 1 else ''} would fit but "
                   "exceed the interruption threshold")
    if skipped:
        detail += (f"; {skipped} fitting offer{'s were' if skipped > 1 else ' was'} excluded "
                   "after capacity or quota errors")
    return NoFit(f"{asked}: {detail}", cpu_per_task=cpu, memory_gb_per_task=memory_gb,
                 interruption_threshold=threshold, largest=largest)
