"""Runnable examples that sit beside the gateway rather than inside it."""
