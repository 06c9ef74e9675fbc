"""Authentication of the gateway's callers (incoming): who is making each request.

:mod:`vmcp.auth.incoming` turns the ``auth.incoming`` configuration into the
``Authenticate`` callable the MCP endpoint calls once per request; the resulting
``Principal`` is what sessions are bound to (:mod:`vmcp.session.binding`).
"""
