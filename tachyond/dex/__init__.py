"""The DEX: service (locks, settlement), market, store, watch, recovery, api."""
