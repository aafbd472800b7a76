// deploy dashboard: a plain page over the JSON API. Polls while a view is open; builds
// every element with textContent (never innerHTML with data from jobs).
"use strict";

const TOKEN = document.querySelector('meta[name="deploy-token"]').content;
const app = document.getElementById("app");
const COLORS = {Completed: "#2ca02c", Failed: "#d62728", Canceled: "#8c8c8c",
                Running: "#1f77b4", Pending: "#c7c7c7"};
const ORDER = ["Completed", "Failed", "Canceled", "Running", "Pending"];
const FINAL = ["Completed", "Failed", "Canceled"];
let generation = 0;            // bumped on every route change: old loops stop

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "style") node.style.cssText = value;   // CSSOM: allowed by the page's CSP
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function post(path) {
  return api(path, {method: "POST", headers: {"X-Deploy-Token": TOKEN}});
}

function loop(ms, fn) {
  // run fn now and every ms while this view is shown
  const mine = generation;
  const live = document.getElementById("live");
  async function tick() {
    if (mine !== generation) return;
    try { await fn(); live.classList.remove("stale"); }
    catch (e) { live.classList.add("stale"); console.error(e); }
    if (mine === generation) setTimeout(tick, ms);
  }
  tick();
}

const pad = (n) => String(n).padStart(2, "0");
function fmtTime(epoch) {
  if (!epoch) return "";
  const d = new Date(epoch * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
         `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function fmtDuration(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(Math.floor(s % 60))}s`;
  return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
}
const fmtCost = (c) => (c === null || c === undefined) ? "" : `$${c < 1 ? c.toFixed(4) : c.toFixed(2)}`;
const fmtNum = (n) => (n === null || n === undefined) ? "" : n.toLocaleString("en-US");
function workerLabel(r) {
  // as the timeline's lanes: host/worker, without the host the worker id starts with
  if (!r.host) return "";
  const worker = r.worker || "";
  return `${r.host}/${worker.startsWith(r.host + "-") ? worker.slice(r.host.length + 1) : worker}`;
}
const badge = (status) => el("span", {class: `badge ${status}`, text: status});

function progress(summary) {
  const total = summary.total || 0, counts = summary.counts || {};
  const bar = el("span", {class: "bar", title: ORDER.filter((k) => counts[k]).map((k) => `${k}: ${counts[k]}`).join(", ")});
  let left = 0;
  for (const k of ORDER) {
    if (!counts[k] || k === "Pending" || !total) continue;
    const width = 100 * counts[k] / total;
    bar.append(el("span", {style: `left:${left}%;width:${width}%;background:${COLORS[k]}`}));
    left += width;
  }
  return el("span", {class: "progress", "data-done": summary.done, "data-total": total},
            bar, " ", `${fmtNum(summary.done)} / ${fmtNum(total)}`);
}

function setActive(which) {
  document.getElementById("nav-jobs").className = which === "jobs" ? "active" : "";
  document.getElementById("nav-envs").className = which === "envs" ? "active" : "";
}

// -- the jobs list -----------------------------------------------------------------------

function jobsView() {
  setActive("jobs");
  const head = el("thead");
  const body = el("tbody");
  app.replaceChildren(el("h1", {text: "Jobs"}), el("table", {id: "jobs"}, head, body),
                      el("p", {class: "muted", id: "jobs-note"}));
  loop(1000, async () => {
    const {jobs} = await api("/api/jobs");
    const withCost = jobs.some((j) => j.cost !== null && j.cost !== undefined);
    const columns = ["Name", "Environment", "Status", "Progress", "Created", "Duration"];
    if (withCost) columns.push("Est. cost");
    head.replaceChildren(el("tr", {}, ...columns.map((c) => el("th", {text: c}))));
    body.replaceChildren(...jobs.map((j) => el("tr", {"data-name": j.name, "data-status": j.status},
      el("td", {}, el("a", {href: `#/job/${encodeURIComponent(j.name)}`, text: j.name})),
      el("td", {text: j.environment || ""}),
      el("td", {}, badge(j.status)),
      el("td", {}, progress(j)),
      el("td", {text: fmtTime(j.created)}),
      el("td", {class: "num", text: fmtDuration(j.duration)}),
      withCost ? el("td", {class: "num cost", text: fmtCost(j.cost)}) : null)));
    document.getElementById("jobs-note").textContent = jobs.length ? "" : "No jobs yet: deploy.map_job.create(...) makes one.";
  });
}

// -- one job -----------------------------------------------------------------------------

function jobView(name) {
  setActive("jobs");
  const base = `/api/jobs/${encodeURIComponent(name)}`;
  const state = {sort: "task", desc: false, status: "", offset: 0, limit: 50, last: null,
                 metricsAt: 0, timelineAt: 0, failuresAt: 0, finalSeen: false};
  const title = el("h1", {}, name, " ", el("span", {id: "job-status"}));
  const facts = el("dl", {class: "facts", id: "job-facts"});
  const prog = el("div", {id: "job-progress", class: "row"});
  const message = el("span", {id: "control-message", class: "muted"});
  const cancel = el("button", {id: "cancel-btn", class: "danger", text: "Cancel", onclick: () => control("cancel")});
  const resume = el("button", {id: "resume-btn", text: "Resume", onclick: () => control("resume")});
  const canvas = el("canvas", {id: "timeline"});
  const legend = el("div", {class: "legend", id: "timeline-legend"});
  const failures = el("div", {id: "failures"});
  const filter = el("select", {id: "status-filter", onchange: () => { state.status = filter.value; state.offset = 0; refreshMetrics(); }},
    el("option", {value: "", text: "all statuses"}), ...ORDER.map((s) => el("option", {value: s, text: s})));
  const pageSize = el("select", {id: "page-size", onchange: () => { state.limit = +pageSize.value; state.offset = 0; refreshMetrics(); }},
    ...[10, 50, 200].map((n) => el("option", {value: n, text: `${n} a page`, selected: n === 50 ? "" : null})));
  const metricsHead = el("thead"), metricsBody = el("tbody");
  const pager = el("div", {class: "pager"});
  const panel = el("div", {id: "task-panel", hidden: ""});
  app.replaceChildren(
    el("p", {}, el("a", {href: "#/", text: "← all jobs"})), title, facts, prog,
    el("div", {class: "row"}, cancel, resume, message),
    el("h2", {}, "Timeline ", el("a", {href: `${base}/timeline.png`, target: "_blank", class: "muted", text: "(PNG)"})),
    el("div", {id: "timeline-box"}, canvas, legend),
    el("h2", {}, "Tasks ", filter, " ", pageSize), el("table", {id: "metrics"}, metricsHead, metricsBody), pager, panel,
    el("h2", {id: "failures-title", text: "Failed tasks"}), failures);

  async function control(action) {
    cancel.disabled = resume.disabled = true;
    message.textContent = action === "cancel" ? "canceling…" : "resuming…";
    try {
      const summary = await post(`${base}/${action}`);
      message.textContent = `${action === "cancel" ? "canceled" : "resumed"}: ${summary.status}`;
      state.finalSeen = false;
      showSummary(summary);
      refreshAll();
    } catch (e) {
      message.textContent = `${action} failed: ${e.message}`;
      message.className = "error";
    }
  }

  function showSummary(s) {
    state.last = s;
    document.getElementById("job-status").replaceChildren(badge(s.status));
    const rows = [["Environment", `${s.environment || ""}${s.kind ? ` [${s.kind}]` : ""}`],
                  ["Function", s.function], ["Tasks", fmtNum(s.total)], ["Created", fmtTime(s.created)],
                  ["Started", fmtTime(s.started)], ["Duration", fmtDuration(s.duration)]];
    if (s.cost !== null && s.cost !== undefined) rows.push(["Estimated cost", fmtCost(s.cost)]);
    if (s.error) rows.push(["Error", s.error]);
    facts.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: v || ""})]));
    const counts = s.counts || {};
    prog.replaceChildren(progress(s), el("span", {class: "muted", text:
      ORDER.filter((k) => counts[k]).map((k) => `${k} ${fmtNum(counts[k])}`).join(" · ")}));
    const running = !FINAL.includes(s.status) && s.status !== "Unknown";
    cancel.disabled = !running;
    resume.disabled = running || s.status === "Completed" || s.status === "Unknown";
  }

  async function refreshMetrics() {
    const q = new URLSearchParams({sort: state.sort, desc: state.desc ? "1" : "0", offset: state.offset, limit: state.limit});
    if (state.status) q.set("status", state.status);
    const page = await api(`${base}/metrics?${q}`);
    const cols = [["task_name", "Task", "task"], ["status", "Status", "status"], ["start_time", "Started", "start_time"],
                  ["run_time", "Run time", "run_time"], ["attempt", "Attempt", "attempt"], ["worker", "Worker", "worker"],
                  ["exception", "Exception", null], ["peak_memory_mb", "Peak MB", null]];
    metricsHead.replaceChildren(el("tr", {}, ...cols.map(([, label, key]) => {
      const arrow = key === state.sort ? (state.desc ? " ▼" : " ▲") : "";
      return el("th", key ? {class: "sortable", "data-sort": key, onclick: () => {
        state.desc = state.sort === key ? !state.desc : false; state.sort = key; state.offset = 0; refreshMetrics();
      }} : {}, label + arrow);
    })));
    metricsBody.replaceChildren(...page.rows.map((r) => el("tr", {"data-task": r.task_index},
      el("td", {}, el("a", {class: "link", tabindex: "0", text: r.task_name, onclick: () => showTask(r.task_index)})),
      el("td", {}, badge(r.status)),
      el("td", {text: r.start_time ? fmtTime(r.start_time) : ""}),
      el("td", {class: "num", text: r.run_time === null || r.run_time === undefined ? "" : `${r.run_time.toFixed(3)} s`}),
      el("td", {class: "num", text: r.attempt ?? ""}),
      el("td", {text: workerLabel(r)}),
      el("td", {text: r.exception ? `${r.exception}: ${r.exception_message || ""}` : ""}),
      el("td", {class: "num", text: r.peak_memory_mb ?? ""}))));
    const last = Math.min(page.offset + page.rows.length, page.total);
    pager.replaceChildren(
      el("button", {id: "prev-page", text: "‹ prev", disabled: page.offset === 0 ? "" : null,
                    onclick: () => { state.offset = Math.max(0, state.offset - state.limit); refreshMetrics(); }}),
      el("span", {id: "page-info", text: page.total ? `rows ${fmtNum(page.offset + 1)}–${fmtNum(last)} of ${fmtNum(page.total)}` : "no rows"}),
      el("button", {id: "next-page", text: "next ›", disabled: last >= page.total ? "" : null,
                    onclick: () => { state.offset += state.limit; refreshMetrics(); }}));
  }

  async function refreshFailures() {
    const got = await api(`${base}/failures?limit=20`);
    document.getElementById("failures-title").textContent = `Failed tasks (${fmtNum(got.total)})`;
    if (!got.total) { failures.replaceChildren(el("p", {class: "muted", text: "None."})); return; }
    // the first three tracebacks open, the others one click away
    failures.replaceChildren(...got.rows.map((r, i) => el("details", {class: "failure", "data-task": r.task_index, open: i < 3 ? "" : null},
      el("summary", {}, el("b", {text: r.task_name}), " ", el("span", {class: "exception", text: `${r.exception || ""}: ${r.exception_message || ""}`}),
         " ", el("a", {class: "link", tabindex: "0", text: "log", onclick: () => showTask(r.task_index)})),
      r.exception_traceback ? el("pre", {class: "traceback", text: r.exception_traceback}) : el("p", {class: "muted", text: "no traceback (the task did not run)"}))),
      got.total > got.rows.length ? el("p", {class: "muted", text: `… and ${fmtNum(got.total - got.rows.length)} more (filter the table by Failed)`}) : "");
  }

  async function refreshTimeline() {
    const t = await api(`${base}/timeline.json`);
    drawTimeline(canvas, t);
    const items = ORDER.filter((k) => t.counts[k]).map((k) => el("span", {}, el("i", {style: `background:${COLORS[k]}`}), `${k} ${fmtNum(t.counts[k])}`));
    if (t.retried) items.push(el("span", {}, el("i", {style: "border:2px solid #000;width:8px;height:8px"}), `ran again ${fmtNum(t.retried)}`));
    if (t.losses.length) items.push(el("span", {text: `✕ worker lost ${t.losses.length}`}));
    items.push(el("span", {class: "muted", text: t.aggregated ? `${fmtNum(t.bars.lane.length)} bars for ${fmtNum(t.task_count)} tasks (bins of ${t.bin_seconds.toPrecision(3)} s)` : `${fmtNum(t.task_count)} tasks`}));
    legend.replaceChildren(...items);
  }

  async function showTask(index) {
    const got = await api(`${base}/tasks/${index}`);
    const r = got.row;
    panel.hidden = false;
    panel.replaceChildren(
      el("h2", {}, `Task ${r.task_name} `, badge(r.status), " ", el("button", {text: "close", onclick: () => { panel.hidden = true; }})),
      el("dl", {class: "facts"}, ...[["Run time", r.run_time === undefined || r.run_time === null ? "" : `${r.run_time.toFixed(3)} s`],
        ["Started", fmtTime(r.start_time)], ["Attempt", r.attempt], ["Worker", workerLabel(r)],
        ["Exception", r.exception ? `${r.exception}: ${r.exception_message || ""}` : ""]]
        .flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: v ?? ""})])),
      r.exception_traceback ? el("pre", {class: "traceback", text: r.exception_traceback}) : "",
      el("h2", {text: got.log_truncated ? "Output (the last 200 kB)" : "Output"}),
      el("pre", {id: "task-log", text: got.log || "(no output)"}));
    panel.scrollIntoView({block: "nearest"});
  }

  function refreshAll() {
    state.metricsAt = state.timelineAt = state.failuresAt = 0;
  }

  loop(1000, async () => {
    const s = await api(base);
    showSummary(s);
    const now = Date.now(), final = FINAL.includes(s.status) || s.status === "Unknown";
    const seen = `${s.status} ${s.started} ${s.done}`;
    if (seen !== state.seen) { state.seen = seen; state.finalSeen = false; }   // e.g. resumed elsewhere
    if (final && state.finalSeen) return;          // a finished job changes no more
    if (final) {                                   // once more, then no more
      state.finalSeen = true;
      await Promise.all([refreshMetrics(), refreshFailures(), refreshTimeline()]);
      return;
    }
    const jobs = [];                               // a running job: each part at its pace
    if (now - state.metricsAt > 2000) { state.metricsAt = now; jobs.push(refreshMetrics()); }
    if (now - state.failuresAt > 2000) { state.failuresAt = now; jobs.push(refreshFailures()); }
    if (now - state.timelineAt > 3000) { state.timelineAt = now; jobs.push(refreshTimeline()); }
    await Promise.all(jobs);
  });
}

function drawTimeline(canvas, t) {
  const lanes = Math.max(t.lanes.length, 1), laneH = 22, top = 8, bottom = 30;
  const ctx = canvas.getContext("2d");
  const width = canvas.parentElement.clientWidth - 16, height = top + lanes * laneH + bottom;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = width * ratio; canvas.height = height * ratio;
  canvas.style.height = `${height}px`;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px system-ui, sans-serif";
  const left = Math.min(200, 12 + Math.max(40, ...t.lanes.map((l) => ctx.measureText(l).width)));
  const span = t.span || 1, plotW = width - left - 12;
  const x = (s) => left + (s / span) * plotW;
  ctx.fillStyle = "#444"; ctx.textBaseline = "middle"; ctx.textAlign = "right";
  t.lanes.forEach((label, i) => ctx.fillText(label, left - 6, top + i * laneH + laneH / 2));
  if (!t.bars.lane.length) {
    ctx.textAlign = "left";
    ctx.fillText("no task has finished yet", left + 10, top + laneH / 2);
  }
  const b = t.bars;
  for (let i = 0; i < b.lane.length; i++) {
    const y = top + b.lane[i] * laneH + laneH * 0.1, w = Math.max(1, (b.width[i] / span) * plotW);
    ctx.fillStyle = t.colors[b.status[i]] || "#999";
    ctx.fillRect(x(b.start[i]), y, w, laneH * 0.8);
    if (b.retried[i]) { ctx.strokeStyle = "#000"; ctx.lineWidth = 1; ctx.strokeRect(x(b.start[i]), y, w, laneH * 0.8); }
  }
  ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
  for (const loss of t.losses) {
    if (loss.time === null) continue;
    const cx = x(loss.time), cy = top + loss.lane * laneH + laneH / 2;
    ctx.beginPath(); ctx.moveTo(cx - 5, cy - 5); ctx.lineTo(cx + 5, cy + 5); ctx.moveTo(cx + 5, cy - 5); ctx.lineTo(cx - 5, cy + 5); ctx.stroke();
  }
  const axisY = top + lanes * laneH + 4;
  ctx.strokeStyle = "#999"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(left, axisY); ctx.lineTo(left + plotW, axisY); ctx.stroke();
  const step = niceStep(span / 6);
  ctx.fillStyle = "#444"; ctx.textAlign = "center"; ctx.textBaseline = "top";
  for (let s = 0; s <= span + 1e-9; s += step) {
    ctx.beginPath(); ctx.moveTo(x(s), axisY); ctx.lineTo(x(s), axisY + 4); ctx.stroke();
    ctx.fillText(`${+s.toPrecision(3)} s`, x(s), axisY + 6);
  }
}

function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(raw || 1)));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

// -- environments ------------------------------------------------------------------------

function envsView() {
  setActive("envs");
  const body = el("tbody");
  app.replaceChildren(el("h1", {text: "Environments"}),
    el("table", {id: "environments"}, el("thead", {}, el("tr", {}, ...["Name", "Kind", "Saved", "Settings"].map((c) => el("th", {text: c})))), body),
    el("p", {class: "muted", id: "envs-note"}));
  loop(5000, async () => {
    const {environments} = await api("/api/environments");
    body.replaceChildren(...environments.map((e) => el("tr", {"data-name": e.name},
      el("td", {text: e.name}), el("td", {text: e.kind}), el("td", {text: fmtTime(e.saved)}),
      el("td", {}, el("pre", {class: "settings", text: JSON.stringify(e.settings, null, 2)})))));
    document.getElementById("envs-note").textContent = environments.length ? "" :
      "No saved environments (LocalAsync needs none; deploy envs create KIND saves one).";
  });
}

// -- routing -----------------------------------------------------------------------------

function route() {
  generation += 1;
  const hash = location.hash || "#/";
  if (hash.startsWith("#/job/")) jobView(decodeURIComponent(hash.slice(6)));
  else if (hash.startsWith("#/environments")) envsView();
  else jobsView();
}
window.addEventListener("hashchange", route);
route();
