"""The persistent usage ledger: one record per request (SQLite by default, a Redis stream when shared).

``setup.open_ledger`` builds it from config; ``record`` is the row, ``writer`` the batching
writer (its sink), ``sqlite``/``redis`` the stores, ``admin`` the ``/admin/usage`` endpoint.
"""
