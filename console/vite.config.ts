// The console's build: `npm run build` (run by `make install`) writes dist/, which the REST
// edge serves at `/` (services/rest/console.py). `npx vite` serves it for development with the
// API proxied to a running edge (`make run`, port 8080).
import { defineConfig } from "vite";

export default defineConfig({
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "dist",
    assetsDir: "assets",
    target: "es2022",
    sourcemap: false,
    // No inline scripts anywhere (the edge's Content-Security-Policy forbids them).
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
  },
  server: { proxy: { "/v1": "http://127.0.0.1:8080" } },
});
