"""The HTTP face of vmcp: the MCP Streamable-HTTP endpoint and the operational routes."""
