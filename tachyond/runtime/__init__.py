"""Runtime plumbing the daemon wires together: logs, metrics, systemd, devmode, reload, hardening."""
