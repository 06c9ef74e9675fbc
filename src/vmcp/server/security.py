"""DNS-rebinding protection: the ``Host`` and ``Origin`` a request may carry.

A web page on another origin can make a browser send requests to a gateway on the
user's machine (its DNS name re-pointed at 127.0.0.1). Such a request carries that
page's ``Host`` and ``Origin``, so both are checked before anything else happens.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from vmcp.config import ServerConfig

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
# A refused Host is logged at most this often per name, and for this many names at once,
# so that a flood of bad requests cannot flood the log.
REFUSAL_LOG_INTERVAL_SECONDS = 60.0
REFUSAL_LOG_NAMES = 256


def _hostname(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGuard:
    """Accepts loopback names, the bound host and configured extras; refuses the rest.

    When the gateway listens on a non-loopback address and no ``allowed_hosts`` are set,
    the ``Host`` check is off (a load balancer's public name is unknown here); the
    start-up log says so.
    """

    def __init__(self, config: ServerConfig) -> None:
        self._hosts = set(LOOPBACK_NAMES) | {config.host.lower()}
        self._hosts.update(_hostname(h) for h in config.allowed_hosts)
        self._check_host = bool(config.allowed_hosts) or config.host in LOOPBACK_NAMES
        self._origins = {o.rstrip("/").lower() for o in config.allowed_origins}
        self._refusals_logged: dict[str, float] = {}
        if not self._check_host:
            logger.warning("listening on %s with no allowed_hosts: Host header not checked",
                           config.host)

    def check(self, headers: Headers) -> tuple[int, str] | None:
        """None if the request may proceed, else the (status, reason) to refuse it with."""
        if self._check_host:
            host = headers.get("host")
            if host is None or _hostname(host) not in self._hosts:
                self._log_refused_host(host)
                return 421, "Invalid Host header"
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin):
            return 403, "Invalid Origin header"
        return None

    def _log_refused_host(self, host: str | None) -> None:
        """Behind a load balancer this is the first thing an operator hits: name the Host
        and the key that admits it (rate-limited per name)."""
        shown = (host or "")[:100]
        now = time.monotonic()
        last = self._refusals_logged.get(shown)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_SECONDS:
            return
        if last is None and len(self._refusals_logged) >= REFUSAL_LOG_NAMES:
            self._refusals_logged = {name: at for name, at in self._refusals_logged.items()
                                     if now - at < REFUSAL_LOG_INTERVAL_SECONDS}
            if len(self._refusals_logged) >= REFUSAL_LOG_NAMES:
                return
        self._refusals_logged[shown] = now
        logger.warning("refused a request with Host %r (421 Invalid Host header): add it to "
                       "server.allowed_hosts if clients or a load balancer use that name "
                       "(logged once a minute per name)", shown or "<none>")

    def _origin_allowed(self, origin: str) -> bool:
        normalized = origin.rstrip("/").lower()
        if normalized in self._origins:
            return True
        try:
            parts = urlsplit(normalized)
        except ValueError:  # e.g. "http://[::1": not an origin at all
            return False
        return parts.scheme in ("http", "https") and _hostname(parts.netloc) in LOOPBACK_NAMES
