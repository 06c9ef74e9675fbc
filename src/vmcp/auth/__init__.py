"""Authentication of the gateway's callers (incoming), and to its backends (outgoing).

:mod:`vmcp.auth.incoming` turns the ``auth.incoming`` configuration into the
``Authenticate`` callable the MCP endpoint calls once per request; the resulting
``Principal`` is what sessions are bound to (:mod:`vmcp.identity`).

:mod:`vmcp.auth.outgoing` is the other direction: the credentials each backend call
carries (``backends[].auth``), taken from the request being served.
"""
