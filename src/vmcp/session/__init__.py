"""MCP sessions that any replica can serve: lifecycle, identity binding, live sessions."""

from vmcp.session.binding import ANONYMOUS, Principal, binding_for, check_binding
from vmcp.session.live import LiveSession, SessionFactory
from vmcp.session.manager import SessionManager

__all__ = [
    "ANONYMOUS",
    "LiveSession",
    "Principal",
    "SessionFactory",
    "SessionManager",
    "binding_for",
    "check_binding",
]
