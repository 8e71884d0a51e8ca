"""Stores: the ``Store`` protocol and its implementations (DuckDB is the embedded default)."""
