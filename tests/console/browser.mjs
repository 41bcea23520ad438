// One headless Chromium (Debian's, at the path given) for a whole test session, served over
// playwright's protocol: prints {"wsEndpoint": ...} and runs until its stdin closes.
// No browser is downloaded: playwright-core drives the system's chromium.
import { chromium } from "playwright-core";

// The machine's closed network makes Chromium's background services misbehave: off.
export const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

// A fresh profile (user-data-dir) of playwright's own, removed when the server closes.
const server = await chromium.launchServer({ executablePath: process.argv[2], headless: true, args: CHROMIUM_ARGS });
process.stdout.write(JSON.stringify({ wsEndpoint: server.wsEndpoint() }) + "\n");
process.stdin.resume();
const stop = async () => {
  await server.close();
  process.exit(0);
};
process.stdin.on("end", stop);
process.on("SIGTERM", stop);
