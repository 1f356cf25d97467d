// Drives the `sluice serve` dashboard in headless Chromium (Debian's /usr/bin/chromium, through
// playwright-core: no browser download). Expects a server with at least one running query.
//
//   SLUICE_URL=http://127.0.0.1:PORT [SLUICE_TOKEN=T] [SCREENSHOT=dashboard.png] node dashboard.mjs
//
// (--url, --token and --screenshot override the environment.) Opens the queries table, clicks a
// running query, checks that its charts and last batch id move on, saves a full-page screenshot
// and prints one summary line. Exits non-zero with a message on any failure.
import { parseArgs } from "node:util";
import { chromium } from "playwright-core";

const { values: args } = parseArgs({
  options: { url: { type: "string" }, token: { type: "string" }, screenshot: { type: "string" } },
});
const url = (args.url ?? process.env.SLUICE_URL ?? "").replace(/\/+$/, "");
const token = args.token ?? process.env.SLUICE_TOKEN ?? "";
const screenshot = args.screenshot ?? process.env.SCREENSHOT ?? "dashboard.png";
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
// The progress endpoint keeps the last 100 batches: a chart at the cap no longer grows.
const PROGRESS_CAP = 100;

if (!url) {
  console.error("dashboard test: set SLUICE_URL (e.g. http://127.0.0.1:8080) or pass --url");
  process.exit(2);
}

class Failure extends Error {}

// Runs `fn`; a timeout or other error becomes a Failure carrying `message`.
async function step(message, fn) {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof Failure) throw e;
    throw new Failure(`${message} (${String(e.message).split("\n")[0]})`);
  }
}

const chartSvg = (key) => `.chart[data-chart="${key}"] svg`;

const browser = await chromium
  .launch({
    executablePath,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  })
  .catch((e) => {
    console.error(`dashboard test FAILED: cannot launch Chromium at ${executablePath}: ${e.message.split("\n")[0]}`);
    process.exit(1);
  });

const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(e.message));
page.on("console", (m) => {
  if (m.type() === "error") pageErrors.push(`console: ${m.text()} [${m.location().url}]`);
});

try {
  const start = url + "/" + (token ? `?token=${encodeURIComponent(token)}` : "");
  await step(`cannot open the dashboard at ${url}/`, async () => {
    const res = await page.goto(start, { waitUntil: "domcontentloaded", timeout: 15_000 });
    if (!res || !res.ok()) throw new Error(`HTTP ${res ? res.status() : "no response"}`);
  });

  const running = page.locator('#queries tbody tr[data-state="running"]').first();
  await step("no running query in the dashboard after 20 s", () => running.waitFor({ timeout: 20_000 }));
  const id = await running.getAttribute("data-query-id");
  if (!id) throw new Failure("the running query's row has no data-query-id");
  await running.click();
  await step(`clicking the row of query ${id} did not open #/query/${id}`, () =>
    page.waitForFunction((id) => decodeURIComponent(location.hash) === `#/query/${id}`, id, { timeout: 5_000 }),
  );

  await step("the input-rate chart drew no point after 20 s", () =>
    page.waitForFunction((sel) => Number(document.querySelector(sel)?.dataset.points) > 0, chartSvg("input-rate"), {
      timeout: 20_000,
    }),
  );
  const read = () =>
    page.evaluate((sel) => {
      const text = document.getElementById("last-batch")?.textContent ?? "";
      return {
        points: Number(document.querySelector(sel)?.dataset.points),
        batch: /^\d+$/.test(text.trim()) ? Number(text) : NaN,
      };
    }, chartSvg("input-rate"));
  const before = await read();
  if (!Number.isFinite(before.batch)) throw new Failure("#last-batch shows no batch id while the chart has points");

  await step(
    `the dashboard did not move on within 15 s (input-rate points ${before.points}, last batch ${before.batch})`,
    () =>
      page.waitForFunction(
        ({ sel, before, cap }) => {
          const points = Number(document.querySelector(sel)?.dataset.points);
          const batch = Number(document.getElementById("last-batch")?.textContent);
          return batch > before.batch && (points > before.points || before.points >= cap);
        },
        { sel: chartSvg("input-rate"), before, cap: PROGRESS_CAP },
        { timeout: 15_000, polling: 200 },
      ),
  );
  const after = await read();

  const durations = await page.getAttribute(chartSvg("durations"), "data-points");
  if (!(Number(durations) > 0)) throw new Failure(`the durations chart drew no point (data-points=${durations})`);
  const banner = page.locator("#banner");
  if (await banner.isVisible()) throw new Failure(`the dashboard shows an error banner: ${await banner.textContent()}`);
  if (pageErrors.length) throw new Failure(`errors in the page: ${pageErrors.join("; ")}`);

  await page.screenshot({ path: screenshot, fullPage: true });
  const name = await page.locator("h2").first().evaluate((h) => h.firstChild?.textContent ?? "");
  console.log(
    `dashboard ok: query ${id} (${name}) batch ${before.batch} -> ${after.batch}, ` +
      `input-rate points ${before.points} -> ${after.points}, durations points ${durations}; screenshot ${screenshot}`,
  );
} catch (e) {
  const msg = e instanceof Failure ? e.message : `unexpected error: ${e.stack || e}`;
  console.error(`dashboard test FAILED: ${msg}`);
  const banner = await page.locator("#banner").textContent().catch(() => null);
  if (banner) console.error(`  banner: ${banner}`);
  if (pageErrors.length) console.error(`  errors in the page: ${pageErrors.join("; ")}`);
  await page.screenshot({ path: screenshot, fullPage: true }).then(
    () => console.error(`  screenshot of the failure: ${screenshot}`),
    () => {},
  );
  process.exitCode = 1;
} finally {
  await browser.close();
}
