"""Ordering usable hosts by a :class:`SelectionPolicy` (pure functions, no I/O).

>>> fast = HostInfo(url="http://fast:1", healthy=True, status="healthy", latency_s=0.01, price=3)
>>> cheap = HostInfo(url="http://cheap:1", healthy=True, status="healthy", latency_s=0.2, price=1)
>>> [h.url for h in rank([fast, cheap], SelectionPolicy.FASTEST)]
['http://fast:1', 'http://cheap:1']
>>> [h.url for h in rank([fast, cheap], SelectionPolicy.CHEAPEST)]
['http://cheap:1', 'http://fast:1']
>>> round(auto_scores([fast, cheap])[0], 2), round(auto_scores([fast, cheap])[1], 2)
(0.5, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from langchain_fabstir.discovery.hosts import HostInfo, SelectionPolicy

__all__ = ["auto_scores", "rank"]

_MODEL_TIER = {"yes": 0, "maybe": 1, "no": 2}


def _scaled(values: Sequence[float | None]) -> list[float]:
    known = [v for v in values if v is not None]
    if not known:
        return [1.0 for _ in values]
    low, high = min(known), max(known)
    span = high - low
    return [1.0 if v is None else (0.0 if span == 0 else (v - low) / span) for v in values]


def auto_scores(
    hosts: Sequence[HostInfo],
    *,
    latency_weight: float = 0.5,
    price_weight: float = 0.5,
    model: str | None = None,
) -> list[float]:
    """The AUTO score of each host (lower is better).

    ``score = latency_weight * L + price_weight * P`` where ``L`` is the host's latency scaled
    over ``hosts`` to ``[0, 1]`` (fastest -> 0, slowest -> 1) and ``P`` likewise for price;
    an unknown latency or price counts as 1 (worst). Equal values all scale to 0.
    """
    lat = _scaled([h.latency_s for h in hosts])
    price = _scaled([h.price_for(model) for h in hosts])
    return [latency_weight * lv + price_weight * pv for lv, pv in zip(lat, price, strict=True)]


def rank(
    hosts: Sequence[HostInfo],
    policy: SelectionPolicy,
    *,
    model: str | None = None,
    on_trial: frozenset[str] = frozenset(),
    latency_weight: float = 0.5,
    price_weight: float = 0.5,
) -> list[HostInfo]:
    """Order ``hosts`` (already filtered to usable ones) by ``policy``.

    Every policy puts hosts known to serve ``model`` before "maybe" hosts, and hosts whose URL is
    in ``on_trial`` (half-open breaker) after the others. Within that:
    AUTO: healthy before degraded, then :func:`auto_scores`; FASTEST: latency (unknown last);
    CHEAPEST: price for ``model`` (unknown last), then latency; SPECIFIC: the given order.
    Ties keep the given order.
    """
    inf = math.inf
    scores = auto_scores(
        hosts, latency_weight=latency_weight, price_weight=price_weight, model=model
    )

    def key(item: tuple[int, HostInfo]) -> tuple[float, ...]:
        index, host = item
        head: tuple[float, ...] = (
            _MODEL_TIER[host.serves(model)],
            1 if host.url in on_trial else 0,
        )
        degraded = 0 if host.status == "healthy" else 1
        latency = inf if host.latency_s is None else host.latency_s
        known = host.price_for(model)
        price = inf if known is None else known
        if policy is SelectionPolicy.AUTO:
            tail: tuple[float, ...] = (degraded, scores[index])
        elif policy is SelectionPolicy.FASTEST:
            tail = (latency,)
        elif policy is SelectionPolicy.CHEAPEST:
            tail = (price, latency)
        else:
            tail = ()
        return (*head, *tail, index)

    return [host for _, host in sorted(enumerate(hosts), key=key)]
