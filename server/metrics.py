"""Prometheus metrics of this node (``GET /metrics``, prometheus-client's text format).

One registry per application (no module globals). Gauges are read when
scraped: calls and sessions on this node, the counter's queue length and
longest wait per business, agents by status. Counters follow the session
timeline (offers, accepts, declines, timeouts, ends by reason) and errors by
component (``db``, ``bus``, ``state``). Bus latency is a histogram of the seconds from a
node sending a message to this node's handler. Nothing identifies a person or a
session: like ``/healthz`` the endpoint is for operators' scrapers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from signaling.broker import Broker
    from signaling.state import AgentPresence, QueueEntry

    from .db import Database

#: timeline events counted, and the metric each goes to
_OFFER_EVENTS = {
    "offered": "offered",
    "call_started": "accepted",
    "offer_declined": "declined",
    "offer_timeout": "timed_out",
}


class _Live(Collector):
    """Gauges read from the broker and the shared state at scrape time (set by ``refresh``)."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.db_errors = 0
        self.calls = 0
        self.sessions = 0
        self.queue: list[QueueEntry] = []
        self.agents: list[AgentPresence] = []
        self.now = 0.0

    def collect(self) -> Iterable[Metric]:
        calls = GaugeMetricFamily(
            "vcounter_calls", "Calls in progress on this node", labels=["node"]
        )
        calls.add_metric([self.node_id], self.calls)
        sessions = GaugeMetricFamily(
            "vcounter_sessions", "Open sessions held by this node", labels=["node"]
        )
        sessions.add_metric([self.node_id], self.sessions)
        length = GaugeMetricFamily(
            "vcounter_queue_length", "Customers waiting in the counter's queue", labels=["business"]
        )
        longest = GaugeMetricFamily(
            "vcounter_queue_longest_wait_seconds",
            "Seconds the longest-waiting customer has waited",
            labels=["business"],
        )
        by_business: dict[str, list[QueueEntry]] = {}
        for entry in self.queue:
            by_business.setdefault(entry.business, []).append(entry)
        for business, entries in sorted(by_business.items()):
            length.add_metric([business], len(entries))
            longest.add_metric([business], max(0.0, self.now - min(e.enqueued_at for e in entries)))
        agents = GaugeMetricFamily(
            "vcounter_agents", "Agents connected to the counter, by status", labels=["status"]
        )
        statuses: dict[str, int] = {}
        for agent in self.agents:
            statuses[agent.status] = statuses.get(agent.status, 0) + 1
        for status, count in sorted(statuses.items()):
            agents.add_metric([status], count)
        db_errors = CounterMetricFamily("vcounter_db_errors", "Database operations that failed")
        db_errors.add_metric([], self.db_errors)
        return [calls, sessions, length, longest, agents, db_errors]


class Metrics:
    """This node's metrics; :meth:`render` answers a scrape."""

    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry()
        self._live = _Live(node_id)
        self.registry.register(self._live)
        self.offers = Counter(
            "vcounter_offers",
            "Offers made to agents, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.sessions_closed = Counter(
            "vcounter_sessions_closed",
            "Sessions that ended, by state and reason",
            ["state", "reason"],
            registry=self.registry,
        )
        self.errors = Counter(
            "vcounter_errors",
            "Errors talking to a component",
            ["component"],
            registry=self.registry,
        )
        self.bus_latency = Histogram(
            "vcounter_bus_latency_seconds",
            "Seconds from a node sending a bus message to this node handling it",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )

    def event(self, session_id: str, kind: str, data: dict[str, object]) -> None:
        """A session timeline listener (``DbSessionLog.listeners``)."""
        outcome = _OFFER_EVENTS.get(kind)
        if outcome is not None:
            self.offers.labels(outcome).inc()
        elif kind in ("ended", "abandoned", "failed"):
            self.sessions_closed.labels(kind, str(data.get("reason", ""))[:40]).inc()

    async def render(self, broker: Broker, db: Database) -> bytes:
        live = self._live
        live.db_errors = db.failures
        live.calls = broker.hub.call_count
        live.sessions = len(broker.sessions)
        try:
            live.queue = await broker.state.queue()
            live.agents = await broker.state.agents()
            live.now = await broker.state.now()
        except Exception:
            self.errors.labels("state").inc()
            live.queue, live.agents, live.now = [], [], time.time()
        return generate_latest(self.registry)
