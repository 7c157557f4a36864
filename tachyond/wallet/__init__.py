"""The encrypted wallet file: crypto primitives (crypto) and the SQLite store with its single writer (store)."""
