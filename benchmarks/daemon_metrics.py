"""The daemon's own view of ack latency, from its Prometheus histogram.

``orchestrator_ack_latency_seconds`` runs from the moment the daemon has parsed a line to the
moment Redis has replied for it. Comparing its buckets with the client's latencies shows how much of a
slow ack was spent inside the daemon and Redis, and how much in the socket, the client and the
scheduler.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

ACK_LATENCY_METRIC = "orchestrator_ack_latency_seconds"
SCRAPE_TIMEOUT_S = 5.0


async def ack_latency_buckets(metrics_url: str) -> dict[str, float]:
    """Return the cumulative count of each bucket of the ack latency histogram, by its ``le`` label."""
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S) as client:
        response = await client.get(metrics_url)
        response.raise_for_status()
    buckets = {}
    for family in text_string_to_metric_families(response.text):
        if family.name != ACK_LATENCY_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{ACK_LATENCY_METRIC}_bucket":
                buckets[sample.labels["le"]] = sample.value
    return buckets


def shares_within(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Return, per bucket bound in milliseconds, the share of events observed in between within it."""
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    if total <= 0:
        return {}
    shares = {}
    for bound, count in after.items():
        if bound == "+Inf":
            continue
        within = count - before.get(bound, 0.0)
        shares[f"{float(bound) * 1000:g} ms"] = round(within / total, 4)
    return shares
