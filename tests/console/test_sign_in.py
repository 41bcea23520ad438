"""Signing in with an API key or a JWT, a refused key, and the theme (system default, toggle, kept)."""

from __future__ import annotations

import uuid

import aiohttp


async def test_sign_in_keeps_the_key_in_the_tab_only_and_sign_out_clears_it(console):
    report = await console.run("sign_in")
    assert report["signedIn"]


async def test_signing_in_with_a_jwt_from_the_identity_provider_shows_that_users_chats(console):
    user = f"user_jwt{uuid.uuid4().hex[:10]}"
    token = console.edge.stack.jwt(user)
    title = f"Planned with a JWT {uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {token}"}) as http:
        async with http.post(f"{console.origin}/v1/parley/threads", json={"title": title}) as response:
            assert response.status == 200, await response.text()
    report = await console.run("jwt_sign_in", key=token, title=title)
    # Only that user's chats: the API key user's own are not there.
    assert [t for t in report["titles"] if title in t] and len(report["titles"]) == 1, report


async def test_a_wrong_key_shows_a_clear_message(console):
    report = await console.run("wrong_key")
    assert "not accepted" in report["message"]


async def test_theme_follows_the_system_and_the_toggle_switches_and_is_kept(console):
    report = await console.run("theme")
    assert report["light"] != report["dark"]
