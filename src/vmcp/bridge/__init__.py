"""Serving one stdio MCP server over Streamable HTTP (``vmcp bridge``)."""
