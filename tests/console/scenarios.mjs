// The console's browser scenarios, one per run: `node scenarios.mjs NAME < config.json`.
// Each connects to the session's Chromium (browser.mjs), opens a fresh context, drives the
// console like a person (clicks, keys, drops), and prints `RESULT {json}` for the pytest test
// that prepared the data and checks the server's side. Any failed check, page error or
// Content-Security-Policy violation fails the scenario (a screenshot of the moment is saved).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const WAIT = 30_000;
const name = process.argv[2];
const config = JSON.parse(fs.readFileSync(0, "utf8"));
const theme = config.theme ?? "light";

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---- helpers -----------------------------------------------------------------------------------

async function shot(page, screen, as = theme) {
  const file = path.join(config.artifacts, `${screen}-${as}.png`);
  await page.screenshot({ path: file });
  return file;
}

async function signIn(page, key = config.key) {
  await page.goto(config.origin + (config.path ?? "/"));
  await page.fill("#credential", key);
  await page.click("[data-testid=signin-form] button[type=submit]");
  await page.waitForSelector("nav[aria-label=Sections]", { timeout: WAIT });
}

async function choose(page, value) {
  await page.waitForSelector(`[data-testid=target-picker] option[value="${value}"]`, { state: "attached", timeout: WAIT });
  await page.selectOption("[data-testid=target-picker]", value);
}

async function send(page, text) {
  await page.fill("[data-testid=composer]", text);
  await page.press("[data-testid=composer]", "Enter");
}

async function assistantTexts(page) {
  return page.$$eval("[data-testid=assistant-message] .message-body", (nodes) => nodes.map((n) => n.textContent));
}

/** Waits until no answer is being written and the Send button is back. */
async function waitIdle(page) {
  await page.waitForSelector("[data-testid=send-button]", { timeout: WAIT });
  await page.waitForFunction(() => !document.querySelector("[data-testid=typing-indicator]")
    && !document.querySelector("[data-streaming=true]"), null, { timeout: WAIT });
}

/** Starts sampling, in the page, the answer being written and the indicators. */
async function startRecording(page) {
  await page.evaluate(() => {
    window.__samples = [];
    window.__sampler = setInterval(() => {
      const bodies = document.querySelectorAll("[data-testid=assistant-message] .message-body");
      const last = bodies[bodies.length - 1];
      window.__samples.push({
        length: last ? last.textContent.length : 0,
        typing: Boolean(document.querySelector("[data-testid=typing-indicator]")),
        streaming: Boolean(document.querySelector("[data-streaming=true]")),
        reconnecting: Boolean(document.querySelector("[data-testid=reconnecting]")),
      });
    }, 20);
  });
}

async function stopRecording(page) {
  return page.evaluate(() => {
    clearInterval(window.__sampler);
    return window.__samples;
  });
}

async function waitForText(page, minimum) {
  await page.waitForFunction((min) => {
    const bodies = document.querySelectorAll("[data-testid=assistant-message] .message-body");
    const last = bodies[bodies.length - 1];
    return last && last.textContent.length >= min;
  }, minimum, { timeout: WAIT });
}

async function isFocused(page, selector) {
  return page.evaluate((s) => document.activeElement === document.querySelector(s), selector);
}

/** axe-core in the page (evaluated over the DevTools protocol, which the page's CSP does not
 * govern): the serious and critical violations. */
async function accessibility(page, screen) {
  const source = fs.readFileSync(path.resolve("node_modules/axe-core/axe.min.js"), "utf8");
  await page.evaluate(source);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const report = await axe.run(document, { resultTypes: ["violations"] });
    return report.violations.filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
  });
  check(result.length === 0, `${screen} (${theme}) has accessibility violations: ${JSON.stringify(result, null, 1)}`);
}

const threadIdOf = (page) => (/\/chat\/(thread_[0-9a-f]{32})/.exec(page.url()) ?? [])[1];

// ---- scenarios ---------------------------------------------------------------------------------

const SCENARIOS = {
  async sign_in({ page }) {
    await page.goto(config.origin + "/");
    await page.waitForSelector("#credential");
    await shot(page, "sign-in");
    await signIn(page);
    check(!page.url().includes(config.key), "the key must never be in the URL");
    const stored = await page.evaluate(() => ({ session: sessionStorage.getItem("parley.credential"), local: JSON.stringify(localStorage) }));
    check(stored.session === config.key, "the credential is kept in sessionStorage");
    check(!stored.local.includes(config.key), "the credential is never in localStorage");
    await page.waitForSelector("[data-testid=new-chat]");
    await page.click("[data-testid=sign-out]");
    await page.waitForSelector("#credential");
    const after = await page.evaluate(() => sessionStorage.getItem("parley.credential"));
    check(after === null, "signing out removes the credential");
    return { signedIn: true };
  },

  async wrong_key({ page }) {
    await page.goto(config.origin + "/");
    await page.fill("#credential", "sk-parley-this-is-not-a-key");
    await page.click("[data-testid=signin-form] button[type=submit]");
    const error = await page.waitForSelector("[data-testid=signin-error]", { timeout: WAIT });
    const text = await error.textContent();
    check(/not accepted/.test(text), `a clear message: ${text}`);
    check(await page.$("nav[aria-label=Sections]") === null, "still signed out");
    check(await page.evaluate(() => sessionStorage.getItem("parley.credential")) === null, "nothing stored");
    await shot(page, "sign-in-refused");
    return { message: text };
  },

  async jwt_sign_in({ page }) {
    // config.key is a JWT from the deployment's identity provider; config.title, a thread of
    // that user's made through the API with the same token.
    await signIn(page);
    check(!page.url().includes(config.key), "the token must never be in the URL");
    await page.waitForSelector(`[data-testid=session-item]:has-text(${JSON.stringify(config.title)})`, { timeout: WAIT });
    const titles = await page.$$eval("[data-testid=session-item]", (items) => items.map((item) => item.textContent));
    return { titles };
  },

  async streaming({ page }) {
    await signIn(page);
    await choose(page, `model:${config.model}`);
    await startRecording(page);
    await send(page, "Tell me about resumable streams.");
    await page.waitForSelector("[data-testid=typing-indicator]", { timeout: WAIT });
    await waitForText(page, Math.floor(config.expected.length / 3));
    await shot(page, "chat-streaming");
    await waitIdle(page);
    const samples = await stopRecording(page);
    const texts = await assistantTexts(page);
    const lengths = [...new Set(samples.map((s) => s.length).filter((l) => l > 0))];
    const partial = samples.filter((s) => s.length > 0 && s.length < config.expected.length);
    check(texts.length === 1 && texts[0].trim() === config.expected, `the answer, whole and once: ${JSON.stringify(texts)}`);
    check(partial.length >= 3 && lengths.length >= 3, `the answer grew piece by piece (${lengths.length} lengths seen): ${JSON.stringify(samples.filter((s, i) => i % 5 === 0))}`);
    check(partial.every((s) => s.typing), "the typing indicator showed while the answer was written");
    check(!samples[samples.length - 1].typing, "the typing indicator hid at the end");
    return { lengths: lengths.length, thread: threadIdOf(page) };
  },

  async stop({ page }) {
    await signIn(page);
    await choose(page, `model:${config.model}`);
    await send(page, "Go on forever.");
    await waitForText(page, 20);
    await page.click("[data-testid=stop-button]");
    await page.waitForSelector("[data-testid=run-status]", { timeout: WAIT });
    const status = await page.textContent("[data-testid=run-status]");
    check(/stopped/.test(status), `the run says it was stopped: ${status}`);
    await page.waitForSelector("[data-testid=send-button]", { timeout: WAIT });
    check(await page.$("[data-testid=typing-indicator]") === null, "no typing indicator after the stop");
    return { thread: threadIdOf(page) };
  },

  async function_call({ page }) {
    await signIn(page);
    await choose(page, `assistant:${config.assistant}`);
    await send(page, "What is the weather in Paris?");
    await page.waitForSelector("[data-testid=function-call-form]", { timeout: WAIT });
    const form = await page.textContent("[data-testid=function-call-form]");
    check(form.includes("get_weather") && form.includes("Paris"), `the call and its arguments are shown: ${form}`);
    check(await page.$("[data-testid=typing-indicator]") === null, "no typing indicator while the run waits for outputs");
    await page.fill("[data-testid=function-output]", config.output);
    await page.click("[data-testid=submit-outputs]");
    await page.waitForFunction((expected) => [...document.querySelectorAll("[data-testid=assistant-message]")]
      .some((m) => m.textContent.includes(expected)), config.expected, { timeout: WAIT });
    await waitIdle(page);
    const step = page.locator("[data-testid=tool-step][data-tool-type=function]").first();
    await step.locator("summary").click();
    const details = await step.textContent();
    check(details.includes(config.output.replace(/\s/g, "").slice(0, 10)) || details.includes("21"), `the output is on the step: ${details}`);
    check(await page.$("[data-testid=function-call-form]") === null, "the form is gone once answered");
    return { thread: threadIdOf(page) };
  },

  async upload({ page, context }) {
    await signIn(page);
    await page.click("text=Files");
    await page.fill("[data-testid=store-name]", "Manuals");
    await page.click("[data-testid=create-store]");
    await page.waitForSelector("[data-testid=store-view]", { timeout: WAIT });
    // Upload slowly enough to watch the bar move (loopback would finish before a frame).
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: config.throughput });
    await page.evaluate(() => {
      window.__progress = [];
      window.__progressSampler = setInterval(() => {
        const bar = document.querySelector("[data-testid=upload-progress]");
        const status = document.querySelector("[data-testid=upload-status]");
        window.__progress.push({ value: bar ? bar.value : null, status: status ? status.textContent : null });
      }, 15);
    });
    await page.setInputFiles("[data-testid=store-upload-input]", {
      name: config.filename, mimeType: "text/plain", buffer: Buffer.from(config.content, "utf8"),
    });
    await page.waitForSelector("[data-testid=upload][data-status=processed]", { timeout: WAIT * 2 });
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    const samples = await page.evaluate(() => {
      clearInterval(window.__progressSampler);
      return window.__progress;
    });
    const values = samples.map((s) => s.value).filter((v) => v !== null);
    const statuses = [...new Set(samples.map((s) => s.status).filter(Boolean))];
    check(values.some((v) => v > 0 && v < 1), `the bar showed progress between 0 and 1: ${JSON.stringify([...new Set(values)].slice(0, 20))}`);
    check(statuses.indexOf("uploading") >= 0 && statuses.indexOf("uploading") < statuses.indexOf("processed"),
      `uploading, then processed: ${statuses}`);
    await page.waitForFunction((file) => document.querySelector("[data-testid=store-files]")?.textContent.includes(file),
      config.filename, { timeout: WAIT });
    const store = new URL(page.url()).searchParams.get("store");
    return { statuses, store, distinct: new Set(values).size };
  },

  async attachments({ page, context }) {
    await signIn(page);
    await choose(page, `model:${config.model}`);
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: config.throughput });
    await page.evaluate(() => {
      window.__bars = [];
      window.__barSampler = setInterval(() => {
        for (const bar of document.querySelectorAll("[data-testid=attachment-progress]")) window.__bars.push(bar.value);
      }, 15);
    });
    // Dropped on the conversation, as a person drags files from their desktop.
    await page.evaluate(({ notes, png }) => {
      const files = new DataTransfer();
      files.items.add(new File([notes], "notes.txt", { type: "text/plain" }));
      files.items.add(new File([Uint8Array.from(atob(png), (c) => c.charCodeAt(0))], "dot.png", { type: "image/png" }));
      const target = document.querySelector("[data-testid=conversation]");
      target.dispatchEvent(new DragEvent("dragover", { dataTransfer: files, bubbles: true, cancelable: true }));
      target.dispatchEvent(new DragEvent("drop", { dataTransfer: files, bubbles: true, cancelable: true }));
    }, { notes: config.notes, png: config.png });
    await page.waitForFunction(() => document.querySelectorAll("[data-testid=attachment] .badge.completed").length === 2, null, { timeout: WAIT * 2 });
    await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    const bars = await page.evaluate(() => {
      clearInterval(window.__barSampler);
      return window.__bars;
    });
    check(bars.some((v) => v > 0 && v < 1), `the upload bars moved: ${JSON.stringify([...new Set(bars)].slice(0, 10))}`);
    await send(page, "What do you make of these?");
    await page.waitForFunction((expected) => [...document.querySelectorAll("[data-testid=assistant-message]")]
      .some((m) => m.textContent.includes(expected)), config.expected, { timeout: WAIT });
    await waitIdle(page);
    const question = page.locator("[data-testid=user-message]").first();
    await question.locator("img.message-image").waitFor({ timeout: WAIT });
    const source = await question.locator("img.message-image").getAttribute("src");
    check(source.startsWith("blob:"), `the image is fetched with the key and shown from a blob: ${source}`);
    check((await question.textContent()).includes("Attachment file-"), "the attached file is listed");
    check(await page.$$eval("[data-testid=attachment]", (n) => n.length) === 0, "the composer is cleared");
    return { thread: threadIdOf(page) };
  },

  async citation({ page }) {
    await signIn(page);
    await choose(page, `assistant:${config.assistant}`);
    await send(page, "How long do refunds take?");
    await page.waitForSelector("[data-testid=citation-link]", { timeout: WAIT });
    await waitIdle(page);
    const step = page.locator("[data-testid=tool-step][data-tool-type=file_search]").first();
    await step.locator("summary").click();
    check((await step.textContent()).includes(config.filename), "the file search step shows the file found");
    await shot(page, "chat-tool-steps");
    const link = page.locator("[data-testid=citation-link]").first();
    check((await link.textContent()).includes(config.filename), "the citation names its file");
    const inline = await page.$eval("[data-testid=assistant-message] .markdown a[data-internal]", (a) => a.getAttribute("href"));
    check(inline === `/files/${config.file}`, `the marker in the text links to the file: ${inline}`);
    await link.click();
    await page.waitForSelector("[data-testid=file-name]", { timeout: WAIT });
    check(new URL(page.url()).pathname === `/files/${config.file}`, `the file's page: ${page.url()}`);
    check((await page.textContent("[data-testid=file-name]")) === config.filename, "the cited file's name");
    await page.waitForSelector("[data-testid=file-preview]", { timeout: WAIT });
    check((await page.textContent("[data-testid=file-preview]")).includes("45 days"), "the cited text is there");
    return { url: page.url() };
  },

  async code_interpreter({ page }) {
    // Every request the page makes to the files API, with its credential, and every URL.
    const urls = [];
    const fileRequests = [];
    page.on("request", (request) => {
      urls.push(request.url());
      if (new URL(request.url()).pathname.startsWith("/v1/files/")) {
        fileRequests.push({ path: new URL(request.url()).pathname, authorization: request.headers().authorization ?? null });
      }
    });
    await signIn(page);
    await choose(page, `assistant:${config.assistant}`);
    // Sampled in the page: the code step (its code, its printed output, its image) and the answer.
    await page.evaluate((printed) => {
      window.__samples = [];
      window.__sampler = setInterval(() => {
        const step = document.querySelector("[data-testid=tool-step][data-tool-type=code_interpreter]");
        const bodies = document.querySelectorAll("[data-testid=assistant-message] .message-body");
        const last = bodies[bodies.length - 1];
        window.__samples.push({
          step: Boolean(step),
          printed: Boolean(step && step.textContent.includes(printed)),
          answer: last ? last.textContent.length : 0,
        });
      }, 20);
    }, config.printed);
    await send(page, "Square one to five and plot them.");
    await page.waitForFunction((expected) => [...document.querySelectorAll("[data-testid=assistant-message]")]
      .some((m) => m.textContent.includes(expected)), config.expected, { timeout: WAIT * 2 });
    await waitIdle(page);
    const samples = await page.evaluate(() => {
      clearInterval(window.__sampler);
      return window.__samples;
    });
    const written = samples.filter((s) => s.answer > 0);
    const lengths = [...new Set(written.map((s) => s.answer))];
    check(written.length > 0 && written.every((s) => s.printed),
      `the step and its printed output were shown before the answer began: ${JSON.stringify(samples.filter((s, i) => i % 10 === 0))}`);
    check(lengths.length >= 3, `the answer streamed in after the step, piece by piece (${lengths.length} lengths seen)`);

    /** What the code step shows, opened: its code, its text outputs, its images (loaded or not). */
    const inspect = async () => {
      const step = page.locator("[data-testid=tool-step][data-tool-type=code_interpreter]");
      check(await step.count() === 1, `one code interpreter step: ${await step.count()}`);
      if (!(await step.evaluate((d) => d.open))) await step.locator("summary").click();
      await step.locator("img").waitFor({ timeout: WAIT });
      await page.waitForFunction(() => {
        const image = document.querySelector("[data-testid=tool-step][data-tool-type=code_interpreter] img");
        return image && image.complete;
      }, null, { timeout: WAIT });
      return step.evaluate((details) => ({
        title: details.querySelector("summary").textContent,
        pres: [...details.querySelectorAll("pre")].map((pre) => pre.textContent),
        images: [...details.querySelectorAll("img")].map((img) => ({
          src: img.getAttribute("src"), alt: img.alt, width: img.naturalWidth, height: img.naturalHeight })),
      }));
    };
    const live = await inspect();
    // Tall enough for the step (code, output, chart) and the answer under it.
    await page.setViewportSize({ width: 1280, height: 1100 });
    await page.locator("[data-testid=assistant-message]").last().scrollIntoViewIfNeeded();
    await accessibility(page, "chat with a code interpreter step");
    await shot(page, "chat-code-interpreter", "light");
    await page.click("[data-testid=theme-toggle]");
    await page.waitForFunction(() => document.documentElement.dataset.theme === "dark", null, { timeout: WAIT });
    await accessibility(page, "chat with a code interpreter step");
    await shot(page, "chat-code-interpreter", "dark");
    const fileLinks = await page.$$eval("[data-testid=assistant-message] .markdown a[data-internal]", (links) => links.map((a) => a.getAttribute("href")));

    // The same step as stored (the run's steps, read back after a reload).
    await page.reload();
    await page.waitForSelector("[data-testid=tool-step][data-tool-type=code_interpreter]", { timeout: WAIT });
    const stored = await inspect();

    const thread = threadIdOf(page);

    // The answer's link to the saved chart opens the file's page, which shows the image.
    await page.click("[data-testid=assistant-message] .markdown a[data-internal]");
    await page.waitForSelector("[data-testid=file-name]", { timeout: WAIT });
    await page.waitForFunction(() => document.querySelector("[data-testid=file-image] img")?.complete, null, { timeout: WAIT });
    const linked = await page.$eval("[data-testid=file-image] img", (img) => ({
      name: document.querySelector("[data-testid=file-name]").textContent, src: img.getAttribute("src"),
      width: img.naturalWidth, height: img.naturalHeight }));

    check(!urls.some((url) => url.includes(config.key)), "the key is never in a URL");
    return { live, stored, linked, fileRequests, fileLinks, lengths: lengths.length, thread };
  },

  async code_interpreter_live({ page }) {
    // The code prints a line, then waits until config.control (the test) lets it go on.
    await signIn(page);
    await choose(page, `assistant:${config.assistant}`);
    await send(page, "Print two lines.");
    const selector = "[data-testid=tool-step][data-tool-type=code_interpreter]";
    const state = () => page.$eval(selector, (details) => ({
      title: details.querySelector("summary").textContent,
      output: [...details.querySelectorAll("pre")].slice(1).map((pre) => pre.textContent).join(""),
      answers: document.querySelectorAll("[data-testid=assistant-message]").length,
    }));
    // The output's <pre>s follow the code's.
    await page.waitForFunction((s) => [...(document.querySelector(s)?.querySelectorAll("pre") ?? [])].slice(1)
      .some((pre) => pre.textContent.includes("first line")), selector, { timeout: WAIT * 2 });
    const waiting = await state();
    check(await page.$("[data-testid=stop-button]") !== null, "the run is still going while the code waits");
    await page.waitForURL(/\/chat\/thread_[0-9a-f]{32}/, { timeout: WAIT });
    const thread = threadIdOf(page);
    const released = await fetch(`${config.control}/go?thread=${thread}`, { method: "POST" });
    check(released.ok, `the test let the code go on: ${released.status} ${await released.text()}`);
    await page.waitForFunction((expected) => [...document.querySelectorAll("[data-testid=assistant-message]")]
      .some((m) => m.textContent.includes(expected)), config.expected, { timeout: WAIT * 2 });
    await waitIdle(page);
    return { waiting, done: await state(), thread };
  },

  async theme({ page, browser }) {
    await signIn(page);
    const colours = async () => page.evaluate(() => ({ theme: document.documentElement.dataset.theme, background: getComputedStyle(document.body).backgroundColor }));
    const becomes = (wanted) => page.waitForFunction((t) => document.documentElement.dataset.theme === t, wanted, { timeout: WAIT });
    const first = await colours();
    check(first.theme === "light", `follows the system's light setting: ${first.theme}`);
    await page.click("[data-testid=theme-toggle]");
    await becomes("dark");
    const second = await colours();
    check(second.background !== first.background, `the toggle switches to dark: ${JSON.stringify(second)}`);
    check(await page.getAttribute("[data-testid=theme-toggle]", "aria-label") === "Switch to light theme", "the toggle says what it does next");
    await page.reload();
    await page.waitForSelector("nav[aria-label=Sections]");
    check((await colours()).theme === "dark", "the choice survives a reload");
    await page.click("[data-testid=theme-toggle]");
    await becomes("light");
    check((await colours()).background === first.background, "and toggles back");
    // A person whose system is dark, with no choice made, gets the dark theme.
    const dark = await browser.newContext({ colorScheme: "dark", viewport: { width: 1280, height: 800 } });
    const other = await dark.newPage();
    await other.goto(config.origin + "/");
    await other.waitForSelector("#credential");
    const system = await other.evaluate(() => document.documentElement.dataset.theme);
    await dark.close();
    check(system === "dark", `follows the system's dark setting: ${system}`);
    return { light: first.background, dark: second.background };
  },

  async shortcut_new_chat({ page }) {
    config.path = `/chat/${config.thread}`;
    await signIn(page);
    await page.waitForSelector("[data-testid=conversation-title]:not(:empty)");
    await page.click("[data-testid=conversation-title]");
    await page.keyboard.press("Alt+KeyN");
    await page.waitForFunction(() => location.pathname === "/chat", null, { timeout: WAIT });
    await page.waitForFunction(() => document.activeElement?.id === "composer-input", null, { timeout: WAIT });
    check((await page.textContent("[data-testid=conversation-title]")) === "New chat", "a new chat");
    return {};
  },

  async shortcut_focus_input({ page }) {
    await signIn(page);
    await page.click("text=Assistants");
    await page.waitForSelector("[data-testid=assistant-editor]");
    await page.click("h2");
    await page.keyboard.press("/");
    await page.waitForFunction(() => document.activeElement?.id === "composer-input", null, { timeout: WAIT });
    check(new URL(page.url()).pathname === "/chat", "from another section, / goes to the chat");
    await page.click("[data-testid=conversation-title]");
    check(!(await isFocused(page, "#composer-input")), "focus left the box");
    await page.keyboard.press("/");
    await page.waitForFunction(() => document.activeElement?.id === "composer-input", null, { timeout: WAIT }); // / focuses it
    check((await page.inputValue("#composer-input")) === "", "the / is not typed into it");
    return {};
  },

  async shortcut_send({ page }) {
    await signIn(page);
    await choose(page, `model:${config.model}`);
    await page.click("[data-testid=composer]");
    await page.keyboard.type("First line");
    await page.keyboard.press("Shift+Enter");
    await page.keyboard.type("second line");
    check((await page.inputValue("[data-testid=composer]")) === "First line\nsecond line", "Shift+Enter adds a line");
    check(await page.$("[data-testid=user-message]") === null, "nothing sent yet");
    await page.keyboard.press("Enter");
    await page.waitForSelector("[data-testid=user-message]", { timeout: WAIT });
    await page.waitForFunction((expected) => [...document.querySelectorAll("[data-testid=assistant-message]")]
      .some((m) => m.textContent.includes(expected)), config.expected, { timeout: WAIT });
    await waitIdle(page);
    check((await page.textContent("[data-testid=user-message] .user-text")) === "First line\nsecond line", "Enter sent the message");
    check((await page.inputValue("[data-testid=composer]")) === "", "the box is empty again");
    return { thread: threadIdOf(page) };
  },

  async shortcut_stop({ page }) {
    await signIn(page);
    await choose(page, `model:${config.model}`);
    await send(page, "Never stop.");
    await waitForText(page, 20);
    await page.keyboard.press("Escape");
    await page.waitForSelector("[data-testid=run-status]", { timeout: WAIT });
    check(/stopped/.test(await page.textContent("[data-testid=run-status]")), "Esc stopped the run");
    await page.waitForSelector("[data-testid=send-button]", { timeout: WAIT });
    return { thread: threadIdOf(page) };
  },

  async shortcut_sessions({ page }) {
    // config.threads: newest first.
    config.path = `/chat/${config.threads[0]}`;
    await signIn(page);
    await page.waitForSelector(`[data-testid=session-item][data-thread-id="${config.threads[2]}"]`, { timeout: WAIT });
    const at = async (thread) => page.waitForFunction((t) => location.pathname === `/chat/${t}`, thread, { timeout: WAIT });
    await page.keyboard.press("Alt+ArrowDown");
    await at(config.threads[1]);
    await page.keyboard.press("Alt+ArrowDown");
    await at(config.threads[2]);
    await page.waitForFunction((title) => document.querySelector("[data-testid=conversation-title]")?.textContent === title,
      config.titles[2], { timeout: WAIT });
    await page.keyboard.press("Alt+ArrowUp");
    await at(config.threads[1]);
    // From inside the message box too.
    await page.click("[data-testid=composer]");
    await page.keyboard.press("Alt+ArrowUp");
    await at(config.threads[0]);
    return {};
  },

  async shortcut_help({ page }) {
    await signIn(page);
    await page.click("[data-testid=conversation-title]");
    await page.keyboard.press("?");
    await page.waitForSelector("[data-testid=help-overlay]", { timeout: WAIT });
    const text = await page.textContent("[data-testid=help-overlay]");
    for (const keys of ["Alt + N", "Enter", "Esc", "Alt + ↓", "Alt + ↑", "?", "/"]) check(text.includes(keys), `help lists ${keys}`);
    await page.waitForFunction(() => document.activeElement?.closest("[role=dialog]"), null, { timeout: WAIT }); // focus moves into it
    await accessibility(page, "help");
    await shot(page, "help");
    await page.keyboard.press("Escape");
    await page.waitForSelector("[data-testid=help-overlay]", { state: "detached", timeout: WAIT });
    await page.click("[data-testid=help-button]");
    await page.waitForSelector("[data-testid=help-overlay]", { timeout: WAIT });
    await page.click("[data-testid=help-overlay] button");
    await page.waitForSelector("[data-testid=help-overlay]", { state: "detached", timeout: WAIT });
    await page.waitForFunction(() => document.activeElement?.dataset.testid === "help-button", null, { timeout: WAIT }); // focus returns
    return {};
  },

  async reload_resume({ page }) {
    await signIn(page);
    await choose(page, `model:${config.model}`);
    await send(page, "A long answer, please.");
    await waitForText(page, Math.floor(config.expected.length / 4));
    const before = (await assistantTexts(page))[0];
    check(before.length < config.expected.length, "reloading while the answer is still being written");
    await page.reload();
    await page.waitForSelector("nav[aria-label=Sections]", { timeout: WAIT });
    await startRecording(page);
    await page.waitForSelector("[data-testid=typing-indicator]", { timeout: WAIT });
    await waitIdle(page);
    const samples = await stopRecording(page);
    const texts = await assistantTexts(page);
    check(texts.length === 1, `one answer after the reload: ${texts.length}`);
    check(texts[0].trim() === config.expected, `the whole answer, no text twice: ${JSON.stringify(texts[0])}`);
    check(samples.some((s) => s.streaming && s.length > 0 && s.length < config.expected.length), "it went on streaming after the reload");
    check((await page.$$("[data-testid=user-message]")).length === 1, "the question once");
    return { before: before.length, thread: threadIdOf(page) };
  },

  async network_drop({ page }) {
    await signIn(page);
    await choose(page, `model:${config.model}`);
    await startRecording(page);
    await send(page, "Keep going while the network drops.");
    await waitForText(page, Math.floor(config.expected.length / 4));
    const cut = await fetch(config.control, { method: "POST" });
    check(cut.ok, "the proxy cut its connections");
    await waitIdle(page);
    const samples = await stopRecording(page);
    const texts = await assistantTexts(page);
    check(samples.some((s) => s.reconnecting), "the console said it was reconnecting");
    check(texts.length === 1 && texts[0].trim() === config.expected, `the whole answer once after the drop: ${JSON.stringify(texts)}`);
    return { thread: threadIdOf(page) };
  },

  async script_injection({ page }) {
    await signIn(page);
    await choose(page, `model:${config.model}`);
    await send(page, "Show me some HTML.");
    await page.waitForFunction(() => document.querySelector("[data-testid=assistant-message] .markdown strong"), null, { timeout: WAIT });
    await waitIdle(page);
    const seen = await page.evaluate(() => {
      const body = document.querySelector("[data-testid=assistant-message] .markdown");
      return {
        text: body.textContent,
        scripts: body.querySelectorAll("script").length,
        images: body.querySelectorAll("img").length,
        handlers: [...body.querySelectorAll("*")].filter((n) => [...n.attributes].some((a) => a.name.startsWith("on"))).length,
        pwned: window.__pwned ?? null,
        bold: body.querySelector("strong")?.textContent,
      };
    });
    check(seen.text.includes("<script>window.__pwned = 1</script>"), `the script tag is shown as text: ${seen.text}`);
    check(seen.scripts === 0 && seen.images === 0 && seen.handlers === 0, `no element from the model's HTML: ${JSON.stringify(seen)}`);
    check(seen.pwned === null, "nothing ran");
    check(seen.bold === "still Markdown", "Markdown is still rendered");
    await shot(page, "chat-html-as-text");
    return seen;
  },

  async sessions({ page }) {
    await signIn(page);
    await page.waitForSelector("[data-testid=session-item]", { timeout: WAIT });
    await page.fill("[data-testid=session-search]", "refund");
    await page.waitForFunction(() => document.querySelectorAll("[data-testid=session-item]").length === 2, null, { timeout: WAIT });
    const titles = await page.$$eval("[data-testid=session-item] .session-title", (nodes) => nodes.map((n) => n.textContent));
    check(JSON.stringify(titles) === JSON.stringify(["Refunds, second", "Refund policy"]), `matching titles, newest first: ${titles}`);
    // Rename the first.
    await page.click("[aria-label='Rename Refunds, second']");
    await page.fill("[id^=rename-]", "Refunds, renamed");
    await page.keyboard.press("Enter");
    await page.waitForFunction(() => [...document.querySelectorAll("[data-testid=session-item] .session-title")]
      .some((n) => n.textContent === "Refunds, renamed"), null, { timeout: WAIT });
    // Delete the other.
    await page.click("[aria-label='Delete Refund policy']");
    await page.click("[data-testid=session-item] .button.danger");
    await page.waitForFunction(() => document.querySelectorAll("[data-testid=session-item]").length === 1, null, { timeout: WAIT });
    await page.fill("[data-testid=session-search]", "");
    await page.waitForFunction((n) => document.querySelectorAll("[data-testid=session-item]").length === n, config.remaining, { timeout: WAIT });
    // Pagination: the first page holds 20.
    if (config.remaining > 20) {
      check(await page.$("[data-testid=sessions-more]") !== null, "a Load more button");
    }
    return {};
  },

  async feedback_and_export({ page }) {
    config.path = `/chat/${config.thread}`;
    await signIn(page);
    await page.waitForSelector("[data-testid=feedback]", { timeout: WAIT });
    await page.click("[data-testid=feedback] [aria-label='Good answer']");
    await page.waitForSelector("[data-testid=feedback] [aria-label='Good answer'][aria-pressed=true]", { timeout: WAIT });
    await page.click("[data-testid=feedback] .link-button");
    await page.fill("[data-testid=feedback] textarea", "Clear and short.");
    await page.click("[data-testid=feedback] form button[type=submit]");
    await page.waitForSelector("[data-testid=feedback] form", { state: "detached", timeout: WAIT });
    const saved = async (button) => {
      const [download] = await Promise.all([page.waitForEvent("download", { timeout: WAIT }), page.click(button)]);
      const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "parley-export-")), download.suggestedFilename());
      await download.saveAs(file); // the browser is remote: its copy is fetched
      return { download, text: fs.readFileSync(file, "utf8") };
    };
    const markdownFile = await saved("[data-testid=export-markdown]");
    const jsonFile = await saved("[data-testid=export-json]");
    const download = [markdownFile.download];
    const json = [jsonFile.download];
    const markdown = markdownFile.text;
    const document_ = JSON.parse(jsonFile.text);
    return { markdown, markdownName: download[0].suggestedFilename(), json: document_, jsonName: json[0].suggestedFilename() };
  },

  async assistant_editor({ page }) {
    await signIn(page);
    await page.click("text=Assistants");
    await page.waitForSelector("[data-testid=assistant-editor]");
    await page.fill("#assistant-name", "Support bot");
    await page.waitForSelector(`#assistant-model option[value="${config.model}"]`, { state: "attached" });
    await page.selectOption("#assistant-model", config.model);
    await page.fill("#assistant-instructions", "You help {{customer}} with {{product}}.");
    check((await page.textContent("#instructions-help")).includes("customer"), "the variables are listed");
    await page.check("text=File search");
    await page.check(`text=${config.storeName}`);
    await page.fill("#assistant-functions", "[{\"name\": \"lookup_order\", \"parameters\": {\"type\": \"object\"}}");
    await page.click("[data-testid=save-assistant]");
    const error = await page.waitForSelector("[data-testid=editor-error]", { timeout: WAIT });
    check((await error.textContent()).includes("not valid JSON"), "bad JSON is refused with a clear message");
    await page.fill("#assistant-functions", "[{\"name\": \"lookup_order\", \"description\": \"An order\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}]");
    await page.click("[data-testid=save-assistant]");
    await page.waitForFunction(() => /\/assistants\/asst_[0-9a-f]{32}$/.test(location.pathname), null, { timeout: WAIT });
    const assistant = location => location.split("/").pop();
    const id = assistant(new URL(page.url()).pathname);
    await page.waitForSelector(`[data-testid=assistant-item][href="/assistants/${id}"]`, { timeout: WAIT });
    await shot(page, "assistants");
    // Chat with it: the variables are asked for and sent with the run.
    await page.click("text=Chat with it");
    await page.waitForSelector("[data-testid=variable-customer]", { timeout: WAIT });
    await page.fill("[data-testid=variable-customer]", "Ada");
    await page.fill("[data-testid=variable-product]", "Parley");
    await send(page, "Hello");
    await page.waitForFunction((expected) => [...document.querySelectorAll("[data-testid=assistant-message]")]
      .some((m) => m.textContent.includes(expected)), config.expected, { timeout: WAIT });
    await waitIdle(page);
    return { assistant: id, thread: threadIdOf(page) };
  },

  async screens({ page }) {
    // The main screens for docs/console.md, each checked with axe-core.
    await page.goto(config.origin + "/");
    await page.waitForSelector("#credential");
    await accessibility(page, "sign-in");
    await shot(page, "sign-in");
    config.path = `/chat/${config.toolThread}`;
    await signIn(page);
    await page.waitForSelector("[data-testid=tool-step]", { timeout: WAIT });
    for (const step of await page.$$("[data-testid=tool-step] summary")) await step.click();
    await page.waitForSelector("[data-testid=citation-link]");
    await accessibility(page, "chat with tool steps");
    await shot(page, "chat-tool-steps");
    // Mid-stream.
    await page.click("[data-testid=new-chat]");
    await choose(page, `model:${config.model}`);
    await send(page, "How do resumable streams work?");
    await waitForText(page, Math.floor(config.expected.length / 3));
    await shot(page, "chat-streaming");
    await accessibility(page, "chat while streaming");
    await waitIdle(page);
    await page.click("nav >> text=Assistants");
    await page.click(`[data-testid=assistant-item][href="/assistants/${config.assistant}"]`);
    await page.waitForSelector("#assistant-name");
    await accessibility(page, "assistants");
    await shot(page, "assistants");
    await page.click("nav >> text=Files");
    await page.click(`[data-testid=store-item][href="/files?store=${config.store}"]`);
    await page.waitForSelector("[data-testid=store-files]", { timeout: WAIT });
    await page.fill("[data-testid=store-search]", "refund");
    await page.press("[data-testid=store-search]", "Enter");
    await page.waitForSelector("[data-testid=search-results]", { timeout: WAIT });
    await accessibility(page, "files");
    await shot(page, "files");
    await page.click("nav >> text=Usage");
    await page.waitForSelector("[data-testid=tokens-chart] canvas", { timeout: WAIT });
    await page.waitForSelector("[data-testid=cost-chart] canvas", { timeout: WAIT });
    await page.waitForSelector("[data-testid=budgets] .limits", { timeout: WAIT });
    const table = await page.textContent("[data-testid=usage-table]");
    check(table.includes(config.usageModel), "usage per model lists the model used");
    await accessibility(page, "usage");
    await shot(page, "usage");
    return {};
  },
};

// ---- the run -----------------------------------------------------------------------------------

const browser = await chromium.connect(config.endpoint);
const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: theme, acceptDownloads: true });
const page = await context.newPage();
const problems = [];
page.on("console", (message) => {
  if (message.type() === "error" && /Content Security Policy|Refused to/i.test(message.text())) problems.push(message.text());
});
page.on("pageerror", (error) => problems.push(`uncaught in the page: ${error.message}`));
try {
  if (!SCENARIOS[name]) throw new Error(`no scenario ${name}`);
  const result = await SCENARIOS[name]({ page, context, browser });
  check(problems.length === 0, `the page reported problems:\n${problems.join("\n")}`);
  console.log("RESULT " + JSON.stringify(result ?? {}));
} catch (error) {
  await page.screenshot({ path: path.join(config.artifacts, `failed-${name}-${theme}.png`) }).catch(() => {});
  console.log(`scenario ${name} (${theme}) failed at ${page.url()}:\n${error.stack ?? error}`);
  if (problems.length) console.log(`the page reported:\n${problems.join("\n")}`);
  process.exitCode = 1;
} finally {
  await context.close().catch(() => {});
  await browser.close().catch(() => {});
}
