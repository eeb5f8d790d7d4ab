"""The admin API, `/api/v1`: reads and writes of the engine `serve` holds, for admins only.

The admin check sits on the router itself, so no route under it can forget it; every route
documents the bearer scheme in the OpenAPI schema.
"""

from __future__ import annotations

from fastapi import APIRouter

from cohortsync.server import admin_reads, admin_writes
from cohortsync.server.admin_auth import AdminOnly
from cohortsync.server.admin_http import PROBLEMS
from cohortsync.server.admin_models import PREFIX

router = APIRouter(prefix=PREFIX, dependencies=[AdminOnly], responses={401: PROBLEMS[401]})
router.include_router(admin_reads.router, tags=["admin: read"])
router.include_router(admin_writes.router, tags=["admin: write"])
