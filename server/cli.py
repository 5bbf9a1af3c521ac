"""The ``vcounter`` command line: serve, manage users."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import ssl
import sys
from dataclasses import replace
from pathlib import Path

from . import auth
from .config import Config, from_env
from .db import Database, get_user
from .exceptions import ServerError

logger = logging.getLogger("vcounter")

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
                auth.add_user(s, role=role, username=username, password=password, skills=skills,
                              display_name=display)
                stored[username] = password
            created.append((username, role, stored.get(username, "(set elsewhere)")))
        s.commit()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in stored.items()))
    return created


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .app import create_app

    config = _base_config(args)
    changes: dict[str, object] = {}
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
    if args.cert:
        changes["cert_file"] = Path(args.cert)
    if args.key:
        changes["key_file"] = Path(args.key)
    config = replace(config, **changes)
    _configure_logging(args.verbose)
    config.data_dir.mkdir(parents=True, exist_ok=True)

    db = Database(config.db_url)
    db.create_all()
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
    if accounts:
        print("  demo accounts (passwords stored in data-dir/demo-accounts.txt):")
        for username, role, password in accounts:
            print(f"    {role:8} {username:10} {password}")
    if config.tls and config.cert_file is None:
        print("  TLS: self-signed development certificate; your browser will ask to accept it.")
    sys.stdout.flush()
    web.run_app(create_app(config), host=config.host, port=config.port, ssl_context=ssl_context,
                print=None, access_log=None, shutdown_timeout=5)
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    config = _base_config(args)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.db_url)
    db.create_all()
    skills = [s.strip() for s in (args.skills or "").split(",") if s.strip()]
    password = args.password
    if password == "-":
        password = sys.stdin.readline().rstrip("\n")
    try:
        with db.session() as s:
            user = auth.add_user(s, role=args.role, username=args.username, password=password,
                                 skills=skills, display_name=args.display_name)
            s.commit()
            print(f"created {user.role} {user.username}" + (f" skills={user.skills}" if user.skills else ""))
    except ServerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        db.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcounter", description="Open-source bank video counter")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the server")
    serve.add_argument("--host", help="listen address (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="listen port (default 8443)")
    serve.add_argument("--data-dir", help="data directory (default ./var, env VCOUNTER_DATA_DIR)")
    serve.add_argument("--no-tls", action="store_true", help="serve plain HTTP (behind a TLS proxy, tests)")
    serve.add_argument("--cert", help="TLS certificate (PEM); default: self-signed in data-dir/tls")
    serve.add_argument("--key", help="TLS private key (PEM)")
    serve.add_argument("--media-mode", choices=["passthrough", "transcode"],
                       help="forward encoded media (default) or decode and re-encode (benchmark)")
    serve.add_argument("--demo", action="store_true", help="create demo accounts and print them")
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(func=cmd_serve)

    user = sub.add_parser("user", help="manage users")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create a user")
    add.add_argument("--role", required=True, choices=["agent", "auditor", "admin"])
    add.add_argument("--username", required=True)
    add.add_argument("--password", required=True, help="the password, or - to read it from stdin")
    add.add_argument("--skills", help="agents: comma-separated business types "
                     "(account_opening,loan_signing,wealth_product)")
    add.add_argument("--display-name")
    add.add_argument("--data-dir")
    add.set_defaults(func=cmd_user_add)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
