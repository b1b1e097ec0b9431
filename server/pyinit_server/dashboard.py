"""The live web dashboard of ``pyinit serve``: one self-contained HTML page at ``/``.

The page polls ``GET /api/machines`` once a second and shows every machine: its lifecycle
state (docs/lifecycle.md: since when, the evidence of its last move on hover, a deployment whose
first boot never came marked), its phase, a progress bar with rate and ETA, its result, its last
error, what is wrong with its machine file and when it was last heard from; clicking a machine
opens its event log (``GET /api/machines/{mac}``), refreshed on the same tick, under its
lifecycle state with the evidence and a short summary of its hardware (vendor, product, serial,
CPUs, memory, PCI devices) and of each NIC's LLDP neighbour (switch, port, VLAN). The counts
above the table filter by run state (``state=``) or by lifecycle state (``lifecycle=``); the
server filters and pages. See docs/dashboard.md.

Why one inline page and no framework: the server must stay installable with nothing but
Python, the page must work on a provisioning network with no way out (no CDN, no fonts), and
the whole UI is a table that a hundred lines of vanilla JS keep up to date.

Machine-supplied strings (errors, step names, any event field) are untrusted: the script only
ever sets ``textContent`` and never parses HTML. As a second line of defence the page is sent
with a Content-Security-Policy that allows only this page's own script and style (by hash) and
requests to this server, so an injected ``<img onerror=...>`` could neither run nor load.
"""

from __future__ import annotations

import base64
import hashlib
import json

from aiohttp import web

from pyinit_server import lifecycle

POLL_MS = 1000  # how often the page asks for /api/machines (and the open log)
PAGE_SIZE = 500  # machines per page: the server filters by state and pages

_CSS = """
:root { --fg: #1d2430; --muted: #6b7585; --line: #dde2ea; --bg: #f6f7f9; --ok: #1a7f37;
        --bad: #c62828; --run: #1f6feb; --warn: #b26a00; --wait: #8a94a6; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, sans-serif; color: var(--fg); background: var(--bg);
       display: flex; flex-direction: column; height: 100vh; }
header { display: flex; align-items: center; gap: 12px; padding: 8px 16px; background: #fff;
         border-bottom: 1px solid var(--line); flex-wrap: wrap; }
h1 { font-size: 16px; margin: 0 8px 0 0; }
.counts { display: flex; gap: 6px; }
.counts button { font: inherit; border: 1px solid var(--line); background: #fff;
                 border-radius: 12px; padding: 2px 10px; cursor: pointer; }
.counts button[aria-pressed="true"] { border-color: var(--fg);
                                      box-shadow: inset 0 0 0 1px var(--fg); }
.counts b { margin-left: 4px; }
.counts .label { color: var(--muted); font-size: 12px; align-self: center; }
.counts button.unconfirmed b { color: var(--warn); }
#filter { font: inherit; padding: 3px 8px; border: 1px solid var(--line); border-radius: 4px;
          width: 220px; }
#pager button { font: inherit; border: 1px solid var(--line); background: #fff;
                border-radius: 4px; padding: 0 8px; cursor: pointer; }
#updated { margin-left: auto; color: var(--muted); font-size: 12px; }
#banner { display: none; padding: 8px 16px; background: #fdecea; color: var(--bad);
          border-bottom: 1px solid #f5c2c0; font-weight: 600; }
body.stale #banner { display: block; }
body.stale #table { opacity: .55; }
main { flex: 1; overflow: auto; min-height: 0; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line);
         vertical-align: top; }
th { white-space: nowrap; position: sticky; top: 0; background: #eef1f5; font-size: 12px;
     color: var(--muted); text-transform: uppercase; letter-spacing: .03em; z-index: 1; }
tbody tr { cursor: pointer; }
tbody tr:hover { background: #f3f6fb; }
tbody tr.selected { background: #e7effd; }
.mac, .file, #log .ev { font-family: ui-monospace, monospace; font-size: 12.5px; }
td.mac, td.phase, td.progress, td.seen { white-space: nowrap; }
td.file { max-width: 340px; overflow-wrap: anywhere; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.bar { display: inline-block; width: 140px; height: 10px; border-radius: 5px; background: #e4e8ee;
       overflow: hidden; vertical-align: middle; margin-right: 6px; }
.fill { display: block; height: 100%; background: var(--run); width: 0; transition: width .4s; }
tr.ok .fill { background: var(--ok); }
tr.failed .fill { background: var(--bad); }
.pct { font-variant-numeric: tabular-nums; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; color: #fff; background: var(--wait); }
.badge.ok { background: var(--ok); }
.badge.failed { background: var(--bad); }
.badge.running { background: var(--run); }
.error { color: var(--bad); max-width: 380px; overflow-wrap: anywhere; }
.problem { display: block; color: var(--bad); font-family: system-ui, sans-serif; }
.problem.warning { color: var(--warn); }
.quiet { color: var(--warn); font-weight: 600; }
td.life { white-space: nowrap; }
.lstate { display: inline-block; padding: 0 7px; border-radius: 10px; font-size: 12px;
          font-weight: 600; border: 1px solid currentColor; color: var(--wait); }
.lstate.deploying, .lstate.cleaning { color: var(--run); }
.lstate.deployed, .lstate.inspected, .lstate.available { color: #0b6e79; }
.lstate.booted { color: var(--ok); }
.lstate.failed { color: var(--bad); }
.lsince { font-size: 12px; color: var(--muted); }
.lnote { display: block; font-size: 12px; color: var(--muted); }
.lnote:empty, .lwarn:empty { display: none; }
.lwarn { display: block; color: var(--warn); font-weight: 600; font-size: 12px;
         white-space: normal; max-width: 240px; }
tr.unconfirmed td.life { box-shadow: inset 3px 0 0 var(--warn); }
.muted { color: var(--muted); }
#empty td { color: var(--muted); text-align: center; padding: 24px; cursor: default; }
#log { display: none; flex: 0 0 38vh; flex-direction: column; border-top: 2px solid var(--line);
       background: #fff; min-height: 0; }
body.logging #log { display: flex; }
#log .head { display: flex; align-items: center; gap: 10px; padding: 6px 16px;
             border-bottom: 1px solid var(--line); }
#log .head button { margin-left: auto; font: inherit; }
#loglines { overflow: auto; padding: 4px 16px; flex: 1; }
#log .ev { white-space: pre-wrap; overflow-wrap: anywhere; padding: 1px 0; }
#log .ev .t { color: var(--muted); }
#log .ev .s { font-weight: 600; }
#log .ev.bad { color: var(--bad); }
#hw, #life { padding: 4px 16px; border-bottom: 1px solid var(--line); font-size: 13px; }
#hw:empty, #life:empty { display: none; }
#hw .k, #life .k { color: var(--muted); display: inline-block; min-width: 80px; }
#life .warn .v { color: var(--warn); font-weight: 600; }
"""

_JS = r"""
"use strict";
(() => {
  const POLL_MS = __POLL_MS__, TIMEOUT_MS = 5000, QUIET_S = 120, PAGE = __PAGE__;
  // the server's state names for the buttons (it filters and pages; the text box filters
  // the page shown)
  const SERVER_STATE = { running: "running", ok: "ok", failed: "failed", waiting: "new" };
  // the lifecycle filters (docs/lifecycle.md), in the order of their buttons; the server
  // filters by them too (lifecycle=) and counts them over the whole fleet
  const LIFE = __LIFE__;
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const pad = (n) => String(n).padStart(2, "0");
  const isNum = (x) => typeof x === "number" && isFinite(x);

  // -- formatting (pure; exposed as window.pyinitDashboard for tests) ------------------------
  function fmtRate(bps) {
    if (!isNum(bps) || bps < 0) return "";
    const units = ["B/s", "kB/s", "MB/s", "GB/s", "TB/s"];
    let i = 0;
    while (bps >= 1000 && i < units.length - 1) { bps /= 1000; i++; }
    return (i === 0 ? bps.toFixed(0) : bps.toFixed(1)) + " " + units[i];
  }
  function fmtEta(s) {
    if (!isNum(s) || s < 0) return "";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
  }
  function fmtDur(seconds) {
    if (!isNum(seconds)) return "";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h`;
    return `${Math.floor(s / 86400)} d`;
  }
  function fmtAge(seconds) { return isNum(seconds) ? `${fmtDur(seconds)} ago` : "never"; }
  // A machine's lifecycle (its summary's lifecycle and lifecycle_warning, the server's clock
  // in now) for its State cell: the state, for how long, the hover text with the evidence of
  // the last move, a pending redeploy and the warning. Every string only becomes text.
  function lifeCell(m, now) {
    const lc = m && m.lifecycle && typeof m.lifecycle === "object" ? m.lifecycle : null;
    const str = (x) => (x === undefined || x === null ? "" : String(x));
    const state = lc && LIFE.includes(lc.state) ? lc.state : "new";
    const dur = lc && isNum(lc.since) && isNum(now) ? fmtDur(now - lc.since) : "";
    const out = { state, since: dur ? `for ${dur}` : "", title: "", pending: "",
                  warning: str(m && m.lifecycle_warning) };
    if (!lc) {
      out.title = "new: nothing has moved this machine's lifecycle yet";
      return out;
    }
    const lines = [`${state}${dur ? ` for ${dur}` : ""}: ${str(lc.evidence) || "-"}`];
    if (lc.previous) lines.push(`before: ${str(lc.previous)}`);
    if (isNum(lc.since)) lines.push(`since ${new Date(lc.since * 1000).toLocaleString()}`);
    if (lc.pending === "redeploy") {
      out.pending = "redeploy pending";
      lines.push("redeploy requested: its next boot provisions it again");
    }
    if (out.warning) lines.push(`warning: ${out.warning}`);
    out.title = lines.join("\n");
    return out;
  }
  // The detail above a machine's log: [label, text, warn] lines.
  function lifeLines(m, now) {
    const c = lifeCell(m, now), lc = m && m.lifecycle && typeof m.lifecycle === "object" ?
      m.lifecycle : null;
    const parts = [c.since ? `${c.state} ${c.since}` : c.state];
    if (lc) {
      parts.push(String(lc.evidence || "-"));
      if (lc.previous) parts.push(`before: ${String(lc.previous)}`);
      if (c.pending) parts.push(c.pending);
    }
    const lines = [["state", parts.join(" · "), false]];
    if (c.warning) lines.push(["warning", c.warning, true]);
    return lines;
  }
  function fmtPct(p) { return isNum(p) ? `${p.toFixed(1)} %` : ""; }
  function fmtBytes(n) {
    if (!isNum(n) || n < 0) return "";
    return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${Math.round(n / 2 ** 20)} MiB`;
  }
  // The machine's hardware and LLDP neighbours (its summary's hardware and lldp) as
  // [label, text] lines; every value is the machine's and only ever becomes textContent.
  function hwLines(m) {
    const lines = [], str = (x) => (x === undefined || x === null ? "" : String(x));
    const hw = m && m.hardware && typeof m.hardware === "object" ? m.hardware : null;
    if (hw) {
      const parts = [[hw.vendor, hw.product].map(str).filter(Boolean).join(" ") || "no DMI"];
      if (hw.serial) parts.push(`serial ${str(hw.serial)}`);
      if (isNum(hw.cpus)) parts.push(`${hw.cpus} CPUs`);
      if (isNum(hw.memory)) parts.push(fmtBytes(hw.memory));
      if (isNum(hw.pci)) parts.push(`${hw.pci} PCI devices`);
      lines.push(["hardware", parts.join(" · ")]);
    }
    const lldp = m && m.lldp && typeof m.lldp === "object" ? m.lldp : {};
    for (const name of Object.keys(lldp).sort()) {
      const n = lldp[name] || {};
      if (!n.heard) { lines.push([name, "no LLDP neighbour heard"]); continue; }
      const parts = [str(n.system_name) || `chassis ${str(n.chassis_id)}`,
                     `port ${str(n.port_id)}`];
      if (n.port_description && n.port_description !== n.port_id) {
        parts[1] += ` (${str(n.port_description)})`;
      }
      if (isNum(n.vlan)) parts.push(`VLAN ${n.vlan}`);
      lines.push([name, parts.join(" · ")]);
    }
    return lines;
  }
  function fmtClock(ts) {
    if (!isNum(ts)) return "--:--:--";
    const d = new Date(ts * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  // ok | failed | running | waiting (a machine file, nothing heard yet) | default (the
  // fallback file machines/default.*: shown for its file errors, not counted as a machine)
  function classify(m) {
    if (m.mac === "default") return "default";
    if (m.result === "ok") return "ok";
    if (m.result === "failed" || (m.result == null && m.state === "failed")) return "failed";
    if (m.result != null) return String(m.result);
    return m.events > 0 ? "running" : "waiting";
  }
  window.pyinitDashboard = { fmtRate, fmtEta, fmtDur, fmtAge, fmtPct, fmtBytes, hwLines,
                             lifeCell, lifeLines, classify };

  // -- state -------------------------------------------------------------------------------
  const rows = new Map();  // mac -> {tr, cells, kind, text}
  let machines = [], selected = null, show = "all", life = null, lastOk = null;
  let failingSince = null;
  let logKey = null, logCount = 0, offset = 0, total = 0;

  async function getJSON(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      const r = await fetch(url, { cache: "no-store", signal: ctl.signal });
      if (!r.ok) {
        let msg = `HTTP ${r.status}`;
        try { const body = await r.json(); if (body && body.error) msg += `: ${body.error}`; }
        catch (e) { /* not JSON */ }
        const err = new Error(msg);
        err.status = r.status;
        throw err;
      }
      return await r.json();
    } catch (e) {
      if (e.name === "AbortError") throw new Error(`no answer within ${TIMEOUT_MS / 1000} s`);
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  // -- the table ---------------------------------------------------------------------------
  function setText(node, text) {
    text = text === undefined || text === null ? "" : String(text);
    if (node.textContent !== text) node.textContent = text;
  }

  function makeRow(mac) {
    const tr = el("tr");
    tr.tabIndex = 0;
    tr.dataset.mac = mac;
    const c = {};
    for (const name of ["mac", "file", "life", "phase", "progress", "rate", "eta", "result",
                        "error", "seen"]) {
      c[name] = el("td", name);
      tr.append(c[name]);
    }
    c.rate.classList.add("num");
    c.eta.classList.add("num");
    c.mac.textContent = mac;
    c.fileName = el("span");
    c.fileProblem = el("span", "problem");
    c.file.append(c.fileName, c.fileProblem);
    c.lstate = el("span", "lstate");
    c.lsince = el("span", "lsince");
    c.lnote = el("span", "lnote");
    c.lwarn = el("span", "lwarn");
    c.life.append(c.lstate, " ", c.lsince, c.lnote, c.lwarn);
    c.bar = el("span", "bar");
    c.fill = el("span", "fill");
    c.bar.append(c.fill);
    c.bar.style.display = "none";
    c.pct = el("span", "pct");
    c.progress.append(c.bar, c.pct);
    c.badge = el("span", "badge");
    c.result.append(c.badge);
    tr.addEventListener("click", () => select(mac));
    tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") select(mac); });
    return { tr, c };
  }

  function updateRow(row, m, now) {
    const c = row.c, kind = classify(m), lc = lifeCell(m, now);
    row.kind = kind;
    row.life = lc.state;
    row.late = !!lc.warning;
    const evidence = m.lifecycle && typeof m.lifecycle === "object" ? m.lifecycle.evidence : null;
    row.text = [m.mac, m.file, m.phase, m.state, m.result, m.error, m.file_error,
                m.file_warning, lc.state, evidence, lc.warning].filter((x) => x != null)
      .join(" ").toLowerCase();
    const cls = `${kind}${row.late ? " unconfirmed" : ""}${m.mac === selected ? " selected" : ""}`;
    if (row.tr.className !== cls) row.tr.className = cls;
    setText(c.lstate, lc.state);
    c.lstate.className = `lstate ${lc.state}`;
    setText(c.lsince, lc.since);
    setText(c.lnote, lc.pending);
    setText(c.lwarn, lc.warning ? `\u26a0 ${lc.warning}` : "");
    if (c.life.title !== lc.title) c.life.title = lc.title;
    setText(c.fileName, m.file || "—");
    c.fileName.className = m.file ? "" : "muted";
    const problem = m.file_error || m.file_warning || "";
    setText(c.fileProblem, problem);
    c.fileProblem.className = m.file_error ? "problem" : "problem warning";
    setText(c.phase, m.phase ? (m.state ? `${m.phase} · ${m.state}` : m.phase) : "");
    if (isNum(m.percent)) {
      c.bar.style.display = "";
      const w = `${Math.min(100, Math.max(0, m.percent))}%`;
      if (c.fill.style.width !== w) c.fill.style.width = w;
    } else {
      c.bar.style.display = "none";
    }
    setText(c.pct, fmtPct(m.percent));
    const running = kind === "running";
    setText(c.rate, running ? fmtRate(m.rate) : "");
    setText(c.eta, running ? fmtEta(m.eta) : "");
    setText(c.badge, kind);
    c.badge.className = `badge ${kind}`;
    setText(c.error, m.error || "");
    const age = isNum(m.last_seen) ? now - m.last_seen : null;
    setText(c.seen, fmtAge(age));
    c.seen.className = running && age !== null && age > QUIET_S ? "seen quiet" : "seen";
    c.seen.title = isNum(m.last_seen) ? new Date(m.last_seen * 1000).toString() : "";
  }

  function visible(row) {
    if (show !== "all" && row.kind !== show) return false;
    if (life && row.life !== life && !(life === "unconfirmed" && row.late)) return false;
    const q = $("filter").value.trim().toLowerCase();
    return !q || row.text.includes(q);
  }

  function render(data) {
    machines = Array.isArray(data.machines) ? data.machines : [];
    const now = isNum(data.now) ? data.now : Date.now() / 1000;
    const tbody = $("rows"), seen = new Set();
    const counts = { all: 0, running: 0, ok: 0, failed: 0, waiting: 0 };
    const server = data.counts && typeof data.counts === "object" ? data.counts : null;
    const lifeCounts = Object.fromEntries(LIFE.map((k) => [k, 0]));
    let i = 0;
    for (const m of machines) {
      if (typeof m.mac !== "string") continue;
      seen.add(m.mac);
      let row = rows.get(m.mac);
      if (!row) { row = makeRow(m.mac); rows.set(m.mac, row); }
      updateRow(row, m, now);
      if (row.kind !== "default") {
        counts.all++;
        lifeCounts[row.life]++;
        if (row.late) lifeCounts.unconfirmed++;
      }
      if (row.kind in counts) counts[row.kind]++;
      row.tr.hidden = !visible(row);
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
      i++;
    }
    for (const [mac, row] of rows) {
      if (!seen.has(mac)) { row.tr.remove(); rows.delete(mac); }
    }
    if (server) {  // the whole fleet's counts, not just this page's
      counts.running = server.running | 0; counts.ok = server.ok | 0;
      counts.failed = server.failed | 0; counts.waiting = server.new | 0;
      counts.all = counts.running + counts.ok + counts.failed + counts.waiting;
    }
    const serverLife = data.lifecycle_counts && typeof data.lifecycle_counts === "object" ?
      data.lifecycle_counts : null;
    for (const k of LIFE) {
      const n = serverLife ? serverLife[k] | 0 : lifeCounts[k];  // the fleet's, else the page's
      setText($(`l-${k}`), n);
      $(`l-${k}`).parentNode.hidden = n === 0 && life !== k;  // the states the fleet has
      lifeCounts[k] = n;
    }
    total = isNum(data.total) ? data.total : machines.length;
    $("empty").hidden = counts.all > 0;
    for (const k of Object.keys(counts)) setText($(`n-${k}`), counts[k]);
    const paged = total > PAGE || offset > 0;
    $("pager").hidden = !paged;
    if (paged) {
      setText($("pageinfo"), `${Math.min(offset + 1, total)}-${Math.min(offset + PAGE, total)} ` +
              `of ${total}`);
      $("prev").disabled = offset === 0;
      $("next").disabled = offset + PAGE >= total;
    }
    const parts = [];
    if (counts.failed) parts.push(`${counts.failed} failed`);
    if (counts.running) parts.push(`${counts.running} running`);
    if (lifeCounts.unconfirmed) parts.push(`${lifeCounts.unconfirmed} unconfirmed`);
    document.title = `pyinit${parts.length ? ": " + parts.join(", ") : ""}`;
    setText($("updated"), `updated ${fmtClock(now)}`);
  }

  function applyFilter() {
    for (const row of rows.values()) row.tr.hidden = !visible(row);
    for (const b of document.querySelectorAll(".counts.run button")) {
      b.setAttribute("aria-pressed", String(b.dataset.show === show && !life));
    }
    for (const b of document.querySelectorAll(".counts.life button")) {
      b.setAttribute("aria-pressed", String(b.dataset.life === life));
    }
  }

  // -- the log of one machine --------------------------------------------------------------
  function select(mac) {
    if (selected === mac) return;
    selected = mac;
    logKey = null;
    logCount = 0;
    $("loglines").replaceChildren();
    $("hw").replaceChildren();
    $("life").replaceChildren();
    setText($("logtitle"), mac ? `Log of ${mac}` : "");
    setText($("logstatus"), mac ? "loading…" : "");
    document.body.classList.toggle("logging", !!mac);
    for (const [m, row] of rows) row.tr.classList.toggle("selected", m === mac);
    if (mac && location.hash !== `#${mac}`) history.replaceState(null, "", `#${mac}`);
    if (!mac && location.hash) history.replaceState(null, "", location.pathname);
    if (mac) refreshLog();
  }

  function logLine(ev) {
    const line = el("div", "ev");
    if (ev.status === "failed" || ev.error) line.classList.add("bad");
    // plain-text separators (not margins), so that a copied log reads as one
    line.append(el("span", "t", fmtClock(ev.received)), " ", el("span", "s", ev.step ?? "-"),
                " ", el("span", "st", ev.status ?? "-"));
    const rest = Object.keys(ev).filter((k) => !["step", "status", "received"].includes(k))
      .map((k) => `${k}=${typeof ev[k] === "string" ? ev[k] : JSON.stringify(ev[k])}`);
    if (rest.length) line.append("  ", el("span", "r", rest.join("  ")));
    return line;
  }

  async function refreshLog() {
    const mac = selected;
    if (!mac) return;
    let data;
    try {
      data = await getJSON(`/api/machines/${encodeURIComponent(mac)}`);
    } catch (e) {
      if (mac === selected) setText($("logstatus"), `cannot load the log: ${e.message}`);
      return;
    }
    if (mac !== selected) return;
    const lifeBox = $("life"), now = isNum(data.now) ? data.now : Date.now() / 1000;
    const ll = lifeLines(data, now).map(([k, v, warn]) => {
      const line = el("div", warn ? "lifeline warn" : "lifeline");
      line.append(el("span", "k", k), el("span", "v", v));
      return line;
    });
    if (lifeBox.textContent !== ll.map((l) => l.textContent).join("")) {
      lifeBox.replaceChildren(...ll);
    }
    const hw = hwLines(data).map(([k, v]) => {
      const line = el("div", "hwline");
      line.append(el("span", "k", k), el("span", "v", v));
      return line;
    });
    const hwBox = $("hw");
    if (hwBox.textContent !== hw.map((l) => l.textContent).join("")) hwBox.replaceChildren(...hw);
    const events = Array.isArray(data.log) ? data.log : [];
    const box = $("loglines");
    const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
    const key = events.length ? `${events[0].received}` : "";
    if (key !== logKey || events.length < logCount) {  // the bounded log moved on: redraw
      box.replaceChildren();
      logKey = key;
      logCount = 0;
    }
    const frag = document.createDocumentFragment();
    for (const ev of events.slice(logCount)) frag.append(logLine(ev));
    box.append(frag);
    logCount = events.length;
    setText($("logstatus"), `${events.length} event${events.length === 1 ? "" : "s"}` +
            (events.length ? "" : " yet"));
    if (atEnd) box.scrollTop = box.scrollHeight;
  }

  // -- the poll loop -----------------------------------------------------------------------
  function setStale(err) {
    if (!err) {
      lastOk = Date.now();
      failingSince = null;
      document.body.classList.remove("stale");
      return;
    }
    failingSince = failingSince || Date.now();
    const since = lastOk ? `; last update ${fmtClock(lastOk / 1000)}` : "";
    setText($("banner"), `Server unreachable (${err.message || err})${since}. ` +
            `Showing the last data; retrying every ${POLL_MS / 1000} s.`);
    document.body.classList.add("stale");
  }

  // The poll loop and a button's extra refresh can be in flight together, and their answers
  // can arrive in either order: only the answer to the latest request is drawn (an older one,
  // asked with the page or filter before a click, would draw the old view over the new).
  let asked = 0;
  async function refresh() {
    const mine = ++asked;
    const q = new URLSearchParams({ offset: String(offset), limit: String(PAGE) });
    if (show !== "all" && SERVER_STATE[show]) q.set("state", SERVER_STATE[show]);
    if (life) q.set("lifecycle", life);
    const data = await getJSON(`/api/machines?${q}`);
    if (mine === asked) render(data);
  }

  async function poll() {
    try {
      await refresh();
      setStale(null);
      if (selected) await refreshLog();
    } catch (e) {
      setStale(e);
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  async function poll1() {  // one extra refresh now (a page button), outside the loop
    try { await refresh(); setStale(null); } catch (e) { setStale(e); }
  }

  function fromHash() {
    const mac = decodeURIComponent(location.hash.slice(1));
    select(mac || null);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("filter").addEventListener("input", applyFilter);
    $("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); poll1(); });
    $("next").addEventListener("click", () => { offset += PAGE; poll1(); });
    for (const b of document.querySelectorAll(".counts.run button")) {
      b.addEventListener("click", () => { show = show === b.dataset.show ? "all" : b.dataset.show;
                                          life = null; offset = 0; applyFilter(); poll1(); });
    }
    for (const b of document.querySelectorAll(".counts.life button")) {
      b.addEventListener("click", () => { life = life === b.dataset.life ? null : b.dataset.life;
                                          show = "all"; offset = 0; applyFilter(); poll1(); });
    }
    $("logclose").addEventListener("click", () => select(null));
    document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") select(null); });
    window.addEventListener("hashchange", fromHash);
    fromHash();
    poll();
  });
})();
""".replace("__POLL_MS__", str(POLL_MS)).replace("__PAGE__", str(PAGE_SIZE)).replace(
    "__LIFE__", json.dumps(list(lifecycle.FILTERS)))

_BODY = """
<header>
  <h1>pyinit provisioning</h1>
  <div class="counts run">
    <button type="button" data-show="all" aria-pressed="true">total<b id="n-all">0</b></button>
    <button type="button" data-show="running">running<b id="n-running">0</b></button>
    <button type="button" data-show="ok">ok<b id="n-ok">0</b></button>
    <button type="button" data-show="failed">failed<b id="n-failed">0</b></button>
    <button type="button" data-show="waiting">waiting<b id="n-waiting">0</b></button>
  </div>
  <div class="counts life" role="group" aria-label="lifecycle state">
    <span class="label">state</span>
__LIFE_BUTTONS__
  </div>
  <input id="filter" type="search" placeholder="filter: MAC, phase, error…" autocomplete="off">
  <span id="pager" hidden><button type="button" id="prev" aria-label="previous page">&lt;</button>
    <span id="pageinfo"></span>
    <button type="button" id="next" aria-label="next page">&gt;</button></span>
  <span id="updated">connecting…</span>
</header>
<div id="banner" role="alert"></div>
<main>
  <table id="table">
    <thead><tr><th>Machine</th><th>File</th><th>State</th><th>Phase</th><th>Progress</th>
      <th>Rate</th><th>ETA</th><th>Result</th><th>Last error</th><th>Last seen</th></tr></thead>
    <tbody id="rows"></tbody>
    <tbody><tr id="empty" hidden><td colspan="10">No machines yet: add files to machines/
      or boot one.</td></tr></tbody>
  </table>
</main>
<section id="log" aria-live="polite">
  <div class="head"><strong id="logtitle"></strong><span id="logstatus" class="muted"></span>
    <button type="button" id="logclose">close (Esc)</button></div>
  <div id="life"></div>
  <div id="hw"></div>
  <div id="loglines"></div>
</section>
""".replace("__LIFE_BUTTONS__", "\n".join(
    f'    <button type="button" data-life="{name}" class="{name}" hidden>{name}'
    f'<b id="l-{name}">0</b></button>' for name in lifecycle.FILTERS))


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE: bytes = (
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>pyinit</title>\n<link rel=\"icon\" href=\"data:,\">\n"
    f"<style>{_CSS}</style>\n</head>\n<body>{_BODY}<script>{_JS}</script>\n</body>\n</html>\n"
).encode()

# Only this page's own script and style, requests to this server, nothing else: no external
# resource can load and no injected handler can run (hashes do not cover inline handlers).
CSP = (f"default-src 'none'; script-src {_hash(_JS)}; style-src {_hash(_CSS)}; "
       "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


def response() -> web.Response:
    """The page, with its security headers (GET and HEAD)."""
    return web.Response(body=PAGE, headers={
        "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
        "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer"})
