"""tachyon-ctl: the thin JSON-RPC client of tachyond (standard library only, so it starts fast)."""
