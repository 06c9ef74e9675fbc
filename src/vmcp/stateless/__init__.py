"""The backends behind clients of the stateless revision (2026-07-28).

Such a client has no session with the gateway: what a request needs is derived from the
caller (identity binding and the request's ``_meta`` envelope) and from state any replica
can rebuild. ``backends`` lists and calls every backend for a caller; ``pool`` keeps the
upstream sessions that session-based backends need, per identity; ``input_rounds`` turns
a session-based backend's requests to its client into ``input_required`` rounds.
"""
