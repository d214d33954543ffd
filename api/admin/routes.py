"""Operator endpoints that are not about one model: per-key usage (`GET /admin/usage`, admin keys only),
Prometheus metrics (`GET /metrics`: any key, or admin keys only with `--private-metrics`), and who the caller's key
says it is (`GET /whoami`: the web page shows its operator view to admin keys only)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import AdminDep, KeysDep, QuotasDep, SettingsDep, TenantDep, require_admin

router = APIRouter(tags=["admin"])


@router.get("/admin/usage")
async def usage(quotas: QuotasDep, keys: KeysDep, _: AdminDep) -> dict:
    """Per key label: requests, prompt/completion tokens, errors, 429s, in flight, last window's use, limits."""
    tenants = {tenant.label: tenant for _, tenant in keys.ring.keys} or {"open": keys.open_tenant}
    summaries = {}
    for label in sorted(set(tenants) | set(quotas.keys)):
        tenant = tenants.get(label)
        summaries[label] = {
            "role": tenant.role if tenant else None,  # None: a key removed by a reload
            "limits": tenant.limits.model_dump() if tenant else None,
            **quotas.usage(label).summary(),
        }
    return {"window_seconds": quotas.window, "keys": summaries}


@router.get("/whoami")
async def whoami(tenant: TenantDep) -> dict:
    """The caller's key as the server sees it: its label, role and models (never the key itself)."""
    return {"label": tenant.label, "role": tenant.role,
            "models": sorted(tenant.models) if tenant.models is not None else None}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request, settings: SettingsDep) -> Response:
    if settings.private_metrics:
        require_admin(request)
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
