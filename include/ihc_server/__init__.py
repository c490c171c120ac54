"""IHC-compatible local server: a development and test double of the IHC attribution API.

Run it with ``python -m include.ihc_server --api-key KEY``; in tests use
:func:`include.ihc_server.testing.serve`. See ``docs/ihc_server.md``.
"""
