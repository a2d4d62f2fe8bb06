// Polls /json every second and draws hashes/second over the last two minutes,
// as the original webui did; polls /api/status for the backends' state.
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

function draw() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  const pad = { left: 90, right: 20, top: 20, bottom: 40 };
  ctx.clearRect(0, 0, w, h);

  // Per-second rates, smoothed over 3 samples so the once-a-second updates
  // of the workers do not saw-tooth.
  const points = [];
  for (let i = 3; i < samples.length; i++) {
    const a = samples[i - 3], b = samples[i];
    if (b.t > a.t) points.push({ t: b.t, r: (b.h - a.h) / (b.t - a.t) });
  }
  const now = samples.length ? samples[samples.length - 1].t : 0;
  const max = Math.max(1, ...points.map((p) => p.r)) * 1.15;
  const x = (t) => pad.left + (w - pad.left - pad.right) * (1 - (now - t) / WINDOW);
  const y = (r) => h - pad.bottom - (h - pad.top - pad.bottom) * (r / max);

  ctx.font = "22px system-ui, sans-serif";
  ctx.fillStyle = "#a9b8cc";
  ctx.strokeStyle = "#2a4060";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const r = (max / 4) * i;
    ctx.beginPath();
    ctx.moveTo(pad.left, y(r));
    ctx.lineTo(w - pad.right, y(r));
    ctx.stroke();
    ctx.fillText(r < 10 ? r.toFixed(1) : fmt(r), 8, y(r) + 7);
  }
  ctx.fillText("−2 min", pad.left, h - 8);
  ctx.fillText("now", w - pad.right - 45, h - 8);

  if (points.length < 2) return;
  ctx.strokeStyle = "#2496ed";
  ctx.lineWidth = 4;
  ctx.beginPath();
  points.forEach((p, i) => (i ? ctx.lineTo(x(p.t), y(p.r)) : ctx.moveTo(x(p.t), y(p.r))));
  ctx.stroke();
}

const previousCalls = new Map(); // instance -> {calls, t}

function replicaRows(name, backend) {
  const replicas = backend.replicas && backend.replicas.length ? backend.replicas : [backend];
  const now = Date.now() / 1000;
  return replicas.map((r) => {
    let rate = "–";
    if (r.instance && r.calls != null) {
      const before = previousCalls.get(r.instance);
      if (before && now > before.t) rate = ((r.calls - before.calls) / (now - before.t)).toFixed(1);
      previousCalls.set(r.instance, { calls: r.calls, t: now });
    }
    const label = r.instance ? `${r.address} (${r.instance})` : r.address || backend.url;
    return [name, label, r.status, r.latency_ms, rate, r.error];
  });
}

async function pollStatus() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    const body = await response.json();
    const rows = [
      ...replicaRows("rng", body.rng),
      ...replicaRows("hasher", body.hasher),
      ["redis", body.redis.url, body.redis.state.status, body.redis.state.latency_ms, "–", body.redis.state.error],
    ];
    const tbody = $("backends");
    tbody.replaceChildren(
      ...rows.map(([name, where, state, latency, rate, error]) => {
        const tr = document.createElement("tr");
        const cells = [name, where, state, latency == null ? "–" : `${latency.toFixed(1)} ms`, rate];
        cells.forEach((text, i) => {
          const td = document.createElement("td");
          td.textContent = text;
          if (i === 2) {
            td.className = `state-${state}`;
            if (error) td.title = error;
          }
          tr.appendChild(td);
        });
        return tr;
      }),
    );
  } catch (error) {
    // /json already shows that webui is unreachable.
  }
}

draw();
pollScore();
pollStatus();
setInterval(pollScore, 1000);
setInterval(pollStatus, 3000);
