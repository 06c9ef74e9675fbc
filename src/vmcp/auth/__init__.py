"""Authentication of the gateway's callers (incoming), and to its backends (outgoing).

:mod:`vmcp.auth.incoming` turns the ``auth.incoming`` configuration into the
``Authenticate`` callable the MCP endpoint calls once per request; the resulting
``Principal`` is what sessions are bound to (:mod:`vmcp.identity`). It is a package of
one job per module: the authenticators, JWTs with their issuers' keys, and the RFC 9728
resource metadata.

:mod:`vmcp.auth.outgoing` is the other direction: the credentials each backend call
carries (``backends[].auth``), taken from the request being served.
"""
