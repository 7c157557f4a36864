"""Stripe Crypto Onramp: service, inbox (webhooks, worker), reconcile, store, api."""
