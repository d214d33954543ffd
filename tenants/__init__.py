"""Who is asking and what they may do: API keys, per-key quotas and the audit trail. Not HTTP: imports only
`errors`, `settings` and itself."""
