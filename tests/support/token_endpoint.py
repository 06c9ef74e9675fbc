"""An RFC 8693 token-exchange endpoint on loopback, for outgoing-auth tests.

It checks the client's HTTP Basic credentials and the exchange parameters, and answers
each good request with a new numbered token (``exchanged-<n>``) valid for
``expires_in`` seconds. Every request is recorded (minus the secret), so tests can count
exchanges and see which subject token each one carried.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"


@dataclass(frozen=True)
class Exchange:
    subject_token: str
    audience: str | None
    scope: str | None
    client_id: str | None


class TokenEndpoint:
    """``POST /token``; use as a context manager."""

    def __init__(self, client_id: str, client_secret: str, *, expires_in: int | None = 300
                 ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.fail_with: int | None = None
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def count(self) -> int:
        with self._lock:
            return len(self.exchanges)

    def _answer(self, form: dict[str, str], authorization: str | None
                ) -> tuple[int, dict[str, Any]]:
        if not authorization or not authorization.startswith("Basic "):
            return 401, {"error": "invalid_client"}
        user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
        if (unquote(user), unquote(password)) != (self.client_id, self.client_secret):
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") != GRANT or form.get("subject_token_type") != ACCESS_TOKEN:
            return 400, {"error": "unsupported_grant_type"}
        subject = form.get("subject_token")
        if not subject:
            return 400, {"error": "invalid_request"}
        with self._lock:
            if self.fail_with is not None:
                return self.fail_with, {"error": "invalid_grant",
                                        "error_description": f"refused {subject}"}
            self.exchanges.append(Exchange(subject, form.get("audience"), form.get("scope"),
                                           user))
            number = len(self.exchanges)
        answer: dict[str, Any] = {"access_token": f"exchanged-{number}",
                                  "issued_token_type": ACCESS_TOKEN, "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return 200, answer

    def start(self) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length).decode()
                form = {key: values[0] for key, values in parse_qs(raw).items()}
                status, body = endpoint._answer(form, self.headers.get("authorization"))
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True, name="token-endpoint")
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> TokenEndpoint:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
