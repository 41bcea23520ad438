"""Who may act on whose usage and budget: everyone on their own; the `admin` scope on another
user (`target_user_id`) or on everyone (`all_users`)."""

from __future__ import annotations

from services.runtime import errors
from services.runtime.identity import USER_ID_PATTERN, Identity


def target_user(identity: Identity, target_user_id: str) -> str:
    """The user a call acts on: the caller, or `target_user_id` for an administrator."""
    if not target_user_id or target_user_id == identity.user_id:
        return identity.user_id
    if not USER_ID_PATTERN.match(target_user_id):
        raise errors.InvalidArgument.for_field("target_user_id", "is not a valid user id", "INVALID_USER_ID")
    if not identity.has_scope("admin"):
        raise errors.PermissionDenied("only the admin scope may act on another user", reason="ADMIN_REQUIRED")
    return target_user_id


def report_subject(identity: Identity, target_user_id: str, all_users: bool) -> str:
    """The user a usage report is about (the caller's id when it is about everyone)."""
    if all_users and target_user_id:
        raise errors.InvalidArgument.for_field("all_users", "excludes target_user_id", "CONFLICTING_FIELDS")
    if all_users and not identity.has_scope("admin"):
        raise errors.PermissionDenied("only the admin scope may report on all users", reason="ADMIN_REQUIRED")
    return target_user(identity, target_user_id)
