"""The audit trail: one structured event per MCP operation and per refusal.

Depends only on ``vmcp.identity``, ``vmcp.config`` and ``vmcp.errors``.
"""
