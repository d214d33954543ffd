"""What outlives a request: stored Responses, the database under them, and which instances are alive. Not HTTP:
imports only `errors`, `settings` and itself."""
