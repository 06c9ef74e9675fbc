"""Where the protected resource is, and how a refusal points at it.

The public URL of the MCP endpoint and of its RFC 9728 protected-resource metadata
(:class:`ResourceLocation`, :func:`metadata_paths`), and the RFC 6750 ``WWW-Authenticate``
challenge every refusal carries (:func:`challenge`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers

from vmcp.config import VmcpConfig

WELL_KNOWN_RESOURCE_METADATA = "/.well-known/oauth-protected-resource"


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")
# Characters RFC 6750 allows inside error_description.
_DESCRIPTION_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) - {'"', "\\"}


@dataclass(frozen=True)
class ResourceLocation:
    """The public URL of the MCP endpoint, and of its protected-resource metadata.

    ``configured`` (``auth.resource_url``) wins; otherwise the URL is derived from the
    request: ``X-Forwarded-Proto`` (http or https, default http: the gateway itself only
    speaks plain HTTP) and ``Host``, then ``path`` (``server.path``). Only the caller who
    sent those headers sees the result, so a forged value misleads nobody else; behind a
    proxy that rewrites paths, configure ``resource_url``.
    """

    configured: str | None
    path: str

    def resource(self, headers: Headers) -> str | None:
        """The resource identifier, or None if the request's ``Host`` is unusable."""
        if self.configured is not None:
            return self.configured
        host = headers.get("host", "")
        if not _HOST.match(host):
            return None
        proto = headers.get("x-forwarded-proto", "").split(",", 1)[0].strip().lower()
        scheme = proto if proto in ("http", "https") else "http"
        return f"{scheme}://{host}{self.path}"

    def metadata_url(self, headers: Headers) -> str | None:
        """Where the resource's metadata is: RFC 9728 section 3.1, the well-known path
        inserted between the host and the resource's path."""
        resource = self.resource(headers)
        if resource is None:
            return None
        parts = urlsplit(resource)
        return (f"{parts.scheme}://{parts.netloc}{WELL_KNOWN_RESOURCE_METADATA}"
                f"{parts.path.rstrip('/')}")


def metadata_paths(config: VmcpConfig) -> tuple[str, ...]:
    """The paths the protected-resource metadata is served on.

    The bare well-known path, and the RFC 9728 one for the endpoint's path (and for the
    path of ``auth.resource_url`` if that differs), so clients find it either way.
    """
    paths = [WELL_KNOWN_RESOURCE_METADATA,
             WELL_KNOWN_RESOURCE_METADATA + config.server.path.rstrip("/")]
    if config.auth.resource_url is not None:
        public = urlsplit(config.auth.resource_url).path.rstrip("/")
        paths.append(WELL_KNOWN_RESOURCE_METADATA + public)
    return tuple(dict.fromkeys(paths))


def challenge(resource_metadata: str | None, error: str | None = None,
              description: str | None = None) -> str:
    """An RFC 6750 ``WWW-Authenticate`` value for the Bearer scheme."""
    params = []
    if resource_metadata is not None:
        params.append(f'resource_metadata="{resource_metadata}"')
    if error is not None:
        params.append(f'error="{error}"')
        if description:
            text = "".join(c if c in _DESCRIPTION_CHARS else "'" if c == '"' else " "
                           for c in description)
            params.append(f'error_description="{text}"')
    return "Bearer " + ", ".join(params) if params else "Bearer"
