"""Each keyboard shortcut, from the keyboard: Alt+N, /, Enter (and Shift+Enter), Esc,
Alt+↓/Alt+↑ and ?."""

from __future__ import annotations


async def test_alt_n_starts_a_new_chat(console):
    thread = await console.call("POST", "/parley/threads", {"title": "An old chat"})
    await console.run("shortcut_new_chat", thread=thread["id"])


async def test_slash_focuses_the_message_box(console):
    await console.run("shortcut_focus_input")


async def test_enter_sends_and_shift_enter_adds_a_line(console):
    model = console.model()
    console.script(model, {"text": "Received both lines."})
    report = await console.run("shortcut_send", model=model, expected="Received both lines.")
    messages = (await console.call("GET", f"/parley/threads/{report['thread']}/messages"))["data"]
    assert messages[0]["content"][0]["text"]["value"] == "First line\nsecond line"


async def test_escape_stops_the_answer(console):
    model = console.model()
    console.script(model, {"text": "start ", "endless": True})
    report = await console.run("shortcut_stop", model=model)
    runs = (await console.call("GET", f"/threads/{report['thread']}/runs"))["data"]
    assert [r["status"] for r in runs] == ["cancelled"]


async def test_alt_arrows_move_between_chats(console):
    titles = ["Third", "Second", "First"]
    made = [await console.call("POST", "/parley/threads", {"title": t}) for t in reversed(titles)]
    threads = [t["id"] for t in reversed(made)]  # newest first, as listed
    await console.run("shortcut_sessions", threads=threads, titles=titles)


async def test_question_mark_opens_the_help_and_escape_closes_it(console):
    await console.run("shortcut_help")
