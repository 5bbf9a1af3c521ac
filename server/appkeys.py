"""Typed application state keys (``app[KEY]``), so handlers never use module globals.

The services are imported for type checking only: this module imports nothing
of ``server/`` at run time, so any module may use the keys without a cycle.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from recorder.keys import MasterKey, SigningKey
    from signaling.broker import Broker
    from signaling.media_hub import MediaHub

    from .appointments import AppointmentService
    from .auth import LoginThrottle
    from .cluster import Cluster
    from .config import Config
    from .db import Database
    from .flow_service import FlowService
    from .health import LoopLagMonitor
    from .identity_service import IdentityService
    from .metrics import Metrics
    from .node_registry import NodeRegistry
    from .recording import RecordingService

CONFIG: web.AppKey[Config] = web.AppKey("config")
DB: web.AppKey[Database] = web.AppKey("db")
HUB: web.AppKey[MediaHub] = web.AppKey("hub")
BROKER: web.AppKey[Broker] = web.AppKey("broker")
#: dual recording (absent when recording is switched off)
RECORDINGS: web.AppKey[RecordingService] = web.AppKey("recordings")
#: face checks (absent when switched off)
IDENTITY: web.AppKey[IdentityService] = web.AppKey("identity")
#: business flows (absent when the flows directory is missing)
FLOWS: web.AppKey[FlowService] = web.AppKey("flows")
#: appointments the bank's systems book (server/appointments.py)
APPOINTMENTS: web.AppKey[AppointmentService] = web.AppKey("appointments")
#: the recording master key and the manifest/receipt signing key (absent with recording and
#: face checks both off)
KEYS: web.AppKey[tuple[MasterKey, SigningKey]] = web.AppKey("keys")
#: the bus to the counter's other nodes (absent on a single node: no Redis configured)
CLUSTER: web.AppKey[Cluster] = web.AppKey("cluster")
#: this node's Prometheus metrics
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
#: this node's lease in the node registry
NODES: web.AppKey[NodeRegistry] = web.AppKey("nodes")
THROTTLE: web.AppKey[LoginThrottle] = web.AppKey("login_throttle")
#: event-loop lag for /healthz
LOOP_LAG: web.AppKey[LoopLagMonitor] = web.AppKey("loop_lag")
#: open WebSocket channels, closed at shutdown
CHANNELS: web.AppKey[weakref.WeakSet[Any]] = web.AppKey("channels")
#: last time each (user, recording, party) replay was logged: players issue many range requests
REPLAYS: web.AppKey[dict[tuple[int, str, str], float]] = web.AppKey("replays")
