"""A throwaway nginx (Debian's ``nginx`` package) in front of vcounter nodes.

The configuration is ``nginx.conf.template`` beside this file (round-robin, no session affinity,
WebSocket upgrade on ``/ws/``, passive health checks), the one ``docs/deployment.md`` shows for a
real deployment; every file nginx writes (pid, logs, temporary bodies) is under the prefix
directory it is given. It listens on a free loopback port, or on the address and port given, with
TLS when given a certificate.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from .exceptions import NotInstalled, ServiceError
from .process import Service, free_port, spawn, stop_process, wait_until

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
#: seconds nginx gets to bind its port after it starts
START_TIMEOUT_S = 15.0


def nginx_binary() -> str | None:
    """Debian's nginx (in ``/usr/sbin``, which a non-root ``PATH`` may lack), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None


def render_nginx_conf(
    prefix: Path,
    upstreams: Iterable[str],
    listen: str,
    *,
    tls: tuple[Path, Path] | None = None,
    max_fails: int = 1,
    fail_timeout_s: int = 10,
) -> str:
    """:data:`TEMPLATE` filled in: every path under ``prefix``, the given nodes (``host:port``),
    ``listen`` (``host:port``), and with ``tls`` (certificate, key) HTTPS."""
    servers = "\n".join(
        f"        server {u} max_fails={max_fails} fail_timeout={fail_timeout_s}s;"
        for u in upstreams
    )
    tls_lines = (
        ""
        if tls is None
        else f"        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n"
    )
    fields = {
        # as root the workers would run as nobody, who cannot reach a private temporary directory
        "user": "user root;" if os.geteuid() == 0 else "",
        "prefix": str(prefix),
        "servers": servers,
        "listen": f"{listen} ssl" if tls else listen,
        "tls": tls_lines,
    }
    return re.sub(r"@(\w+)@", lambda m: fields[m.group(1)], TEMPLATE.read_text())


class Nginx(Service):
    """nginx in front of ``upstreams`` (``host:port``), with every file under ``prefix``."""

    def __init__(
        self,
        prefix: Path,
        upstreams: list[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.prefix = prefix
        self.upstreams = upstreams
        self.host = host
        self.port = port or 0
        self._fixed_port = port is not None
        self.tls = tls
        self.conf = prefix / "nginx.conf"
        self.pid_file = prefix / "nginx.pid"
        self.error_log = prefix / "error.log"
        self.access_log = prefix / "access.log"
        self.out = prefix / "nginx.out"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "::") else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        """Start nginx and wait until it listens (on another free port if ours was taken)."""
        binary = nginx_binary()
        if binary is None:
            raise NotInstalled.debian("nginx", "nginx")
        for attempt in range(3):
            if not self._fixed_port:
                self.port = free_port()
            (self.prefix / "temp").mkdir(parents=True, exist_ok=True)
            self.conf.write_text(
                render_nginx_conf(
                    self.prefix, self.upstreams, f"{self.host}:{self.port}", tls=self.tls
                )
            )
            self.pid_file.unlink(missing_ok=True)
            # -e: the error log before the configuration is read (else /var/log/nginx/error.log)
            self.proc = proc = spawn(
                [binary, "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.error_log)],
                log=self.out,
            )
            # nginx writes its pid file once its listening sockets are bound
            if wait_until(self._listening, proc, START_TIMEOUT_S):
                logger.info("nginx pid %d on %s", proc.pid, self.url)
                return
            self.stop()
            taken = "Address already in use" in self.log_tail()
            if self._fixed_port or not taken or attempt == 2:
                break
        raise ServiceError(f"nginx did not start on {self.host}:{self.port}:\n{self.log_tail()}")

    def _listening(self) -> bool:
        try:
            return self.proc is not None and int(self.pid_file.read_text()) == self.proc.pid
        except (OSError, ValueError):
            return False

    def log_tail(self, chars: int = 2000) -> str:
        parts = [
            p.read_text(errors="replace")[-chars:] for p in (self.out, self.error_log) if p.exists()
        ]
        return "\n".join(parts) or "(no log)"

    def stop(self) -> None:
        """Fast shutdown (open connections are closed); safe to call twice."""
        proc, self.proc = self.proc, None
        stop_process(proc, "nginx")
