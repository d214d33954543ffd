"""The audit trail: one log line per operator action, saying who (the key's label, never the key), what, on
which model, and when (the log line's time). Logger `llm_server.audit`, so operators can route it apart."""

from __future__ import annotations

import logging

from tenants.keys import Tenant

audit_logger = logging.getLogger("llm_server.audit")


def audit(tenant: Tenant | None, action: str, **details: object) -> None:
    who = tenant.label if tenant is not None else "-"
    fields = " ".join(f"{name}={value}" for name, value in details.items())
    audit_logger.info("audit key=%s action=%s %s", who, action, fields)
