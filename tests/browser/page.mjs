// Opens webui's page in Debian's Chromium and reports, as one JSON object on
// stdout, what a student reads on it; tests/it/browser.rs starts the mesh,
// runs this and judges the report (it also reads Redis, which this does not).
//
//   node tests/browser/page.mjs URL SHOTS_DIR lab|verdict
//
// lab: waits for the chart, reads the big number five times, the verdict and
//      the table, checks the page at 1024x768 and 390x844 (scroll, font size,
//      screenshots), runs axe-core.
// verdict: waits for rng's and hasher's p50, reads the verdict and the table.
//
// CHROMIUM (default /usr/bin/chromium) names the browser; WAIT_SECONDS
// (default 90) bounds every wait, and a timeout says what was awaited.
import { chromium } from "playwright-core";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";

const [url, shots, mode] = process.argv.slice(2);
if (!url || !shots || !["lab", "verdict"].includes(mode)) {
  console.error("usage: node page.mjs URL SHOTS_DIR lab|verdict");
  process.exit(2);
}
const waitMs = 1000 * Number(process.env.WAIT_SECONDS || 90);
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

// The closed network refuses Chromium's own connections: without these flags
// it retries them and logs errors that are not the page's.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const report = { console_errors: [], failed_requests: [], csp_violations: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1024, height: 768 } });
  // Everything that went wrong, as the browser's console and network see it.
  page.on("console", (m) => m.type() === "error" && report.console_errors.push(m.text()));
  page.on("pageerror", (e) => report.console_errors.push(`uncaught: ${e.message}`));
  page.on("requestfailed", (r) => report.failed_requests.push(`${r.url()}: ${r.failure()?.errorText}`));
  page.on("response", (r) => r.status() >= 400 && report.failed_requests.push(`${r.url()}: ${r.status()}`));
  await page.addInitScript(() => {
    window.__csp = [];
    document.addEventListener("securitypolicyviolation", (e) =>
      window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI}`),
    );
  });
  await page.goto(url, { waitUntil: "load" });

  if (mode === "lab") {
    report.chart = await until("a chart of at least 10 points", () => chartOf(page), (c) => c.points >= 10);
    report.readings = [];
    for (let i = 0; i < 5; i++) {
      if (i) await sleep(2000);
      const text = await page.textContent("#rate");
      report.readings.push({ t: Date.now() / 1000, text });
    }
    Object.assign(report, await tableOf(page));
    report.viewports = [];
    for (const [width, height] of [[1024, 768], [390, 844]]) {
      await page.setViewportSize({ width, height });
      await sleep(1500); // a poll or two, laid out at the new size
      const shot = `${shots}/page-${width}x${height}.png`;
      await page.screenshot({ path: shot, fullPage: true });
      report.viewports.push({ width, height, shot, ...(await fitOf(page)) });
    }
    await page.setViewportSize({ width: 1024, height: 768 });
    report.axe = await axeOf(page);
  } else {
    await until("p50s of rng and hasher", () => tableOf(page), (t) =>
      ["rng", "hasher"].every((hop) => t.rows.some((r) => r.hop === hop && /\d/.test(r.p50))),
    );
    await sleep(6000); // a whole window of the hops' view
    Object.assign(report, await tableOf(page));
  }
  report.csp_violations = await page.evaluate(() => window.__csp);
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));

// Polls `read` every half second until `done` holds; fails saying what it
// awaited and what it saw last, or at once when the page has logged an error
// (a broken script never draws).
async function until(what, read, done) {
  const deadline = Date.now() + waitMs;
  let seen;
  while (Date.now() < deadline) {
    if (report.console_errors.length) {
      throw new Error(`awaiting ${what}, the page logged: ${report.console_errors.join("; ")}`);
    }
    seen = await read();
    if (done(seen)) return seen;
    await sleep(500);
  }
  throw new Error(`no ${what} within ${waitMs / 1000} s; last seen: ${JSON.stringify(seen)}`);
}

// The chart as drawn: the columns of the canvas where the line's colour is,
// counted as points at the chart's scale (120 s across the plot).
async function chartOf(page) {
  return page.evaluate(() => {
    const canvas = document.getElementById("chart");
    const { width, height } = canvas;
    const pixels = canvas.getContext("2d").getImageData(0, 0, width, height).data;
    const columns = [];
    for (let x = 0; x < width; x++) {
      for (let y = 0; y < height; y++) {
        const i = 4 * (y * width + x);
        // #2496ed, the line; anti-aliasing keeps the line's core exact.
        if (pixels[i] === 0x24 && pixels[i + 1] === 0x96 && pixels[i + 2] === 0xed) {
          columns.push(x);
          break;
        }
      }
    }
    if (columns.length < 2) return { points: columns.length, columns: columns.length };
    // The plot spans the canvas less its margins: at 1024 px, about 0.9 of
    // it (a smaller share over-counts the seconds, a larger one under-counts).
    const perSecond = (0.9 * width) / 120;
    const span = columns[columns.length - 1] - columns[0];
    return { points: Math.floor(span / perSecond) + 1, columns: columns.length, span };
  });
}

// The verdict and the table's headers (with their tooltips) and rows, as
// text.
async function tableOf(page) {
  return page.evaluate(() => ({
    verdict: document.getElementById("verdict").textContent,
    verdict_names: document.querySelector("#verdict strong")?.textContent ?? null,
    headers: [...document.querySelectorAll("thead th")].map((th) => ({ text: th.textContent, title: th.title })),
    rows: [...document.querySelectorAll("#backends tr")].map((tr) => {
      const cells = [...tr.cells].map((c) => c.textContent);
      return { hop: cells[0], state: cells[2], p50: cells[4], waiting: cells[6], load: cells[7], share: cells[8] };
    }),
  }));
}

// Whether the page fits the viewport, and the big number's size.
async function fitOf(page) {
  return page.evaluate(() => {
    const root = document.documentElement;
    const box = document.querySelector(".table-box");
    const rate = document.getElementById("rate");
    return {
      page_scrolls: root.scrollWidth > root.clientWidth,
      table_scrolls: box.scrollWidth > box.clientWidth,
      rate_font_px: parseFloat(getComputedStyle(rate).fontSize),
      rate_visible: rate.getBoundingClientRect().right <= root.clientWidth,
    };
  });
}

// axe-core's scan of the page, injected through the debugging protocol (not
// a <script>, which the page's policy would rightly refuse).
async function axeOf(page) {
  const require = createRequire(import.meta.url);
  const source = await readFile(require.resolve("axe-core/axe.min.js"), "utf8");
  await page.evaluate(source);
  const result = await page.evaluate(() => axe.run(document, { resultTypes: ["violations"] }));
  return {
    version: result.testEngine.version,
    rules_passed: result.passes.length,
    violations: result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length })),
  };
}
