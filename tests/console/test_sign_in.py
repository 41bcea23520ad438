"""Signing in with an API key, a refused key, and the theme (system default, toggle, kept)."""

from __future__ import annotations


async def test_sign_in_keeps_the_key_in_the_tab_only_and_sign_out_clears_it(console):
    report = await console.run("sign_in")
    assert report["signedIn"]


async def test_a_wrong_key_shows_a_clear_message(console):
    report = await console.run("wrong_key")
    assert "not accepted" in report["message"]


async def test_theme_follows_the_system_and_the_toggle_switches_and_is_kept(console):
    report = await console.run("theme")
    assert report["light"] != report["dark"]
