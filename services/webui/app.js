// Polls /json every second and draws hashes/second over the last two minutes,
// as the original webui did; polls /api/status for the backends' state and
// /api/hops for each hop's rate and latency.
"use strict";

const WINDOW = 120; // samples kept (seconds)
const SMOOTH = 5; // seconds averaged for the big number (workers report once a second)
const samples = []; // {t: unix seconds, h: hashes}

const $ = (id) => document.getElementById(id);
const fmt = (n) => Math.round(n).toLocaleString("en-US");

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function rateOver(seconds) {
  if (samples.length < 2) return null;
  const last = samples[samples.length - 1];
  let first = samples[0];
  for (const s of samples) {
    if (last.t - s.t <= seconds) { first = s; break; }
  }
  if (last.t === first.t) return null;
  return (last.h - first.h) / (last.t - first.t);
}

async function pollScore() {
  try {
    const response = await fetch("/json", { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) {
      showError(body.error || `webui answered ${response.status}`);
      return;
    }
    $("error").hidden = true;
    const previous = samples[samples.length - 1];
    if (previous && body.hashes < previous.h) samples.length = 0; // counter was reset
    samples.push({ t: body.now, h: body.hashes });
    while (samples.length > WINDOW + 1) samples.shift();
    $("hashes").textContent = fmt(body.hashes);
    $("coins").textContent = fmt(body.coins);
    const rate = rateOver(SMOOTH);
    $("rate").textContent = rate === null ? "–" : rate < 100 ? rate.toFixed(1) : fmt(rate);
    draw();
  } catch (error) {
    showError("webui is not answering");
  }
}

// The chart's vertical axis: at most 5 steps on round numbers (1, 2, 2.5 or 5
// times a power of ten) above the highest rate, so a reader can say "about
// 10 hashes/s" at a glance.
function roundAxis(highest) {
  const reach = Math.max(highest * 1.1, 1);
  const power = 10 ** Math.floor(Math.log10(reach / 5));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => reach / s <= 5);
  let decimals = 0;
  while (decimals < 3 && Math.abs(step * 10 ** decimals - Math.round(step * 10 ** decimals)) > 1e-9) decimals++;
  return { step, lines: Math.ceil(reach / step), decimals };
}

// Drawn at the size the canvas is shown, in CSS pixels (sharp at any pixel
// ratio), so its labels stay legible on a phone as on a projector.
function draw() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 1200;
  const h = Math.max(180, Math.round(w * 0.35));
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  const small = w < 600;
  const pad = { left: small ? 44 : 70, right: 14, top: 14, bottom: small ? 28 : 34 };
  ctx.clearRect(0, 0, w, h);

  // Per-second rates, smoothed over 3 samples so the once-a-second updates
  // of the workers do not saw-tooth.
  const points = [];
  for (let i = 3; i < samples.length; i++) {
    const a = samples[i - 3], b = samples[i];
    if (b.t > a.t) points.push({ t: b.t, r: (b.h - a.h) / (b.t - a.t) });
  }
  const now = samples.length ? samples[samples.length - 1].t : 0;
  const axis = roundAxis(Math.max(0, ...points.map((p) => p.r)));
  const x = (t) => pad.left + (w - pad.left - pad.right) * (1 - (now - t) / WINDOW);
  const y = (r) => h - pad.bottom - (h - pad.top - pad.bottom) * (r / (axis.step * axis.lines));

  ctx.font = `${small ? 14 : 18}px system-ui, sans-serif`;
  ctx.fillStyle = "#a9b8cc";
  ctx.strokeStyle = "#2a4060";
  ctx.lineWidth = 1;
  for (let i = 0; i <= axis.lines; i++) {
    const r = i * axis.step;
    ctx.beginPath();
    ctx.moveTo(pad.left, y(r));
    ctx.lineTo(w - pad.right, y(r));
    ctx.stroke();
    ctx.fillText(r.toLocaleString("en-US", { maximumFractionDigits: axis.decimals }), 6, y(r) + 6);
  }
  ctx.fillText("−2 min", pad.left, h - 8);
  ctx.textAlign = "right";
  ctx.fillText("now", w - pad.right, h - 8);
  ctx.textAlign = "left";

  if (points.length < 2) return;
  ctx.strokeStyle = "#2496ed";
  ctx.lineWidth = 3;
  ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.r)) : ctx.moveTo(x(p.t), y(p.r))));
  ctx.stroke();
}

// Health per replica address, from /api/status (every 3 s), with the load
// the replica reports (ORCA) and its share of calls under weighted round
// robin when webui has them; latency per replica, from /api/hops (every
// second): the servers' own measurements.
const health = new Map(); // address -> {status, error, utilization, weight, share}
let redisHealth = null;

async function pollStatus() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    const body = await response.json();
    for (const backend of [body.rng, body.hasher]) {
      const replicas = backend.replicas && backend.replicas.length ? backend.replicas : [backend];
      for (const r of replicas) {
        health.set(r.address || backend.url, {
          status: r.status,
          error: r.error,
          utilization: r.utilization,
          weight: r.weight,
          share: r.share,
        });
      }
    }
    redisHealth = { url: body.redis.url, status: body.redis.state.status, error: body.redis.state.error };
  } catch (error) {
    // /json already shows that webui is unreachable.
  }
}

// A fraction as a whole percentage ("1000%": ten times what it can take);
// "–" when webui has none (no report yet, or a webui older than the page).
const percent = (v) => (v == null ? "–" : `${Math.round(v * 100)}%`);

const ms = (v) => (v == null ? "–" : v >= 100 ? `${Math.round(v)} ms` : v >= 1 ? `${v.toFixed(1)} ms` : `${(v * 1000).toFixed(0)} µs`);

function hopRows(name, replicas) {
  return replicas.map((r) => {
    const state = health.get(r.address) || { status: r.error ? "UNREACHABLE" : "…", error: r.error };
    return {
      name,
      where: r.instance ? `${r.address} (${r.instance})` : r.address,
      state: state.status,
      error: r.error || state.error,
      rate: r.calls_per_second,
      p50: r.p50_ms,
      p99: r.p99_ms,
      queue: r.queue,
      slowest: r.slowest,
      faults: r.faults,
      reports: true,
      utilization: state.utilization,
      weight: state.weight,
      share: state.share,
    };
  });
}

// One line for the back of the room: the hop with the highest p50, named
// only when it stands out, at least STANDS_OUT times the p50 of every other
// hop; otherwise no hop is the bottleneck (one classroom worker: rng and
// hasher both take about 100 ms). dockercoins top applies the same rule.
const STANDS_OUT = 1.5;

function verdict(rows) {
  const measured = rows.filter((r) => r.p50 != null && r.rate > 0);
  if (!measured.length) return null;
  const worst = measured.reduce((a, b) => (b.p50 > a.p50 ? b : a));
  const others = measured.filter((r) => r.name !== worst.name);
  const next = others.length ? others.reduce((a, b) => (b.p50 > a.p50 ? b : a)) : null;
  if (next && worst.p50 < STANDS_OUT * next.p50) {
    return [null, `No hop stands out: ${worst.name} and ${next.name} take about as long (${ms(worst.p50)}, ${ms(next.p50)}).`];
  }
  const waiting = worst.queue ? `, ${worst.queue} requests waiting` : "";
  return [worst.name, ` is the slow hop: half its calls take over ${ms(worst.p50)}${waiting}.`];
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

async function pollHops() {
  try {
    const response = await fetch("/api/hops", { cache: "no-store" });
    const body = await response.json();
    const redis = body.redis.map((r) => ({
      name: "redis",
      where: redisHealth ? redisHealth.url : "",
      state: redisHealth ? redisHealth.status : "…",
      error: r.error || (redisHealth && redisHealth.error),
      rate: r.calls_per_second,
      p50: r.p50_ms,
      p99: r.p99_ms,
      queue: undefined,
      slowest: null,
      since: r.latency_since,
    }));
    const rows = [...hopRows("rng", body.rng), ...hopRows("hasher", body.hasher), ...redis];
    const worst = verdict(rows);
    const line = $("verdict");
    if (worst && worst[0]) {
      const strong = document.createElement("strong");
      strong.textContent = worst[0];
      line.replaceChildren(strong, worst[1]);
    } else if (worst) {
      line.replaceChildren(worst[1]);
    } else {
      line.replaceChildren();
    }
    const slowest = Math.max(0, ...rows.map((r) => r.p50 || 0));
    $("backends").replaceChildren(
      ...rows.map((r) => {
        const tr = document.createElement("tr");
        const state = cell(r.state, `state-${r.state}`);
        if (r.error) state.title = r.error;
        const named = worst && worst[0] === r.name;
        const slow = named && r.p50 != null && r.p50 === slowest ? "num slow" : "num";
        const p50 = cell(ms(r.p50), slow);
        if (r.since) p50.title = "Redis's own numbers, since it started";
        // Redis sends no load report: its cells are blank, as its queue's.
        const load = cell(r.reports ? percent(r.utilization) : "", "num wide");
        const share = cell(r.reports ? percent(r.share) : "", "num wide");
        if (r.reports && r.weight != null) share.title = `weight ${r.weight.toFixed(1)}: calls/s per 100% load`;
        const last = cell("", "wide");
        if (r.slowest && r.slowest.url) {
          const link = document.createElement("a");
          link.href = r.slowest.url;
          link.target = "_blank";
          link.rel = "noopener";
          link.textContent = `${ms(r.slowest.ms)} trace`;
          last.appendChild(link);
        } else if (r.slowest) {
          last.textContent = ms(r.slowest.ms);
        } else {
          last.textContent = "–";
        }
        // A replica told to misbehave says so next to its address.
        const where = cell(r.where, "wide");
        if (r.faults) {
          const faults = document.createElement("span");
          faults.className = "faults";
          faults.textContent = `injected: ${r.faults}`;
          where.append(" ", faults);
        }
        tr.append(
          cell(r.name),
          where,
          state,
          cell(r.rate == null ? "–" : r.rate.toFixed(1), "num wide"),
          p50,
          cell(ms(r.p99), "num wide"),
          cell(r.queue == null ? "" : String(r.queue), "num"),
          load,
          share,
          last,
        );
        return tr;
      }),
    );
  } catch (error) {
    // /json already shows that webui is unreachable.
  }
}

draw();
window.addEventListener("resize", draw);
pollScore();
pollStatus().then(pollHops);
setInterval(pollScore, 1000);
setInterval(pollStatus, 3000);
setInterval(pollHops, 1000);
