"""Server configuration: one frozen dataclass, filled from CLI flags and ``VCOUNTER_*`` variables."""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from identity.decision import ACCEPT_THRESHOLD, REJECT_THRESHOLD
from signaling.media_hub import IceServerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_node_id() -> str:
    """``<host>-<pid>-<random>``: unique per process, so two processes on one host never share one
    (a restarted node's sessions are closed by the node registry, whatever its id)."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


@dataclass(frozen=True)
class Config:
    #: address to listen on
    host: str = "0.0.0.0"
    #: port to listen on (HTTPS by default)
    port: int = 8443
    #: directory for the SQLite database, the TLS files and, with local storage, the recordings
    data_dir: Path = Path("var")
    #: serve HTTPS with ``cert_file``/``key_file`` (generated self-signed when missing)
    tls: bool = True
    cert_file: Path | None = None
    key_file: Path | None = None
    #: SQLAlchemy URL; default ``sqlite:///<data_dir>/vcounter.db`` (env ``DATABASE_URL``)
    database_url: str | None = field(default=None, repr=False)
    #: Redis shared by the counter's nodes (``redis://[:password@]host:port/db``): the queue, agent
    #: presence and the messages between nodes; unset, this node is the whole counter (in memory)
    redis_url: str | None = field(default=None, repr=False)
    #: prefix of every Redis key (several counters may share one Redis)
    redis_prefix: str = "vcounter:"
    #: the balancer's addresses or networks (comma-separated), whose ``X-Forwarded-For`` and
    #: ``X-Forwarded-Proto`` are believed: the client's address and scheme (``server/proxies.py``)
    trusted_proxies: tuple[str, ...] = ()
    #: other origins (``https://app.example-bank.cn``, comma-separated) whose pages may open the
    #: WebSockets and send state-changing requests; the counter's own origin always may, and
    #: clients that send no ``Origin`` (the CLI, scripts) are not browsers' pages
    #: (``server/origin.py``)
    allowed_origins: tuple[str, ...] = ()
    #: the base URL the other nodes reach this node's HTTP at (requests about its sessions are
    #: forwarded there); default ``<scheme>://<hostname>:<port>``
    advertise_url: str | None = None
    #: bring the database schema to this release's revision at start (under a lock several
    #: nodes share); off: a start on an older schema refuses, naming ``vcounter db upgrade``
    db_auto_upgrade: bool = True
    #: this server process's name among the counter's nodes (default: unique per process); a node
    #: refuses to start while a live node holds its id
    node_id: str = field(default_factory=_default_node_id)
    #: seconds a node's registration lives without a heartbeat (renewed every third of it); a node
    #: silent for longer is dead and its open sessions are closed by a live node
    node_lease_s: float = 15.0
    #: seconds a node draining after SIGTERM waits for its sessions to end before it stops
    drain_timeout_s: float = 300.0
    #: ``passthrough`` (forward encoded packets) or ``transcode`` (benchmark comparison only)
    media_mode: str = "passthrough"
    #: ICE servers given to browsers and used by the hub; JSON list of {urls, username, credential}
    ice_servers: tuple[IceServerConfig, ...] = ()
    #: networks (comma-separated, ``10.0.0.0/8``) the media hub may send ICE checks to besides
    #: public unicast addresses, for a counter whose browsers are on its own LAN; a client's other
    #: loopback, link-local, private, multicast and unspecified candidates are dropped unprobed
    #: (the hub still answers the checks such a browser sends it)
    ice_peer_networks: tuple[str, ...] = ()
    #: remote ICE candidates of one offer the hub checks at most (the rest are dropped)
    ice_max_candidates: int = 16
    #: seconds a dropped customer may take to come back, and a party's lost media to come back
    rejoin_window_s: float = 30.0
    #: seconds without a media frame from a connected party before the server asks it to
    #: reconnect its media and tells the other party (0: only a failed peer connection counts)
    media_timeout_s: float = 8.0
    #: seconds an agent has to accept an offered customer
    offer_timeout_s: float = 20.0
    #: seconds after an agent declined a customer before it is offered that customer again, when
    #: nobody else took them meanwhile (other ready agents are offered the customer first)
    offer_cooldown_s: float = 20.0
    #: seconds of waiting after which a customer is flagged to the agents, and may leave a
    #: call-back request instead of waiting
    long_wait_s: float = 180.0
    #: seconds of wrap-up after a call (disposition and notes; the agent is away meanwhile)
    #: before the workbench sets the agent ready again on its own
    wrap_up_seconds: float = 30.0
    #: customers one network address (an IPv6 /64) may have waiting or in a call at once, counted
    #: on every node, the recently dropped ones (rejoin window) included; 0: no cap
    customers_per_address: int = 5
    #: seconds a customer socket has to send ``join`` or ``rejoin`` before it is closed
    customer_join_timeout_s: float = 30.0
    #: seconds a customer in a call may go without a connected media connection (no offer sent,
    #: or its ICE never connects) while the agent is there; then the call ends (0: no limit)
    customer_media_start_s: float = 60.0
    #: lifetime of a login token
    login_ttl_s: int = 12 * 3600
    #: directory of the static web client
    web_root: Path = REPO_ROOT / "web_client"
    #: seed demo accounts (random passwords, printed at start)
    demo: bool = False
    #: record calls (dual recording); off only for media benchmarks
    recording: bool = True
    #: the master key wrapping every recording's data key: keep it OUTSIDE the data directory
    #: (created on first start for development; provision and back it up in production); a
    #: relative path is taken from the directory holding the data directory (:attr:`master_key_path`)
    master_key_file: Path = Path("keys/master.key")
    #: the server's Ed25519 key signing recording manifests and receipts (relative: like the
    #: master key's, :attr:`signing_key_path`); ``vcounter verify`` trusts its public half
    signing_key_file: Path = Path("keys/signing.pem")
    #: seconds of media per sealed segment: what a crash can lose at most
    segment_seconds: float = 2.0
    #: where recordings and identity evidence live: ``file:`` (the data directory, one node) or
    #: ``s3://BUCKET/PREFIX`` (an S3-compatible store every node reaches; written through a local
    #: spool in the data directory, uploaded as segments seal); credentials and region are boto3's
    #: own ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``
    storage_url: str = "file:"
    #: the S3 API endpoint of a store that is not AWS (MinIO, Ceph RGW: ``https://s3.bank.example``)
    s3_endpoint_url: str | None = None
    #: retention per business type in days (JSON object in VCOUNTER_RETENTION_DAYS);
    #: defaults are conservative: adjust to the bank's policy and the product's term
    retention_days: tuple[tuple[str, int], ...] = (
        ("account_opening", 5 * 365),
        ("loan_signing", 10 * 365),
        ("wealth_product", 20 * 365),
    )
    #: face verification, liveness and presence checks
    identity: bool = True
    #: face worker processes; 0 = one per core but one (at least 1)
    identity_workers: int = 0
    #: a verification (the mean embedding of several live frames against the reference) is a
    #: match at or below this distance, "no match" above the reject threshold and inconclusive
    #: between them (chosen with bench/identity_eval.py: see docs/identity.md)
    identity_threshold: float = ACCEPT_THRESHOLD
    identity_reject_threshold: float = REJECT_THRESHOLD
    #: actions a liveness challenge draws from, asked in a random order (comma list)
    liveness_steps: str = "blink,turn_left,turn_right"
    #: seconds the customer has for each liveness action
    liveness_step_seconds: float = 8.0
    #: seconds between presence checks of each party's video during a call
    presence_interval_s: float = 0.5
    #: seconds without a face before "face missing" is raised
    presence_missing_s: float = 3.0
    #: days after a session ended before the identity evidence of a session that never got a
    #: recording (say, an ID photo uploaded and the queue abandoned) is deleted; evidence of a
    #: recorded session is deleted with its last recording
    identity_orphan_days: int = 1
    #: ID-photo uploads a customer's session may send within ``identity_upload_window_s``
    identity_uploads_per_session: int = 6
    #: ID-photo uploads one network address (an IPv6 /64) may send within the window, any session
    identity_uploads_per_address: int = 30
    #: seconds the upload counts run over (every node counts in the shared state)
    identity_upload_window_s: float = 600.0

    #: directory of the business flow files (one YAML per business, see docs/flows.md)
    flows_dir: Path = REPO_ROOT / "flows"
    #: class of the accounts opened remotely (银发〔2015〕392号: II or III without on-site checks)
    account_class: str = "II"

    @property
    def recordings_dir(self) -> Path:
        return Path(self.data_dir) / "recordings"

    @property
    def identity_dir(self) -> Path:
        """The encrypted identity evidence (reference photos, embeddings, snapshots) per session."""
        return Path(self.data_dir) / "identity"

    @property
    def master_key_path(self) -> Path:
        """:attr:`master_key_file`, a relative one resolved beside the data directory."""
        return self.key_path(self.master_key_file)

    @property
    def signing_key_path(self) -> Path:
        """:attr:`signing_key_file`, a relative one resolved beside the data directory."""
        return self.key_path(self.signing_key_file)

    def key_path(self, path: Path | str) -> Path:
        """A key file's absolute path: as given when absolute; a relative one is taken from the
        directory holding the data directory (``keys/`` beside ``var/``, as ``make run`` lays
        them out), never from whichever directory a command happens to run in."""
        path = Path(path)
        if path.is_absolute():
            return path
        return Path(self.data_dir).absolute().parent / path

    def retention_for(self, business: str) -> int:
        return dict(self.retention_days).get(business, 20 * 365)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir).resolve() / 'vcounter.db'}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def node_url(self) -> str:
        """Where the other nodes reach this one (:attr:`advertise_url` or one made from the host name)."""
        return self.advertise_url or f"{self.scheme}://{socket.gethostname()}:{self.port}"


def _parse_ice(value: str) -> tuple[IceServerConfig, ...]:
    items = json.loads(value) if value.strip() else []
    servers = []
    for item in items:
        urls = item["urls"] if isinstance(item["urls"], list) else [item["urls"]]
        servers.append(
            IceServerConfig(
                urls=urls, username=item.get("username"), credential=item.get("credential")
            )
        )
    return tuple(servers)


def from_env(base: Config | None = None, environ: dict[str, str] | None = None) -> Config:
    """Apply ``VCOUNTER_<FIELD>`` environment variables (and ``DATABASE_URL``) to ``base``."""
    env = os.environ if environ is None else environ
    config = base or Config()
    changes: dict[str, Any] = {}
    for f in fields(Config):
        raw = env.get(f"VCOUNTER_{f.name.upper()}")
        if raw is None:
            continue
        if f.name == "ice_servers":
            changes[f.name] = _parse_ice(raw)
        elif f.name in ("trusted_proxies", "allowed_origins", "ice_peer_networks"):
            changes[f.name] = tuple(v.strip() for v in raw.split(",") if v.strip())
        elif f.name == "retention_days":
            merged = dict(config.retention_days) | {k: int(v) for k, v in json.loads(raw).items()}
            changes[f.name] = tuple(sorted(merged.items()))
        elif f.type in ("bool",):
            changes[f.name] = raw.lower() in ("1", "true", "yes", "on")
        elif f.type in ("int",):
            changes[f.name] = int(raw)
        elif f.type in ("float",):
            changes[f.name] = float(raw)
        elif "Path" in str(f.type):
            changes[f.name] = Path(raw)
        else:
            changes[f.name] = raw
    if "DATABASE_URL" in env and "database_url" not in changes:
        changes["database_url"] = env["DATABASE_URL"]
    return replace(config, **changes)


def ensure_data_dir(config: Config) -> Path:
    """Create the data directory private (0700); warn if an existing one is open to others.

    It holds the database (customer names and business data), the TLS key and,
    by default, the recordings: nobody but the service's user should list it.
    An existing directory's mode is the operator's choice, so it is not changed.
    """
    path = config.data_dir
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    elif path.stat().st_mode & 0o077:
        logging.getLogger(__name__).warning(
            "data directory %s is accessible by group or others (chmod 700 it): it holds the "
            "database and keys",
            path,
        )
    return path
