#!/opt/parley/venv/bin/python
"""`parley-init-secrets DIR`: creates, once, the secrets every Parley container shares — the
gateway's Ed25519 identity key pair and the page token secret — in DIR (a volume mounted by
every service). Existing files are kept, so restarts and new replicas see the same secrets.
The one-shot `secrets-init` service of docker-compose.yml runs it before anything starts."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from services.runtime.identity import generate_private_key_pem, key_id, load_public_keys, public_key_pem

PRIVATE_KEY = "identity-ed25519.pem"
PUBLIC_KEY = "identity-ed25519.pub.pem"
PAGE_TOKEN_SECRET = "page-token-secret"


def _write_once(path: Path, content: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(content)
    return True


def _trusts(public_file: Path, private_pem: bytes) -> bool:
    try:
        trusted = load_public_keys(public_file.read_bytes())
    except (OSError, ValueError):
        return False
    own = serialization.load_pem_private_key(private_pem, password=None).public_key()
    return key_id(own) in trusted


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: parley-init-secrets DIR", file=sys.stderr)
        return 2
    directory = Path(argv[1])
    directory.mkdir(parents=True, exist_ok=True)
    created = []
    if _write_once(directory / PRIVATE_KEY, generate_private_key_pem()):
        created.append(PRIVATE_KEY)
    private = (directory / PRIVATE_KEY).read_bytes()
    public = public_key_pem(private)
    # A bundle that already trusts this key is kept: during a rotation it holds the old key too.
    if not _trusts(directory / PUBLIC_KEY, private):
        (directory / PUBLIC_KEY).write_bytes(public)
        created.append(PUBLIC_KEY)
    if _write_once(directory / PAGE_TOKEN_SECRET, secrets.token_hex(32).encode()):
        created.append(PAGE_TOKEN_SECRET)
    print(f"secrets in {directory}: " + (f"created {', '.join(created)}" if created else "all present"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
