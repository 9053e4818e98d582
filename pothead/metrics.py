"""
Counts and distributions the hub and the worker keep of their own work,
handed to C{prometheus_client} as metric families when scraped.

Counting happens on every request, scraping every few seconds: so counts
are plain integers and a distribution is a list of bucket counts filled by
C{bisect}, which the reactor thread alone touches and no lock guards.
C{prometheus_client}'s own C{Histogram.observe} takes a lock and walks its
buckets in Python, several times the cost (benchmarks/metrics.py measures
both); its registry, families and exposition are used as they are.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

#: Histogram bucket bounds, in seconds: for jobs of 1 ms to 10 min.
BOUNDS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0,
)

_BOUND_LABELS = [repr(bound) for bound in BOUNDS] + ["+Inf"]


class Distribution:
    """
    How many observations fell into each of L{BOUNDS}' buckets, and their
    sum: a Prometheus histogram's state.
    """

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one observation of C{seconds}."""
        self.counts[bisect_left(BOUNDS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        """How many observations there were."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """The buckets as Prometheus writes them: C{le} bound, count at or below it."""
        total = 0
        buckets = []
        for label, count in zip(_BOUND_LABELS, self.counts, strict=True):
            total += count
            buckets.append((label, total))
        return buckets


def counter(
    name: str, documentation: str, labels: Sequence[str],
    series: Iterable[tuple[Sequence[str], float]],
) -> CounterMetricFamily:
    """
    A counter family (C{name} without C{_total}, which Prometheus adds) of
    C{(label values, value)} pairs.
    """
    return _family(CounterMetricFamily(name, documentation, labels=labels), series)


def gauge(
    name: str, documentation: str, labels: Sequence[str],
    series: Iterable[tuple[Sequence[str], float]],
) -> GaugeMetricFamily:
    """A gauge family of C{(label values, value)} pairs."""
    return _family(GaugeMetricFamily(name, documentation, labels=labels), series)


def histogram(
    name: str, documentation: str, labels: Sequence[str],
    series: Iterable[tuple[Sequence[str], Distribution]],
) -> HistogramMetricFamily:
    """A histogram family of C{(label values, distribution)} pairs."""
    return _family(HistogramMetricFamily(name, documentation, labels=labels), (
        (values, distribution.cumulative(), distribution.sum)
        for values, distribution in series))


def _family(family, series: Iterable[tuple]):
    """C{family} with a sample for each of C{series}' label values and values."""
    for values, *value in series:
        family.add_metric(values, *value)
    return family
