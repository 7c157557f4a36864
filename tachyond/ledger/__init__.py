"""The double-entry token ledger: journal (LedgerTx), service (Ledger), verify, api."""
