"""Everything the llm service keeps of one user, deleted for the gateway's
AdminService.DeleteUserData (services/runtime/user_data.py): the usage ledger's records
(unless PARLEY_LLM_KEEP_USAGE_FOR_BILLING keeps them) and the user's budget.

Records of calls made before the deletion that are still buffered, spooled or in flight are
dropped when they are written (the ledger's insert checks the deletion mark). The response
and embedding caches hold no user's entries: their keys are hashes of the request alone,
shared by every user who sends the same request, and they expire with their TTL."""

from __future__ import annotations

from services.llm.budgets import Budgets
from services.runtime.audit import AuditLog, Kind
from services.runtime.db import Database
from services.runtime.user_data import Removed, delete_rows, deletion


async def delete_user_data(db: Database, audit: AuditLog, budgets: Budgets | None, user_id: str, *,
                           keep_usage: bool) -> list[Removed]:
    tables = ("budgets",) if keep_usage else ("usage_records", "budgets")
    async with deletion(db, user_id) as conn:
        counts = await delete_rows(conn, tables)
        await audit.write(conn, Kind.USER_DATA_DELETED, subject=user_id, resource=user_id,
                          details={**counts, "usage_kept_for_billing": keep_usage})
    if budgets is not None:
        budgets.invalidate(user_id)
    return [Removed("llm", counts, kept=("usage_records",) if keep_usage else ())]
