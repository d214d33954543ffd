"""API keys and the tenants they stand for: a role (admin or user), a label for logs and metrics, the models the
key may use, and its quotas.

Sources: `--admin-key KEY` and `--api-key KEY` (repeatable, the simple case: labelled `admin-1`, `user-1`...),
and `--api-key-file FILE`, read again on SIGHUP. The file is either YAML (`.yaml` / `.yml`):

    keys:
      - {key: sk-alice, label: alice, role: user, models: [SmolLM2-135M-Instruct.Q4_1.gguf],
         limits: {requests_per_minute: 60, tokens_per_minute: 20000, max_streams: 4, max_request_tokens: 4096}}
      - {key: sk-ops, label: ops, role: admin}

or lines `KEY [MODELS] [name=value ...]`: MODELS a comma-separated list, names `role`, `label`, `rpm`, `tpm`,
`streams`, `request_tokens` (e.g. `sk-bob gemma role=user label=bob rpm=30`). A key without a role is a user.
Keys are compared in constant time and never logged; the label is what logs and metrics show.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Role = Literal["admin", "user"]


class KeyLimits(BaseModel):
    """Quotas of one key; None: unlimited (or the server-wide default from the flags)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)  # prompt + completion
    max_streams: int | None = Field(None, ge=1)  # requests in flight at once
    max_request_tokens: int | None = Field(None, ge=1)  # n x max_tokens of one request

    def over(self, defaults: KeyLimits) -> KeyLimits:
        """These limits, with `defaults` where this key sets none."""
        return KeyLimits(**{**defaults.model_dump(), **self.model_dump(exclude_none=True)})


@dataclass(frozen=True)
class Tenant:
    """Who is calling: what one key stands for."""

    label: str
    role: Role = "user"
    models: frozenset[str] | None = None  # None: every model
    limits: KeyLimits = field(default_factory=KeyLimits)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, model_id: str, aliases: tuple[str, ...] = ()) -> bool:
        return self.models is None or model_id in self.models or any(alias in self.models for alias in aliases)


# Without keys configured (local use) every caller is this tenant: an administrator with no limits but the
# server-wide defaults.
OPEN_ACCESS = Tenant(label="open", role="admin")


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1)
    label: str | None = None
    role: Role = "user"
    models: list[str] | None = None
    limits: KeyLimits = KeyLimits()


class KeyFileError(ValueError):
    """The key file cannot be read; the message names the line or entry, never a key."""


_LINE_LIMITS = {"rpm": "requests_per_minute", "tpm": "tokens_per_minute", "streams": "max_streams",
                "request_tokens": "max_request_tokens"}


def _entry_from_line(line: str, number: int) -> KeyEntry:
    secret, *rest = line.split()
    fields: dict = {"key": secret, "limits": {}}
    for word in rest:
        name, has_value, value = word.partition("=")
        if not has_value:
            fields["models"] = [m for m in word.split(",") if m]
        elif name in ("role", "label"):
            fields[name] = value
        elif name in _LINE_LIMITS:
            fields["limits"][_LINE_LIMITS[name]] = value
        else:
            raise KeyFileError(f"line {number}: unknown setting '{name}'")
    try:
        return KeyEntry.model_validate(fields)
    except ValidationError as exc:
        raise KeyFileError(f"line {number}: {_without_input(exc)}") from None


def _without_input(exc: ValidationError) -> str:
    """Pydantic's message without the input values (which would include the key)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors())


def read_key_file(path: Path) -> list[KeyEntry]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        document = yaml.safe_load(text) or {}
        raw = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(raw, list):
            raise KeyFileError("expected a top-level 'keys:' list")
        entries = []
        for index, item in enumerate(raw):
            try:
                entries.append(KeyEntry.model_validate(item))
            except ValidationError as exc:
                raise KeyFileError(f"entry {index}: {_without_input(exc)}") from None
        return entries
    return [_entry_from_line(line.strip(), number) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]


@dataclass(frozen=True)
class KeyRing:
    """Every configured key and its tenant. Empty: the server is open (everyone is OPEN_ACCESS)."""

    keys: tuple[tuple[bytes, Tenant], ...] = ()

    @property
    def open(self) -> bool:
        return not self.keys

    @property
    def has_admin(self) -> bool:
        return any(tenant.is_admin for _, tenant in self.keys)

    def tenant_for(self, presented: bytes | None) -> Tenant | None:
        found = None
        for secret, tenant in self.keys:  # compare with every key: timing does not tell which one matched
            if presented is not None and hmac.compare_digest(presented, secret):
                found = tenant
        return found

    def labels(self) -> list[str]:
        return [tenant.label for _, tenant in self.keys]


def build_key_ring(admin_keys: list[str], user_keys: list[str], key_file: Path | None,
                   default_limits: KeyLimits) -> KeyRing:
    """All keys from the flags and the key file; limits a key leaves unset come from `default_limits`."""
    entries = [KeyEntry(key=k, role="admin", label=f"admin-{i}") for i, k in enumerate(admin_keys, 1) if k]
    entries += [KeyEntry(key=k, role="user", label=f"user-{i}") for i, k in enumerate(user_keys, 1) if k]
    if key_file is not None:
        entries += read_key_file(key_file)
    keys = []
    for number, entry in enumerate(entries, 1):
        tenant = Tenant(label=entry.label or f"key-{number}", role=entry.role,
                        models=frozenset(entry.models) if entry.models else None,
                        limits=entry.limits.over(default_limits))
        keys.append((entry.key.encode(), tenant))
    return KeyRing(tuple(keys))


class KeyStore:
    """The server's key ring, replaced whole on reload (requests in flight keep the tenant they started with)."""

    def __init__(self, admin_keys: list[str], user_keys: list[str], key_file: Path | None,
                 default_limits: KeyLimits) -> None:
        self._sources = (admin_keys, user_keys, key_file, default_limits)
        self.ring = build_key_ring(*self._sources)
        self.open_tenant = replace(OPEN_ACCESS, limits=default_limits)  # everyone, when no key is configured

    def reload(self) -> KeyRing:
        """Read the flags' keys and the key file again; on error the old ring stays (and the error is raised)."""
        self.ring = build_key_ring(*self._sources)
        return self.ring

    def describe(self) -> str:
        """One line for the start-up log: who may do what (labels and roles, never keys)."""
        ring = self.ring
        if ring.open:
            return "No API keys configured: the server is open to every caller (bind it to loopback only)."
        roles = ", ".join(f"{tenant.label} ({tenant.role})" for _, tenant in ring.keys)
        if not ring.has_admin:
            return f"API keys: {roles}. No admin key: operator endpoints (/admin/*, /setModel) are off."
        return f"API keys: {roles}."
