"""Pure pieces: messages, passwords, configuration, the CLI, dependencies that import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sqlmodel import select

from server import auth
from server.config import Config, from_env
from server.db import Database, SessionEvent
from server.migrations import create_all
from signaling import messages as m
from signaling.exceptions import InvalidMessage

from .server_process import run_vcounter


def test_customer_messages_validate_at_the_edge():
    join = m.parse_customer_message(
        '{"type": "join", "business": "wealth_product", "display_name": "王女士"}'
    )
    assert isinstance(join, m.Join) and join.display_name == "王女士"
    with pytest.raises(InvalidMessage) as exc:
        m.parse_customer_message(
            '{"type": "join", "business": "wealth_product", "display_name": "x", "extra": 1}'
        )
    assert "extra" in exc.value.message
    with pytest.raises(InvalidMessage) as exc:
        m.parse_customer_message(b"\xff\xfe")
    assert exc.value.code == "bad_json"
    with pytest.raises(InvalidMessage) as exc:
        m.parse_customer_message("x" * (m.MAX_MESSAGE_BYTES + 1))
    assert exc.value.code == "too_large" and exc.value.fatal
    with pytest.raises(InvalidMessage) as exc:
        m.parse_agent_message('{"type": "join", "business": "wealth_product", "display_name": "x"}')
    assert exc.value.code == "unknown_type"


def test_server_messages_serialise_without_nulls():
    text = m.dump(m.Error(code="bad_json", message="nope"))
    assert json.loads(text) == {
        "type": "error",
        "code": "bad_json",
        "message": "nope",
        "fatal": False,
    }


def test_passwords_are_scrypt_and_verify():
    encoded = auth.hash_password("s3cret-pass")
    assert encoded.startswith("scrypt$16384$8$1$") and "s3cret" not in encoded
    assert auth.verify_password("s3cret-pass", encoded)
    assert not auth.verify_password("s3cret-Pass", encoded)
    assert not auth.verify_password("x", "garbage")
    assert auth.hash_password("same") != auth.hash_password("same")  # salted


def test_config_from_environment():
    config = from_env(
        Config(),
        {
            "VCOUNTER_PORT": "9443",
            "VCOUNTER_TLS": "false",
            "VCOUNTER_REJOIN_WINDOW_S": "12.5",
            "VCOUNTER_ICE_SERVERS": '[{"urls": "turn:turn.example:3478", "username": "u", "credential": "c"}]',
            "DATABASE_URL": "postgresql://db/vcounter",
        },
    )
    assert (config.port, config.tls, config.rejoin_window_s) == (9443, False, 12.5)
    assert config.ice_servers[0].urls == ["turn:turn.example:3478"]
    assert "credential='c'" not in repr(config.ice_servers[0]) and "postgresql" not in repr(config)
    assert config.db_url == "postgresql://db/vcounter"


def test_cli_user_add(tmp_path):
    done = run_vcounter(
        "user",
        "add",
        "--role",
        "agent",
        "--username",
        "li.na",
        "--password",
        "-",
        "--skills",
        "account_opening,wealth_product",
        data_dir=tmp_path,
        stdin="pw-from-stdin\n",
    )
    assert done.returncode == 0, done.stderr
    assert "pw-from-stdin" not in done.stdout + done.stderr
    again = run_vcounter(
        "user",
        "add",
        "--role",
        "agent",
        "--username",
        "li.na",
        "--password",
        "another-pw",
        "--skills",
        "account_opening",
        data_dir=tmp_path,
    )
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = run_vcounter(
        "user",
        "add",
        "--role",
        "agent",
        "--username",
        "x",
        "--password",
        "long-enough",
        "--skills",
        "casino",
        data_dir=tmp_path,
    )
    assert bad.returncode == 2 and "unknown skill" in bad.stderr
    db = Database(f"sqlite:///{tmp_path / 'vcounter.db'}")
    with db.session() as s:
        user = auth.get_user(s, "li.na")
        assert user.role == "agent" and user.skill_set == {"account_opening", "wealth_product"}
        assert auth.verify_password("pw-from-stdin", user.password_hash)
    db.close()


def test_data_dir_is_created_private_and_an_open_one_is_reported(tmp_path, caplog):
    import logging

    from server.config import Config, ensure_data_dir

    fresh = tmp_path / "new" / "data"
    done = run_vcounter(
        "user",
        "add",
        "--role",
        "auditor",
        "--username",
        "qc",
        "--password",
        "long-enough",
        data_dir=fresh,
    )
    assert done.returncode == 0, done.stderr
    assert (
        fresh.stat().st_mode & 0o777 == 0o700
    )  # holds the database: customers' names and business
    open_dir = tmp_path / "shared"
    open_dir.mkdir(mode=0o755)
    open_dir.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="server.config"):
        ensure_data_dir(Config(data_dir=open_dir))
    assert "accessible by group or others" in caplog.text
    assert open_dir.stat().st_mode & 0o777 == 0o755  # the operator's choice is not changed


def test_event_timeline_is_append_only(tmp_path):
    import sqlalchemy.exc

    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    create_all(db)
    from server.db import CallSession

    with db.session() as s:
        s.add(
            CallSession(
                id="sess-append-1", business="loan_signing", state="queued", customer_name="A"
            )
        )
        s.add(SessionEvent(session_id="sess-append-1", offset_ms=0, kind="queued"))
        s.commit()
        event = s.exec(select(SessionEvent)).one()
        event.kind = "tampered"
        s.add(event)
        with pytest.raises(sqlalchemy.exc.DatabaseError, match="is append-only"):
            s.commit()
        s.rollback()
        s.delete(s.exec(select(SessionEvent)).one())
        with pytest.raises(sqlalchemy.exc.DatabaseError, match="is append-only"):
            s.commit()
    db.close()


def test_face_recognition_imports_in_a_fresh_interpreter():
    """face_recognition_models needs pkg_resources: with setuptools>=82 the import exits(0)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import face_recognition; print('imported', face_recognition.face_locations.__name__)",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert done.returncode == 0 and "imported face_locations" in done.stdout, (
        done.stdout + done.stderr
    )


def test_new_ids_never_start_with_a_dash():
    """A session id like ``-SmTWRmKhd4-SSlD`` made ``vcounter hold <id>`` fail (argparse took it for an option)."""
    from signaling.ids import new_id

    ids = [
        new_id(12) for _ in range(4000)
    ]  # token_urlsafe alone starts with '-' or '_' 1 time in 32
    assert all(i[0].isalnum() for i in ids)
    assert all(len(i) == 16 for i in ids) and len(set(ids)) == len(ids)
    assert {i[0] for i in ids} > set("AZaz09")
