"""MCP sessions that any replica can serve: lifecycle and live sessions."""

from vmcp.session.live import LiveSession, SessionFactory
from vmcp.session.manager import SessionManager

__all__ = ["LiveSession", "SessionFactory", "SessionManager"]
