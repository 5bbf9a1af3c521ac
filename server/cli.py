"""The ``vcounter`` command line: serve, manage users, recordings, identity checks."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import secrets
import ssl
import sys
from dataclasses import replace
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import OperationalError

from . import auth, migrations
from .config import Config, ensure_data_dir, from_env
from .db import ROLES, Database, get_user
from .exceptions import ServerError
from .migrations import PREVIOUS_RELEASE_REVISION, SchemaError

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger("vcounter")

#: a recording's id, ``<session id>-<leg>`` (its directory's name), as the audit API takes it
RECORDING_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}-\d{1,3}$")

DEMO_ACCOUNTS = [
    # username, role, display name, skills
    ("agent1", "agent", "Agent Li 李柜员", ["account_opening", "loan_signing", "wealth_product"]),
    ("agent2", "agent", "Agent Wang 王柜员", ["account_opening"]),
    ("auditor1", "auditor", "Auditor Zhao 赵质检", []),
    ("admin", "admin", "Administrator 管理员", []),
]


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiortc/aioice are chatty at INFO about every transport
    for name in ("aioice", "aiortc"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _base_config(args: argparse.Namespace) -> Config:
    config = from_env()
    if getattr(args, "data_dir", None):
        config = replace(config, data_dir=Path(args.data_dir))
    return config


def _seed_demo(db: Database, data_dir: Path) -> list[tuple[str, str, str]]:
    """Create the demo accounts once; their random passwords live in data_dir (mode 600)."""
    path = data_dir / "demo-accounts.txt"
    stored: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line:
                name, _, pw = line.partition("=")
                stored[name] = pw
    created = []
    with db.session() as s:
        for username, role, display, skills in DEMO_ACCOUNTS:
            password = stored.get(username)
            if get_user(s, username) is None:
                password = secrets.token_urlsafe(9)
                auth.add_user(
                    s,
                    role=role,
                    username=username,
                    password=password,
                    skills=skills,
                    display_name=display,
                )
                stored[username] = password
            created.append((username, role, stored.get(username, "(set elsewhere)")))
        s.commit()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in stored.items()))
    return created


def cmd_serve(args: argparse.Namespace) -> int:

    from .app import create_app

    config = _base_config(args)
    changes: dict[str, Any] = {}
    if args.host:
        changes["host"] = args.host
    if args.port:
        changes["port"] = args.port
    if args.no_tls:
        changes["tls"] = False
    if args.media_mode:
        changes["media_mode"] = args.media_mode
    if args.demo:
        changes["demo"] = True
    if args.no_recording:
        changes["recording"] = False
    if args.no_identity:
        changes["identity"] = False
    if args.cert:
        changes["cert_file"] = Path(args.cert)
    if args.key:
        changes["key_file"] = Path(args.key)
    config = replace(config, **changes)
    _configure_logging(args.verbose)
    ensure_data_dir(config)

    try:
        db = _ready_db(config)
    except SchemaError as exc:
        print(f"vcounter: the server did not start: {exc}", file=sys.stderr)
        return 1
    accounts = _seed_demo(db, config.data_dir) if config.demo else []
    db.close()

    ssl_context = None
    if config.tls:
        cert, key = config.cert_file, config.key_file
        if cert is None or key is None:
            from certs.devcert import ensure_dev_certificate

            cert, key = ensure_dev_certificate(config.data_dir / "tls")
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(cert, key)

    host_for_url = "localhost" if config.host in ("0.0.0.0", "::") else config.host
    base = f"{config.scheme}://{host_for_url}:{config.port}"
    print(f"vcounter serving on {base} (data: {config.data_dir.resolve()})")
    print(f"  customer page: {base}/")
    print(f"  agent page:    {base}/agent")
    if config.recording:
        print(f"  auditor page:  {base}/audit")
    if accounts:
        print("  demo accounts (passwords stored in data-dir/demo-accounts.txt):")
        for username, role, password in accounts:
            print(f"    {role:8} {username:10} {password}")
    if config.tls and config.cert_file is None:
        print("  TLS: self-signed development certificate; your browser will ask to accept it.")
    sys.stdout.flush()
    return _run_app(create_app(config), config.host, config.port, ssl_context)


def _run_app(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None) -> int:
    """Serve ``app`` like ``aiohttp.web.run_app``, except that

    - a start that fails part-way tears down the resources that had started (``run_app`` skips
      the cleanup when start-up raises) and ends with one clear line and exit status 1;
    - SIGTERM drains: the node takes no new sessions and stops once the ones it holds are over
      (or after ``drain_timeout_s``); SIGINT, or a second SIGTERM, stops at once.
    """
    import signal

    from aiohttp import web
    from aiohttp.web_runner import GracefulExit

    from .appkeys import BROKER, CONFIG, NODES

    started = False

    async def drain_then(stop: asyncio.Event) -> None:
        config, broker = app[CONFIG], app[BROKER]
        await app[NODES].drain()
        logger.warning(
            "SIGTERM: draining (no new sessions); stopping when the %d open session(s) "
            "are over, at most %.0f s",
            len(broker.sessions),
            config.drain_timeout_s,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + config.drain_timeout_s
        while broker.sessions and loop.time() < deadline:
            await asyncio.sleep(0.5)
        stop.set()

    async def serve() -> None:
        nonlocal started
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5, handle_signals=False)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        draining: list[asyncio.Task[None]] = []

        def on_term() -> None:
            if draining:
                stop.set()
            else:
                draining.append(loop.create_task(drain_then(stop), name="drain"))

        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            await runner.setup()
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
            started = True
            await stop.wait()
        finally:
            for task in draining:
                task.cancel()
            await asyncio.gather(*draining, return_exceptions=True)
            await runner.cleanup()

    try:
        asyncio.run(serve())
    except (GracefulExit, KeyboardInterrupt):
        pass
    except Exception as exc:
        if started:
            raise
        logging.getLogger(__name__).debug("start-up failed", exc_info=True)
        print(f"vcounter: the server did not start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    config = _base_config(args)
    ensure_data_dir(config)
    try:
        db = _ready_db(config)
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    skills = [s.strip() for s in (args.skills or "").split(",") if s.strip()]
    password = args.password
    if password == "-":
        password = sys.stdin.readline().rstrip("\n")
    try:
        with db.session() as s:
            user = auth.add_user(
                s,
                role=args.role,
                username=args.username,
                password=password,
                skills=skills,
                display_name=args.display_name,
            )
            s.commit()
            print(
                f"created {user.role} {user.username}"
                + (f" skills={user.skills}" if user.skills else "")
            )
    except ServerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        db.close()
    return 0


def _ready_db(config: Config) -> Database:
    """The database, its schema brought to this release's revision (``db_auto_upgrade``) or
    checked to be there; :class:`SchemaError` when it is not and cannot be, or when the database
    cannot be reached."""
    db = Database(config.db_url)
    try:
        migrations.ensure_schema(db, upgrade_it=config.db_auto_upgrade)
    except OperationalError as exc:
        db.close()
        reason = (
            str(exc.orig).strip().splitlines()[0]
            if exc.orig is not None
            else exc.__class__.__name__
        )
        raise SchemaError(f"the database {db.display_url} cannot be reached: {reason}") from None
    except BaseException:
        db.close()
        raise
    return db


def _open_db(args: argparse.Namespace) -> tuple[Config, Database]:
    config = _base_config(args)
    try:
        return config, _ready_db(config)
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Bring the schema to this release's head revision (under the lock nodes share)."""
    config = _base_config(args)
    ensure_data_dir(config)
    db = Database(config.db_url)
    try:
        change = migrations.upgrade(db.url)
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    print(f"database {db.display_url}")
    if change.adopted:
        print(
            f"  made by a release before migrations: recorded at revision {PREVIOUS_RELEASE_REVISION}"
        )
    if change.changed:
        print(f"  upgraded from {change.before or 'none'} to {change.after} (head)")
    else:
        print(f"  already at {change.after} (head)")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    """Print the schema's revision and whether it is the head: exit 0 at the head, 1 if not."""
    config = _base_config(args)
    db = Database(config.db_url)
    try:
        status = migrations.schema_status(db.url)
    except SchemaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        db.close()
    if status.is_head:
        print(f"{status.current} (head)")
        return 0
    print(f"{status.current or 'none'} (not the head, {status.head})")
    print(status.describe(), file=sys.stderr)
    return 1


def cmd_db_revision(args: argparse.Namespace) -> int:
    """Write a new revision: what the models differ from the head schema (autogenerate)."""
    from .migrations import new_revision

    path = new_revision(args.message)
    print(
        f"wrote {path}: read it, complete it (data, triggers of new append-only tables), "
        "then test it with `vcounter db upgrade` on a copy of a real database"
    )
    return 0


def _keys(config: Config):  # type: ignore[no-untyped-def]
    from recorder import MasterKey, SigningKey

    master_path, signing_path = config.master_key_path, config.signing_key_path
    master = MasterKey.load(master_path) if master_path.exists() else None
    signing = SigningKey.load(signing_path) if signing_path.exists() else None
    return master, signing


class _CheckError(Exception):
    """A check that cannot be made (no trusted key, no database): exit 2 with this message."""


def _trusted_keys(config: Config, public_keys: list[str] | None) -> list[tuple[bytes, str]]:
    """The keys evidence must be signed by, each with where the trust comes from: every
    ``--public-key``, and the server's signing key (``config.signing_key_path``, resolved beside the
    data directory; read only, never created). Never a key found beside the evidence: without any,
    :class:`_CheckError` says what to give."""
    from cryptography.exceptions import UnsupportedAlgorithm

    from recorder.exceptions import RecorderError
    from recorder.keys import SigningKey, fingerprint

    trusted: list[tuple[bytes, str]] = []
    for key_path in public_keys or []:
        try:
            pem = Path(key_path).read_bytes()
            fingerprint(pem)
        except OSError as exc:
            raise _CheckError(
                f"cannot read --public-key {key_path}: {exc.strerror or exc}"
            ) from None
        except (RecorderError, ValueError, UnsupportedAlgorithm):
            raise _CheckError(
                f"--public-key {key_path} is not an Ed25519 public key (PEM)"
            ) from None
        trusted.append((pem, f"--public-key {key_path}"))
    key_file = config.signing_key_path
    if key_file.is_file():
        try:
            pem = SigningKey.load(key_file).public_pem()
        except (OSError, RecorderError) as exc:
            print(f"warning: cannot read the server signing key {key_file}: {exc}", file=sys.stderr)
        else:
            trusted.append((pem, f"the server signing key {key_file}"))
    if not trusted:
        raise _CheckError(
            f"no trusted public key: the server signing key {key_file} is not there "
            f"(VCOUNTER_SIGNING_KEY_FILE, a relative path taken beside the data directory "
            f"{Path(config.data_dir).absolute()}); give --data-dir, or --public-key with the "
            "bank's published key (a key stored beside the evidence proves nothing)"
        )
    return trusted


def _key_for(trusted: list[tuple[bytes, str]], manifest_raw: bytes | None) -> bytes:
    """Of the trusted keys, the one the manifest names as its signer (the first when none: its
    check then fails, naming the key that did sign)."""
    import json

    from recorder.keys import fingerprint

    try:
        named = json.loads(manifest_raw or b"null")["signing_key"]["fingerprint"]
    except (ValueError, TypeError, KeyError):
        named = None
    return next((pem for pem, _ in trusted if fingerprint(pem) == named), trusted[0][0])


def _evidence_db(config: Config, *, required: bool) -> Database | None:
    """The database, when there is one at hand: ``DATABASE_URL``, or the SQLite file in the data
    directory (never created here). None, with a warning, when there is none and it is optional;
    :class:`_CheckError` when it is required."""
    sqlite_file = Path(config.data_dir) / "vcounter.db"
    if config.database_url is None and not sqlite_file.is_file():
        where = (
            f"the data directory {config.data_dir} has none"
            if Path(config.data_dir).is_dir()
            else f"the data directory {config.data_dir} does not exist"
        )
        if required:
            raise _CheckError(f"no database at {sqlite_file} ({where}): give --data-dir")
        print(
            f"warning: no database at hand ({where}): not checked against the recorded hashes",
            file=sys.stderr,
        )
        return None
    try:
        return _ready_db(config)
    except SchemaError as exc:
        if required:
            raise _CheckError(str(exc)) from None
        print(f"warning: {exc}: not checked against the recorded hashes", file=sys.stderr)
        return None


def _print_result(name: str, ok: bool, reason: str, problems: list[str], notes: list[str]) -> None:
    print(f"{name}: {'OK' if ok else 'FAILED'}: {reason}")
    for problem in problems:
        print(f"  - {problem}")
    for note in notes:
        print(f"  note: {note}")


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify a session's recordings (by session or recording id, from the configured store), a
    recording directory or an evidence package: each against the trusted key and as the recording
    it is asked for (its ids, and the manifest's hash the database recorded)."""
    config = _base_config(args)
    try:
        return _verify(config, args)
    except _CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _verify(config: Config, args: argparse.Namespace) -> int:
    from sqlmodel import col, select

    from recorder import MasterKey, Storage, verify
    from recorder.exceptions import RecorderError

    from .db import Recording
    from .recording import object_store

    trusted = _trusted_keys(config, args.public_key)
    master_file = config.master_key_path
    master = None
    if master_file.is_file():
        try:
            master = MasterKey.load(master_file)
        except (OSError, RecorderError) as exc:
            print(f"warning: cannot read the master key {master_file}: {exc}", file=sys.stderr)
    target = args.target
    if target.endswith(".zip") and Path(target).is_file():
        return _verify_package(config, Path(target), trusted, master)
    is_dir = Path(target).is_dir()
    db = _evidence_db(config, required=not is_dir)
    rows: list[Recording] = []
    if db is not None:
        with db.session() as s:
            lookup = Path(target).resolve().name if is_dir else target
            rows = list(
                s.exec(
                    select(Recording)
                    .where((Recording.session_id == lookup) | (Recording.id == lookup))
                    .order_by(col(Recording.leg))
                ).all()
            )
        db.close()
    store = None
    #: (name, where, the row it must be, the recording id it must be, notes)
    checks: list[tuple[str, Storage | Path, Recording | None, str | None, list[str]]] = []
    if is_dir:
        name = Path(target).resolve().name
        row = next((r for r in rows if r.id == name), None)
        notes = []
        bound = name if row is not None or RECORDING_ID.match(name) else None
        if bound is None:
            notes.append(f"the directory's name {name!r} is not a recording id: not bound to one")
        elif row is None and db is not None:
            notes.append(f"the database has no recording {name}: not checked against it")
        checks = [(Path(target).name, Path(target), row, bound, notes)]
    elif rows:
        # wherever the recordings are (the data directory, or S3 from any host)
        store = object_store(config, uploads=False)
        checks = [(r.id, store.recording(r.id), r, r.id, []) for r in rows]
    if not checks:
        print(
            f"error: no recording for {target!r} (a session id, recording id or directory)",
            file=sys.stderr,
        )
        return 2
    if master is None:
        print(
            f"warning: no master key ({master_file}): decryptability not checked", file=sys.stderr
        )
    failed = 0
    for name, source, row, recording_id, notes in checks:
        try:
            result = verify(
                source,
                master,
                _key_for(trusted, _manifest_bytes(source)),
                recording_id=recording_id,
                session_id=row.session_id if row else None,
                manifest_sha256=row.manifest_sha256 if row else None,
            )
        except (RecorderError, OSError) as exc:  # the store cannot be reached
            print(f"{name}: not checked: {exc}")
            failed += 1
            continue
        if result.ok and recording_id is None:
            notes.append(f"it is recording {result.session_id} of session {result.call_session_id}")
        if result.ok and row is not None and row.manifest_sha256 is None:
            notes.append("the database holds no manifest hash for it to be checked against")
        _print_result(name, result.ok, result.reason, result.problems, [*result.notes, *notes])
        failed += not result.ok
    if store is not None:
        store.close()
    return 1 if failed else 0


def _manifest_bytes(source: Any) -> bytes | None:
    """A recording's stored manifest (a directory or a store's recording), None when it has none."""
    from recorder.layout import MANIFEST
    from recorder.storage import as_storage, read_all

    try:
        return read_all(as_storage(source), MANIFEST)
    except FileNotFoundError:
        return None


def _verify_package(
    config: Config, package: Path, trusted: list[tuple[bytes, str]], master: Any
) -> int:
    """An evidence package: its contents as :func:`recorder.export.verify_package` checks them, and,
    with a database at hand, its manifest against the one recorded for that recording."""
    import hashlib
    import json
    import zipfile

    from recorder.export import verify_package
    from recorder.verify import binding_problems

    from .db import Recording

    try:
        with zipfile.ZipFile(package) as z:
            raw: bytes | None = z.read("manifest.json")
    except (zipfile.BadZipFile, KeyError, OSError):
        raw = None
    result = verify_package(package, _key_for(trusted, raw), master)
    problems, notes = list(result.problems), list(result.notes)
    if result.ok and raw is not None:
        manifest = json.loads(raw)
        recording_id = str(manifest.get("session_id"))
        db = _evidence_db(config, required=False)
        row = None
        if db is not None:
            with db.session() as s:
                row = s.get(Recording, recording_id)
            db.close()
            if row is None:
                notes.append(
                    f"the database has no recording {recording_id}: not checked against it"
                )
        if row is not None:
            problems = binding_problems(
                manifest,
                raw,
                recording_id=row.id,
                session_id=row.session_id,
                manifest_sha256=row.manifest_sha256,
            )
        notes.append(
            f"it is recording {recording_id} of session {result.call_session_id} "
            f"(manifest sha256 {hashlib.sha256(raw).hexdigest()[:16]})"
        )
    ok = result.ok and not problems
    reason = result.reason if ok or not problems else problems[0]
    _print_result(package.name, ok, reason, problems, notes)
    return 0 if ok else 1


def cmd_verify_log(args: argparse.Namespace) -> int:
    """Check the access log: its chain, its seals (signed by the trusted key) and that no sealed
    entry is gone. Without a trusted key the seals' signatures go unchecked, with a warning."""
    from . import access_log

    config = _base_config(args)
    try:
        try:
            trusted: list[bytes] | None = [pem for pem, _ in _trusted_keys(config, args.public_key)]
        except _CheckError as exc:
            if args.public_key:
                raise
            print(f"warning: seal signatures not checked: {exc}", file=sys.stderr)
            trusted = None
        db = _evidence_db(config, required=True)
    except _CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    assert db is not None
    try:
        with db.session() as s:
            check = access_log.verify(s, trusted)
    finally:
        db.close()
    print(("OK: " if check.ok else "FAILED: ") + check.reason)
    for problem in check.problems[1:]:
        print(f"  - {problem}")
    if check.ok and check.sealed_at is not None:
        print(f"  latest seal: entry {check.sealed_seq}, {check.sealed_at.isoformat()}")
    for note in check.notes:
        if trusted is not None or "signatures" not in note:
            print(f"warning: {note}", file=sys.stderr)
    return 0 if check.ok else 1


def cmd_verify_receipt(args: argparse.Namespace) -> int:
    """Check a sealed signature receipt: exit 0 valid, 1 invalid (reason on stderr), 2 unreadable
    or uncheckable (no trusted key)."""
    import hashlib

    from recorder.keys import fingerprint
    from recorder.receipt import redacted, verify_receipt

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    config = _base_config(args)
    try:
        keys = _trusted_keys(config, args.public_key)
    except _CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sources: dict[str, str] = {}  # fingerprint -> where the trust comes from
    for pem, source in keys:
        sources.setdefault(fingerprint(pem), source)
    check = verify_receipt(
        data, trusted_public_keys=[pem for pem, _ in keys], session_id=args.session
    )
    reason, code, recorded = check.reason, check.code, None
    if check.ok and check.payload is not None:
        # what the counter recorded when it sealed it, with its database at hand
        try:
            recorded = _recorded_receipt(config, check.payload, hashlib.sha256(data).hexdigest())
        except _CheckError as exc:
            reason, code = str(exc), "not_recorded"
    ok = check.ok and code is None
    if args.json:
        _print_json(
            {
                "ok": ok,
                "trusted": check.trusted,
                "code": code,
                "reason": reason,
                "fingerprint": check.fingerprint,
                "trusted_keys": sorted(sources),
                "recorded": recorded,
                "payload": redacted(check.payload) if check.payload else None,
            }
        )
    if code == "not_a_receipt":
        print(f"error: {path}: {reason}", file=sys.stderr)
        return 2
    if not ok:
        print(f"FAILED: {path}: {reason}", file=sys.stderr)
        return 1
    assert check.payload is not None and check.fingerprint is not None
    if not args.json:

        def show(value: object) -> str:  # no terminal control characters from a (forged) file
            return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))

        p = check.payload
        ident = p["identity"]
        details = [
            f"{k} {ident[k]:g}"
            for k in ("score", "distance", "threshold")
            if isinstance(ident.get(k), int | float)
        ]
        if ident.get("liveness") is not None:
            details.append("liveness " + ("passed" if ident["liveness"] else "failed"))
        details += [f"{k} {show(ident[k])}" for k in ("by", "reason") if ident.get(k)]
        face = p["face_snapshot"]
        print(f"OK: receipt {p['receipt_id']} is intact and signed by a trusted key")
        print(
            f"  session:   {show(p['session_id'])} (flow {show(p['flow']['business'])} "
            f"v{show(p['flow']['version'])}, step {show(p['step_id'])})"
        )
        print(
            f'  document:  {show(p["document"]["id"])} "{show(p["document"]["title"])}" '
            f"sha256 {p['document']['sha256']}"
        )
        print(f"  signed at: {p['signed_at']} (sealed {p['sealed_at']})")
        print(
            f"  identity:  {ident['method']}: {'verified' if ident['verified'] else 'NOT verified'}"
            + (f" ({', '.join(details)})" if details else "")
        )
        print(
            f"  face:      {'snapshot sha256 ' + face['sha256'] if face else 'no snapshot (no video)'}"
        )
        print(f"  signature: image sha256 {p['signature_image']['sha256']}")
        print(f"  signer:    {check.fingerprint} (trusted: {sources[check.fingerprint]})")
        print(
            "  recorded:  "
            + (
                f"sealed in session {show(p['session_id'])}'s timeline at {recorded}"
                if recorded
                else "not checked (no database at hand)"
            )
        )
    return 0


def _recorded_receipt(config: Config, payload: dict[str, Any], sha256: str) -> str | None:
    """When the counter's timeline sealed this very receipt (its ``signature_sealed`` event with
    the receipt's id and SHA-256); None with no database at hand. :class:`_CheckError` when the
    database has no such record: not a receipt this counter sealed, whatever key signed it."""
    import json

    from sqlmodel import col, select

    from .db import CallSession, SessionEvent

    db = _evidence_db(config, required=False)
    if db is None:
        return None
    session_id, receipt_id = payload["session_id"], payload["receipt_id"]
    try:
        with db.session() as s:
            if s.get(CallSession, session_id) is None:
                raise _CheckError(f"session {session_id!r} is not in this counter's database")
            events = s.exec(
                select(SessionEvent)
                .where(
                    SessionEvent.session_id == session_id,
                    SessionEvent.kind == "signature_sealed",
                )
                .order_by(col(SessionEvent.id))
            ).all()
    finally:
        db.close()
    for event in events:
        data = json.loads(event.data)
        if data.get("receipt_id") != receipt_id:
            continue
        if data.get("receipt_sha256") != sha256:
            raise _CheckError(
                f"not the receipt {receipt_id} session {session_id!r} sealed: its SHA-256 "
                f"{sha256[:16]} is not the recorded {str(data.get('receipt_sha256'))[:16]}"
            )
        at = event.at if event.at.tzinfo else event.at.replace(tzinfo=UTC)
        return at.isoformat(timespec="seconds")
    raise _CheckError(
        f"session {session_id!r} never sealed a receipt {receipt_id}: "
        "not a receipt this counter made, whatever key signed it"
    )


def cmd_drain(args: argparse.Namespace) -> int:
    """Mark a node draining (no new sessions; the ones it holds go on), or ``--undo`` it."""
    from .node_registry import set_draining

    _, db = _open_db(args)
    try:
        with db.session() as s:
            found = set_draining(s, args.node, not args.undo)
            s.commit()
    finally:
        db.close()
    if not found:
        print(
            f"error: no node {args.node!r} in the registry (vcounter nodes lists them)",
            file=sys.stderr,
        )
        return 2
    print(
        f"node {args.node}: {'taking new sessions again' if args.undo else 'draining'} "
        "(from its next heartbeat)"
    )
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    """The counter's nodes from the registry: id, host, liveness, load. Exit 1 when none is alive."""
    import json

    from .node_registry import list_nodes

    config, db = _open_db(args)
    try:
        with db.session() as s:
            nodes = list_nodes(s, config.node_lease_s)
    finally:
        db.close()
    if args.json:
        print(json.dumps([n.as_json() for n in nodes], ensure_ascii=False, indent=1))
    else:
        print(
            f"{'node':32} {'host':20} {'pid':>7}  {'state':8} {'seen s':>6}  {'calls':>5} {'sessions':>8}"
        )
        for n in nodes:
            state = ("draining" if n.draining else "alive") if n.alive else "dead"
            print(
                f"{n.id:32} {n.host:20} {n.pid:>7}  {state:8} {n.silent_s:>6.0f}  "
                f"{n.load.get('calls', '-'):>5} {n.load.get('sessions', '-'):>8}"
            )
    return 0 if any(n.alive for n in nodes) else 1


def cmd_sessions(args: argparse.Namespace) -> int:
    import json

    from sqlmodel import col, select

    from .db import CallSession, Recording, User

    _, db = _open_db(args)
    out: list[dict[str, Any]] = []
    with db.session() as s:
        query = select(CallSession).order_by(col(CallSession.created_at).desc()).limit(args.limit)
        for row in s.exec(query):
            agent = s.get(User, row.agent_id) if row.agent_id else None
            recordings = s.exec(
                select(Recording).where(Recording.session_id == row.id).order_by(col(Recording.leg))
            ).all()
            duration = (
                (row.ended_at - row.started_at).total_seconds()
                if row.started_at and row.ended_at
                else None
            )
            out.append(
                {
                    "id": row.id,
                    "state": row.state,
                    "end_reason": row.end_reason,
                    "business": row.business,
                    "agent": agent.username if agent else None,
                    "start": (row.started_at or row.created_at).isoformat(),
                    "duration_s": round(duration, 1) if duration is not None else None,
                    "recording": ",".join(f"{r.id}:{r.state}" for r in recordings) or "none",
                }
            )
    db.close()
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=1))
        return 0
    print(
        f"{'session':18} {'state':9} {'business':16} {'agent':10} {'start':20} {'dur s':>6}  recording"
    )
    for r in out:
        dur = "" if r["duration_s"] is None else f"{r['duration_s']:.0f}"
        print(
            f"{r['id']:18} {r['state']:9} {r['business']:16} {r['agent'] or '-':10} "
            f"{r['start'][:19]:20} {dur:>6}  {r['recording']}"
        )
    return 0


def _progress(label: str):  # type: ignore[no-untyped-def]
    def show(done: int, total: int) -> None:
        width = 30
        filled = int(width * done / total) if total else width
        sys.stderr.write(
            f"\r{label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done / 1e6:7.1f}/{total / 1e6:.1f} MB"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _read_passphrase(path: str | None) -> str | None:
    if path is None:
        return None
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return text.strip() or None


def cmd_export(args: argparse.Namespace) -> int:
    from sqlmodel import col, select

    from recorder.evidence import EvidenceStore
    from recorder.exceptions import RecorderError
    from recorder.export import export_package

    from . import access_log, retention
    from .db import Recording
    from .recording import object_store

    config, db = _open_db(args)
    master, signing = _keys(config)
    if master is None:
        print(f"error: master key {config.master_key_path} not found", file=sys.stderr)
        return 2
    with db.session() as s:
        rows = s.exec(
            select(Recording)
            .where((Recording.session_id == args.target) | (Recording.id == args.target))
            .order_by(col(Recording.leg))
        ).all()
    rows = [r for r in rows if r.state in ("finalized", "recovered")]
    if not rows:
        db.close()
        print(f"error: no finished recording for {args.target!r}", file=sys.stderr)
        return 2
    passphrase = _read_passphrase(args.passphrase_file)
    generated = passphrase is None
    if passphrase is None:
        passphrase = secrets.token_urlsafe(18)
    out = Path(args.out)
    actor = retention.SYSTEM_USER.model_copy(
        update={"username": f"cli:{os.environ.get('USER', 'operator')}", "role": "admin"}
    )
    written = []
    # wherever the recordings are (the data directory, or S3 from any host)
    store = object_store(config, uploads=False)
    evidence = EvidenceStore(store.evidence(), master)
    for row in rows:
        target = out if len(rows) == 1 else out.with_name(f"{out.stem}-{row.leg}{out.suffix}")
        try:
            summary = export_package(
                store.recording(row.id),
                target,
                master,
                passphrase,
                exported_by=actor.username,
                progress=_progress(f"export {row.id}"),
                evidence=evidence,
                recording_id=row.id,
            )
        except (RecorderError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            db.close()
            return 1
        with db.session() as s:
            access_log.append(s, actor, "export", row.id)
            if signing is not None:  # an export anchors the log's head at once
                access_log.seal(s, signing, node_id=actor.username, reason="export")
            s.commit()
        written.append(target)
        print(
            f"wrote {target} ({summary['files']} files, {int(str(summary['bytes'])) / 1e6:.1f} MB)"
        )
    db.close()
    if generated:
        print(
            f"passphrase for the recipient (give it separately, it is not stored): {passphrase}",
            file=sys.stderr,
        )
    return 0


def cmd_decrypt_export(args: argparse.Namespace) -> int:
    from recorder.exceptions import RecorderError
    from recorder.export import decrypt_package

    passphrase = _read_passphrase(args.passphrase_file)
    if not passphrase:
        print("error: --passphrase-file is required", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        files = decrypt_package(Path(args.package), out, passphrase)
    except RecorderError as exc:  # wrong passphrase, or a damaged / altered package
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for f in files:
        print(f"wrote {f}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from datetime import datetime

    from recorder.evidence import EvidenceStore
    from recorder.exceptions import RecorderError

    from . import retention
    from .recording import object_store

    config, db = _open_db(args)
    now = datetime.fromisoformat(args.now) if args.now else None
    if now is not None and now.tzinfo is None:
        from datetime import UTC

        now = now.replace(tzinfo=UTC)
    # wherever the recordings are (the data directory, or S3 from any host)
    store = object_store(config, uploads=False)
    evidence = EvidenceStore(store.evidence(), None)  # deleting needs no key
    try:
        with db.session() as s:
            report = retention.purge(
                s,
                store,
                evidence=evidence,
                now=now,
                dry_run=args.dry_run,
                orphan_days=config.identity_orphan_days,
            )
            s.commit()
    except (
        RecorderError,
        OSError,
    ) as exc:  # the store cannot be reached: what was deleted is logged
        print(f"error: purge stopped: {exc}", file=sys.stderr)
        return 1
    finally:
        db.close()
    verb = "would delete" if args.dry_run else "deleted"
    for p in report.recordings:
        print(
            f"{verb} {p.recording_id} (session {p.session_id}, retention ended {p.retention_until.date()})"
        )
    for e in report.evidence:
        print(f"{verb} identity evidence of session {e.session_id} ({e.items} item(s); {e.reason})")
    print(
        f"{len(report.recordings)} recording(s) and the identity evidence of {len(report.evidence)} "
        f"session(s) {verb}; held and unexpired recordings kept"
    )
    return 0


def cmd_hold(args: argparse.Namespace) -> int:
    from . import retention

    _, db = _open_db(args)
    actor = retention.SYSTEM_USER.model_copy(
        update={"username": f"cli:{os.environ.get('USER', 'operator')}"}
    )
    with db.session() as s:
        ids = retention.set_hold(s, args.target, not args.release, actor)
        s.commit()
    db.close()
    if not ids:
        print(f"error: no recording for {args.target!r}", file=sys.stderr)
        return 2
    print(("released " if args.release else "legal hold on ") + ", ".join(ids))
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _print_json(obj: object) -> None:
    import json

    print(json.dumps(obj, ensure_ascii=False), flush=True)


def _internal_error(what: str) -> int:
    """An unexpected exception in an identity check: exit 2 (an error), never 1 (a verdict)."""
    import traceback

    traceback.print_exc()
    print(f"error: {what} failed unexpectedly (traceback above)", file=sys.stderr)
    return 2


def cmd_identity_compare(args: argparse.Namespace) -> int:
    """Same person or not: two images (exit 0 match, 1 no match, 2 error), or a CSV of pairs."""
    if args.pairs is not None and args.images:
        args.usage_error("give two images or --pairs FILE.csv, not both")
    if args.pairs is None and len(args.images) != 2:
        args.usage_error("expected two images IMG_A IMG_B (or --pairs FILE.csv)")
    if args.root is not None and args.pairs is None:
        args.usage_error("--root goes with --pairs")
    kwargs = {} if args.threshold is None else {"threshold": args.threshold}
    if args.pairs is not None:
        return _compare_pairs(Path(args.pairs), Path(args.root) if args.root else None, kwargs)

    from identity.cli import compare_images

    try:
        result = compare_images(*args.images, **kwargs)
    except Exception:
        return _internal_error("compare")
    if args.json:
        _print_json(result)
    if "error" in result:
        which = result["image"]
        path = args.images[0 if which == "a" else 1]
        print(f"error: image {which.upper()} ({path}): {result['message']}", file=sys.stderr)
        return 2
    if not args.json:
        threshold = result["threshold"]
        shown = f"{threshold:.2f}" if round(threshold, 2) == threshold else f"{threshold:g}"
        print(
            f"{'match' if result['match'] else 'no match'} distance={result['distance']:.4f} "
            f"threshold={shown}"
        )
    return 0 if result["match"] else 1


def _compare_pairs(csv_path: Path, root: Path | None, kwargs: dict[str, float]) -> int:
    """One JSON line per pair, each printed as soon as it is judged; 2 when the CSV cannot be read."""
    import csv

    from identity.cli import compare_pairs

    root = csv_path.parent if root is None else root
    if not root.is_dir():
        print(f"error: --root {root} is not a folder", file=sys.stderr)
        return 2
    try:
        for row in compare_pairs(csv_path, root, **kwargs):
            _print_json(row)
    except BrokenPipeError:
        # the reader went away (``| head``): stop quietly, without a second error at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        print(f"error: cannot read pairs file {csv_path}: {exc}", file=sys.stderr)
        return 2
    except Exception:
        return _internal_error("compare --pairs")
    return 0


def cmd_identity_liveness(args: argparse.Namespace) -> int:
    """Judge a video against a challenge: one JSON object; exit 0 passed, 1 failed, 2 error."""
    from identity.cli import liveness_video

    kwargs = {} if args.step_time_limit is None else {"step_time_limit_s": args.step_time_limit}
    try:
        result = liveness_video(args.video, args.challenge, **kwargs)
    except Exception:
        return _internal_error("liveness")
    _print_json(result)
    if "error" in result:
        about = "challenge" if result["error"] == "bad_challenge" else args.video
        print(f"error: {about}: {result['message']}", file=sys.stderr)
        return 2
    return 0 if result["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcounter", description="Open-source bank video counter")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="listen address (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (default 8443)")
    serve.add_argument("--data-dir", help="data directory (default ./var, env VCOUNTER_DATA_DIR)")
    serve.add_argument(
        "--no-tls", action="store_true", help="serve plain HTTP (behind a TLS proxy, tests)"
    )
    serve.add_argument("--cert", help="TLS certificate (PEM); default: self-signed in data-dir/tls")
    serve.add_argument("--key", help="TLS private key (PEM)")
    serve.add_argument(
        "--media-mode",
        choices=["passthrough", "transcode"],
        help="forward encoded media (default) or decode and re-encode (benchmark)",
    )
    serve.add_argument("--demo", action="store_true", help="create demo accounts and print them")
    serve.add_argument(
        "--no-identity",
        action="store_true",
        help="no face verification, liveness or presence checks (no face worker processes)",
    )
    serve.add_argument(
        "--no-recording",
        action="store_true",
        help="do not record calls (media benchmarks only: regulated counters record)",
    )
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="manage users")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create a user")
    add.add_argument(
        "--role",
        required=True,
        choices=list(ROLES),
        help="integration: the bank's own systems (the appointments API), no page access",
    )
    add.add_argument("--username", required=True)
    add.add_argument("--password", required=True, help="the password, or - to read it from stdin")
    add.add_argument(
        "--skills",
        help="agents: comma-separated business types (account_opening,loan_signing,wealth_product)",
    )
    add.add_argument("--display-name")
    add.add_argument("--data-dir")
    add.set_defaults(func=cmd_user_add)

    verify = sub.add_parser(
        "verify", help="check a recording's hash chain, signature and decryptability"
    )
    verify.add_argument(
        "target", help="session id, recording id, recording directory or evidence .zip"
    )
    verify.add_argument(
        "--public-key",
        action="append",
        metavar="PEM",
        help="trust this Ed25519 public key (PEM) besides the server's signing key "
        "(VCOUNTER_SIGNING_KEY_FILE); repeatable. Without any trusted key verify refuses",
    )
    verify.add_argument("--data-dir")
    verify.set_defaults(func=cmd_verify)

    verify_log = sub.add_parser(
        "verify-log",
        help="check the access log: its hash chain, its signed seals, no sealed entry gone",
    )
    verify_log.add_argument(
        "--public-key",
        action="append",
        metavar="PEM",
        help="trust this Ed25519 public key (PEM) for the seals besides the server's signing key",
    )
    verify_log.add_argument("--data-dir")
    verify_log.set_defaults(func=cmd_verify_log)

    receipt = sub.add_parser(
        "verify-receipt",
        help="check a sealed signature receipt: exit 0 valid, 1 invalid, 2 unreadable",
        description="Check that a signature receipt is exactly as the server sealed it and signed by a "
        "trusted key: the server's signing key (VCOUNTER_SIGNING_KEY_FILE, when present) "
        "and every --public-key. Without any trusted key it refuses (exit 2): anyone can "
        "re-sign a receipt with a key of their own. With the counter's database at hand, the "
        "receipt must also be the one its session's timeline recorded sealing.",
    )
    receipt.add_argument("file", help="the receipt (.json)")
    receipt.add_argument(
        "--public-key",
        action="append",
        metavar="PEM",
        help="trust this Ed25519 public key (PEM); repeatable",
    )
    receipt.add_argument(
        "--json",
        action="store_true",
        help="print the check as one JSON object (images by size and sha256 only)",
    )
    receipt.add_argument(
        "--session", metavar="ID", help="the session the receipt must be of (fails otherwise)"
    )
    receipt.add_argument("--data-dir")
    receipt.set_defaults(func=cmd_verify_receipt)

    drain = sub.add_parser("drain", help="stop placing new sessions on a node (its calls go on)")
    drain.add_argument("node", help="the node's id (vcounter nodes)")
    drain.add_argument("--undo", action="store_true", help="let the node take new sessions again")
    drain.add_argument("--data-dir")
    drain.set_defaults(func=cmd_drain)

    nodes = sub.add_parser("nodes", help="list the counter's nodes: liveness and load")
    nodes.add_argument("--json", action="store_true", help="one JSON array")
    nodes.add_argument("--data-dir")
    nodes.set_defaults(func=cmd_nodes)

    sessions = sub.add_parser("sessions", help="list sessions with their recording status")
    sessions.add_argument("--json", action="store_true", help="one JSON array")
    sessions.add_argument("--limit", type=int, default=100)
    sessions.add_argument("--data-dir")
    sessions.set_defaults(func=cmd_sessions)

    export = sub.add_parser(
        "export", help="write an evidence package (ZIP) of a session's recording"
    )
    export.add_argument("target", help="session id or recording id")
    export.add_argument("out", help="output .zip")
    export.add_argument(
        "--passphrase-file",
        help="passphrase wrapping the media key for the recipient "
        "(- for stdin); default: a random one, printed once",
    )
    export.add_argument("--data-dir")
    export.set_defaults(func=cmd_export)

    decrypt = sub.add_parser(
        "decrypt-export", help="decrypt an evidence package's media for playback"
    )
    decrypt.add_argument("package")
    decrypt.add_argument("out_dir")
    decrypt.add_argument("--passphrase-file", required=True)
    decrypt.set_defaults(func=cmd_decrypt_export)

    purge = sub.add_parser(
        "purge", help="delete recordings past their retention date (never held ones)"
    )
    purge.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    purge.add_argument("--now", help="ISO date-time to judge expiry against (default: now)")
    purge.add_argument("--data-dir")
    purge.set_defaults(func=cmd_purge)

    hold = sub.add_parser("hold", help="put a legal hold on a session's or recording's recordings")
    hold.add_argument("target", help="session id or recording id")
    hold.add_argument("--release", action="store_true", help="lift the hold")
    hold.add_argument("--data-dir")
    hold.set_defaults(func=cmd_hold)

    db = sub.add_parser(
        "db",
        help="the database schema: upgrade it, show its revision",
        description="The schema is versioned with Alembic (server/migrations). "
        "`vcounter serve` upgrades it at start unless VCOUNTER_DB_AUTO_UPGRADE=0; "
        "several nodes upgrading at once wait for each other.",
    )
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_upgrade = db_sub.add_parser(
        "upgrade", help="bring the schema to this release's revision (prints from and to)"
    )
    db_upgrade.add_argument("--data-dir")
    db_upgrade.set_defaults(func=cmd_db_upgrade)
    db_current = db_sub.add_parser(
        "current",
        help="print the schema's revision and whether it is the head: exit 0 at the head, 1 if not",
    )
    db_current.add_argument("--data-dir")
    db_current.set_defaults(func=cmd_db_current)
    db_revision = db_sub.add_parser(
        "revision",
        help="developers: write a new revision from the models (autogenerate)",
        description="Compare the models (server/db.py) with the head schema, on a throwaway SQLite "
        "database, and write the difference as server/migrations/versions/<next>_<msg>.py.",
    )
    db_revision.add_argument("-m", "--message", required=True, help="what the revision changes")
    db_revision.set_defaults(func=cmd_db_revision)

    identity = sub.add_parser(
        "identity", help="check faces and liveness on files (same code as the server)"
    )
    identity_sub = identity.add_subparsers(dest="identity_command", required=True)
    compare = identity_sub.add_parser(
        "compare",
        help="same person or not: exit 0 match, 1 no match, 2 error",
        description="Compare the faces of two images (one face each), or of every row img_a,img_b "
        "of a CSV (--pairs: one JSON line per row).",
    )
    compare.add_argument("images", nargs="*", metavar="IMG", help="IMG_A IMG_B")
    compare.add_argument(
        "--threshold",
        type=_positive_float,
        metavar="T",
        help="largest face distance that still matches (default 0.40)",
    )
    compare.add_argument("--json", action="store_true", help="print the result as one JSON object")
    compare.add_argument(
        "--pairs",
        metavar="FILE.csv",
        help="rows img_a,img_b (a first row img_a,img_b is a header); exit 0 "
        "unless the file cannot be read",
    )
    compare.add_argument(
        "--root",
        metavar="DIR",
        help="with --pairs: the folder the CSV's paths are relative to and may not "
        "leave (default: the CSV's folder)",
    )
    compare.set_defaults(func=cmd_identity_compare, usage_error=compare.error)

    liveness = identity_sub.add_parser(
        "liveness",
        help="judge a video against a challenge: exit 0 passed, 1 failed, 2 error",
        description="Judge a face video against a liveness challenge and print one JSON object: "
        "passed, reason and the evidence (frame numbers and times per step).",
    )
    liveness.add_argument("video")
    liveness.add_argument(
        "--challenge",
        required=True,
        help="blink, turn_left or turn_right, or several in order: turn_left,blink",
    )
    liveness.add_argument(
        "--step-time-limit",
        type=float,
        metavar="S",
        help="seconds of video allowed for each step (default 8)",
    )
    liveness.set_defaults(func=cmd_identity_liveness)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
