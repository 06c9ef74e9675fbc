"""Reaching backends on a caller's behalf, shared by both revisions.

``dialer`` opens or re-attaches one backend connection under its deadline with the
caller's outgoing credentials; ``discovery`` lists everything a backend offers, page by
page; ``catalogs`` keeps those listings per replica; ``ledger`` counts the upstream
sessions opened and ended, and each backend's calls.
"""
