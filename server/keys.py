"""Typed application state keys (``app[KEY]``), so handlers never use module globals."""

from __future__ import annotations

import weakref
from typing import Any

from aiohttp import web

from signaling.broker import Broker
from signaling.media_hub import MediaHub

from .appointments import AppointmentService
from .auth import LoginThrottle
from .config import Config
from .db import Database
from .flow_engine import FlowService
from .identity_service import IdentityService
from .recording import RecordingService

CONFIG = web.AppKey("config", Config)
DB = web.AppKey("db", Database)
HUB = web.AppKey("hub", MediaHub)
BROKER = web.AppKey("broker", Broker)
RECORDINGS = web.AppKey("recordings", RecordingService)
#: face checks (absent when switched off)
IDENTITY = web.AppKey("identity", IdentityService)
#: business flows (absent when the flows directory is missing)
FLOWS = web.AppKey("flows", FlowService)
#: appointments the bank's systems book (server/appointments.py)
APPOINTMENTS = web.AppKey("appointments", AppointmentService)
THROTTLE = web.AppKey("login_throttle", LoginThrottle)
#: open WebSocket channels, closed at shutdown
CHANNELS = web.AppKey("channels", weakref.WeakSet[Any])
#: last time each (user, recording, party) replay was logged: players issue many range requests
REPLAYS = web.AppKey("replays", dict[tuple[int, str, str], float])
