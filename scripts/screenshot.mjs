// Drives Picasso's web UI in headless Chromium like a user and saves a
// full-page screenshot of the job's result page. scripts/screenshot starts
// the server and installs playwright-core; run that, not this file.
//
// Usage: node screenshot.mjs URL PHOTO OUTPUT.png
// Environment:
//   PLAYWRIGHT_DIR            folder whose node_modules has playwright-core
//   CHROMIUM                  browser binary (default /usr/bin/chromium)
//   SCREENSHOT_WIDTH          viewport width in CSS pixels (default 900)
//   SCREENSHOT_MODELS         comma-separated model ids to tick
//                             (default efficientnet-lite0)
//   SCREENSHOT_VISUALIZATIONS comma-separated plugin ids to tick, or "all"
//                             for every plugin the chosen models can run
//                             (default class-probabilities,grad-cam,occlusion)
//   SCREENSHOT_TIMEOUT_S      seconds to wait for the job (default 600)
import { createRequire } from "node:module";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const [url, photo, output] = process.argv.slice(2);
if (!url || !photo || !output) {
  console.error("usage: node screenshot.mjs URL PHOTO OUTPUT.png");
  process.exit(2);
}

// At 900 pixels the single column of results fills most of the width;
// wider viewports leave the right half empty.
const width = Number(process.env.SCREENSHOT_WIDTH || 900);
const models = listFromEnvironment("SCREENSHOT_MODELS", "efficientnet-lite0");
// The results page shows one row per visualization, and with one model each
// row is a single column, so every heatmap plugin adds about 700 pixels of
// height. Grad-CAM and occlusion give the most legible maps of the bundled
// plugins on this photo.
const requestedPlugins = listFromEnvironment("SCREENSHOT_VISUALIZATIONS", "class-probabilities,grad-cam,occlusion");
const jobTimeoutMs = Number(process.env.SCREENSHOT_TIMEOUT_S || 600) * 1000;

// playwright-core is installed in a cache folder outside the repository, so
// it is resolved from there instead of from this file's folder.
const require = createRequire(resolve(process.env.PLAYWRIGHT_DIR || ".") + "/");
const { chromium } = require("playwright-core");

// Flags for a headless Chromium without a sandbox, GPU or network of its own
// (containers, CI machines).
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function listFromEnvironment(name, fallback) {
  return (process.env[name] || fallback)
    .split(",")
    .map((item) => item.trim())
    .filter(Boolean);
}

function log(message) {
  console.error("==> " + message);
}

async function fetchJson(path) {
  const response = await fetch(new URL(path, url));
  if (!response.ok) throw new Error(`GET ${path} failed with status ${response.status}`);
  return response.json();
}

/** Checks that the requested models and plugins are loaded and returns the
 *  plugin ids to tick, in the server's order. */
async function pluginsToTick() {
  const loadedModels = (await fetchJson("/api/models")).models.map((model) => model.id);
  for (const id of models) {
    if (!loadedModels.includes(id)) {
      throw new Error(`model "${id}" is not loaded (loaded: ${loadedModels.join(", ")}); set SCREENSHOT_MODELS`);
    }
  }
  const loaded = (await fetchJson("/api/visualizations")).visualizations.map((listing) => listing.descriptor.id);
  if (requestedPlugins.includes("all")) return loaded;
  for (const id of requestedPlugins) {
    if (!loaded.includes(id)) {
      throw new Error(
        `plugin "${id}" is not loaded (loaded: ${loaded.join(", ")}); ` +
          "build it with build_plugins from scripts/common.sh or set SCREENSHOT_VISUALIZATIONS"
      );
    }
  }
  return loaded.filter((id) => requestedPlugins.includes(id));
}

async function chooseModels(page) {
  for (const box of await page.locator('input[name="model"]').all()) {
    const chosen = models.includes(await box.getAttribute("value"));
    await box.setChecked(chosen);
  }
}

/** Ticks the given plugins and returns the ids ticked. The page disables a
 *  gradient plugin while a chosen model has no gradient graph. Such a plugin
 *  fails the run when it was requested by name, and is skipped under "all". */
async function chooseVisualizations(page, plugins) {
  const ticked = [];
  for (const id of plugins) {
    const box = page.locator(`input[name="visualization"][value="${id}"]`);
    if (await box.isDisabled()) {
      const reason = await page.locator(`.visualization[data-plugin="${id}"] .gradient-note`).textContent();
      if (!requestedPlugins.includes("all")) throw new Error(`the page disables plugin "${id}": ${reason}`);
      log(`skipping ${id}: ${reason}`);
      continue;
    }
    await box.check();
    ticked.push(id);
  }
  return ticked;
}

/** Sets occlusion's window and stride in its settings form. The default
 *  stride of half the window gives a blocky map. A quarter of the window is
 *  smoother, and took 17 to 45 s on a busy 2-core machine. */
async function tuneOcclusion(page) {
  const form = page.locator('.visualization[data-plugin="occlusion"] .settings');
  if (!(await form.isVisible())) return;
  await form.locator('[data-name="window"]').fill("32");
  await form.locator('[data-name="stride"]').fill("8");
}

/** Waits until the page shows the job's results, logging each progress text
 *  so that a stalled run is visible. */
async function waitForResults(page) {
  const deadline = Date.now() + jobTimeoutMs;
  let last = "";
  while (Date.now() < deadline) {
    const text = (await page.locator("#progress-text").textContent()) || "";
    if (text !== last) {
      log("progress: " + text);
      last = text;
    }
    if (await page.locator("#results").isVisible()) return;
    await page.waitForTimeout(500);
  }
  throw new Error(`the job did not finish in ${jobTimeoutMs / 1000} s; last progress text: "${last}"`);
}

async function waitForImages(page) {
  await page.waitForFunction(
    () => Array.from(document.images).every((image) => image.complete && image.naturalWidth > 0),
    null,
    { timeout: 30000 }
  );
}

async function failOnVisibleError(page, selector, what) {
  const notice = page.locator(selector);
  if (await notice.isVisible()) throw new Error(`${what}: ${await notice.textContent()}`);
}

async function takeScreenshot(page, plugins) {
  await page.goto(url, { waitUntil: "networkidle" });
  log("uploading " + photo);
  await page.locator("#file-input").setInputFiles(photo);
  await page.locator(".image-tile").first().waitFor({ timeout: 30000 });
  await failOnVisibleError(page, "#upload-error", "the upload failed");

  await chooseModels(page);
  const ticked = await chooseVisualizations(page, plugins);
  await tuneOcclusion(page);
  log(`running ${models.join(", ")} with ${ticked.join(", ")}`);
  const started = Date.now();
  await page.locator("#run-button").click();
  await page.locator("#job-progress").waitFor({ state: "visible", timeout: 5000 }).catch(() => {});
  await failOnVisibleError(page, "#run-error", "the run was rejected");
  await waitForResults(page);
  log(`results shown after ${((Date.now() - started) / 1000).toFixed(1)} s`);

  // The job's own page shows the results without the forms above them.
  await page.locator("#job-link").click();
  await page.locator("#results").waitFor({ state: "visible", timeout: 30000 });
  await waitForImages(page);
  const errors = await page.locator("#results .notice.error").allTextContents();
  if (errors.length > 0) throw new Error("the results contain errors: " + errors.join(" | "));

  await page.screenshot({ path: output, fullPage: true });
  log("wrote " + output);
}

async function main() {
  const plugins = await pluginsToTick();
  // playwright-core rejects --user-data-dir among the arguments and takes the
  // profile folder through a persistent context instead. The profile is
  // fresh and removed afterwards.
  const profile = mkdtempSync(join(tmpdir(), "picasso-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: width, height: 900 },
    deviceScaleFactor: 1,
    colorScheme: "light",
    args: CHROMIUM_ARGS,
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.on("pageerror", (error) => log("page error: " + error.message));
    page.on("console", (message) => {
      if (message.type() === "error") log("console error: " + message.text());
    });
    await takeScreenshot(page, plugins);
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((error) => {
  console.error("error: " + (error && error.message ? error.message : error));
  process.exit(1);
});
