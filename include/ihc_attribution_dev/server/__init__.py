"""IHC-compatible local server: a development and test double of the IHC attribution API.

Run it with ``python -m ihc_attribution_dev.server --api-key KEY``; in tests use
:func:`ihc_attribution_dev.server.testing.serve`. See ``docs/ihc_server.md``.
"""
