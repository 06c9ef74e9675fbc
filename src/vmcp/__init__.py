"""vmcp: a virtual, horizontally scalable MCP server."""

__version__ = "0.1.0"
