// usher's live page. Plain JavaScript, no build step. Everything shown is set with textContent or
// as SVG attributes: customer ids, paths and event fields come from whoever sent requests, and are
// never parsed as HTML.
"use strict";

const TOKEN_KEY = "usher.admin.token";
const NOW_EVERY_MS = 2000;
const CUSTOMER_EVERY_MS = 5000;

const $ = (id) => document.getElementById(id);

// el("td", {class: "x"}, "text", otherNode): children are text or nodes, never markup.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "onclick") e.addEventListener("click", v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

function clear(node) { node.replaceChildren(); return node; }

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class Unauthorized extends Error {}

async function api(path) {
  const t = token();
  const resp = await fetch(path, {
    headers: t ? { Authorization: "Bearer " + t } : {},
    cache: "no-store",
    credentials: "omit",
  });
  if (resp.status === 401) throw new Unauthorized("the token was refused");
  let body = null;
  try { body = await resp.json(); } catch (_) { body = null; }
  if (!resp.ok) {
    const e = new Error((body && body.error) || ("HTTP " + resp.status));
    e.status = resp.status;
    throw e;
  }
  return body;
}

function hhmmss(d) {
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

function stamp() { $("updated").textContent = "updated " + hhmmss(new Date()); }

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : Math.round(ms) + " ms";
}

function pct(x) { return x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%"; }

function when(iso) {
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : hhmmss(d);
}

// ---- sign in and routing ----------------------------------------------------------------

let timer = null;
// Whether the admin API answers this page without a token (no server.admin_tokens: callers on
// usher's own machine may read): null until asked. Only a 401 makes the page ask for a token.
let open = null;

function signedIn(yes) {
  $("login").hidden = yes;
  $("nav").hidden = !yes;
  $("signout").hidden = !yes || !token();
  if (!yes) {
    for (const v of document.querySelectorAll(".view")) v.hidden = true;
    $("updated").textContent = "";
  }
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  stop();
  signedIn(false);
  $("login-error").textContent = message || "";
}

// The polling loop in force. A loop's tick may be waiting on a fetch when the view changes:
// clearTimeout cannot reach it, so it looks at this when it wakes, and ends if it is not the one.
let loop = 0;

function stop() {
  loop++;
  if (timer) { clearTimeout(timer); timer = null; }
}

function every(ms, f) {
  stop();
  const mine = loop;
  const tick = async () => {
    try {
      await f();
    } catch (e) {
      if (mine !== loop) return;
      if (e instanceof Unauthorized) {
        const had = token();
        open = false;
        signOut(had ? "The token was refused: sign in again." : "");
        return;
      }
      $("updated").textContent = "update failed: " + e.message;
    }
    if (mine === loop) timer = setTimeout(tick, ms);
  };
  tick();
}

async function route() {
  if (!token() && open === null) {
    try { await api("/now"); open = true; } catch (e) {
      // Anything but a 401 is for the view to report: a token would not help.
      open = !(e instanceof Unauthorized);
    }
  }
  if (!token() && !open) { signedIn(false); return; }
  signedIn(true);
  const hash = location.hash.replace(/^#/, "");
  const [view, ...rest] = hash.split("/");
  const name = ["now", "customer", "funnels"].includes(view) ? view : "now";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + name;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.id === "nav-" + name);
  if (name === "now") every(NOW_EVERY_MS, refreshNow);
  else if (name === "customer") {
    // A hand-edited address may hold a broken escape: take it as typed rather than fail.
    let id = rest.join("/");
    try { id = decodeURIComponent(id); } catch (_) { /* kept as typed */ }
    $("customer-id").value = id;
    if (id) every(CUSTOMER_EVERY_MS, () => showCustomer(id));
    else { stop(); $("customer").hidden = true; }
  } else every(15000, refreshFunnels);
}

function lookupLink(id) {
  return el("a", { href: "#customer/" + encodeURIComponent(id), class: "customer-link" }, id);
}

// ---- now ----------------------------------------------------------------------------------

async function refreshNow() {
  const now = await api("/now");
  const worst = clear($("worst").tBodies[0]);
  for (const c of now.worst) {
    const last = c.last_step;
    worst.append(el("tr", { "data-customer": c.id },
      el("td", {}, lookupLink(c.id)),
      el("td", {}, c.tier),
      el("td", { class: "state-" + c.state }, c.score.toFixed(1)),
      el("td", {}, c.requests),
      el("td", {}, c.errors),
      el("td", {}, last ? `${last.method} ${last.path} ${last.status} ${fmtMs(last.latency_ms)}` : "")));
  }
  $("worst-note").textContent = now.worst.length
    ? `customers with at least ${now.min_requests} requests, of ${now.tracked} tracked`
    : `nobody with ${now.min_requests} requests yet`;
  const deg = clear($("degraded"));
  for (const [tier, n] of Object.entries(now.degraded_by_tier)) {
    deg.append(el("li", { class: n > 0 ? "bad" : "good" }, `${tier}: ${n}${now.degraded_counts_are_a_floor ? "+" : ""}`));
  }
  const routes = clear($("routes").tBodies[0]);
  for (const r of now.routes) {
    const burn = r.slo ? `${r.slo.burn_rate_5m} / ${r.slo.burn_rate_1h}` : "no objective";
    const apdexClass = r.apdex === null ? "" : r.apdex < 0.7 ? "bad" : r.apdex < 0.85 ? "warn" : "good";
    routes.append(el("tr", {},
      el("td", {}, r.name, r.critical ? el("span", { class: "chip" }, "critical") : null),
      el("td", {}, fmtMs(r.target_ms)),
      el("td", { class: apdexClass }, r.apdex === null ? "–" : r.apdex.toFixed(2)),
      el("td", {}, fmtMs(r.p99_ms)),
      el("td", {}, pct(r.failure_rate)),
      el("td", {}, burn)));
  }
  const ups = clear($("upstreams").tBodies[0]);
  for (const u of now.upstreams) {
    const lanes = (u.routes || []).filter((l) => l.state !== "healthy");
    const why = [];
    if (u.why) why.push(u.why.detail);
    for (const l of lanes) why.push(`on ${l.route}: ${l.state}${l.why ? " (" + l.why.detail + ")" : ""}`);
    const state = lanes.length && u.state === "healthy" ? "healthy, out on " + lanes.map((l) => l.route).join(", ") : u.state;
    ups.append(el("tr", {},
      el("td", {}, u.address, el("span", { class: "sub muted" }, " " + u.pools.join(", "))),
      el("td", { class: u.state === "healthy" && !lanes.length ? "good" : "bad" }, state),
      el("td", {}, why.join("; ") || "–")));
  }
  showEvents($("events"), now.events);
  stamp();
}

function showEvents(list, events) {
  clear(list);
  if (!events.length) { list.append(el("li", { class: "muted" }, "none")); return; }
  for (const e of events) {
    const d = e.data || {};
    const what = d.furthest_step ? `${d.funnel || ""} at ${d.furthest_step}` : d.upstream || d.route || "";
    list.append(el("li", {},
      el("span", { class: "muted" }, when(e.time) + " "),
      el("strong", {}, String(e.type).replace(/^usher\./, "")), " ",
      e.subject && d.customer ? lookupLink(e.subject) : (e.subject || ""),
      what ? " " + what : "",
      d.follow_up ? el("span", { class: "chip" }, d.follow_up) : null));
  }
}

// ---- customer -----------------------------------------------------------------------------

const scoreSeen = new Map(); // customer id -> [[time ms, score]] seen while the page was open

function sparkline(svgNode, points, threshold) {
  clear(svgNode);
  if (points.length < 2) return false;
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const x = (t) => (t1 === t0 ? 200 : ((t - t0) / (t1 - t0)) * 200);
  const y = (s) => 40 - (Math.max(0, Math.min(100, s)) / 100) * 40;
  svgNode.append(svg("line", { x1: 0, x2: 200, y1: y(threshold), y2: y(threshold) }));
  svgNode.append(svg("polyline", { points: points.map(([t, s]) => `${x(t).toFixed(1)},${y(s).toFixed(1)}`).join(" ") }));
  return true;
}

async function showCustomer(id) {
  let c;
  try {
    c = await api("/customers/" + encodeURIComponent(id));
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    $("customer").hidden = true;
    $("lookup-error").textContent = e.status === 404 ? `No customer ${id} is tracked (never seen, or evicted).` : e.message;
    stamp();
    return;
  }
  $("lookup-error").textContent = "";
  $("customer").hidden = false;
  $("c-id").textContent = c.id;
  $("c-tier").textContent = "tier " + c.tier;
  $("c-state").textContent = c.state;
  $("c-state").className = "chip state-" + c.state;
  $("c-score").textContent = c.score.toFixed(1);
  $("c-counts").textContent = `${c.requests} requests, ${c.errors} errors, ${c.frustrated} frustrated; first seen ${when(c.first_seen)}, last ${when(c.last_seen)}`;

  // Score over time: each step's score (a step restored from an older snapshot has none), else
  // what this page has seen.
  const seen = scoreSeen.get(c.id) || [];
  const last = seen[seen.length - 1];
  if (!last || last[1] !== c.score) seen.push([Date.now(), c.score]);
  scoreSeen.set(c.id, seen.slice(-200));
  const stepScores = c.journey.filter((s) => typeof s.score === "number").map((s) => [Date.parse(s.at), s.score]);
  const points = stepScores.length >= 2 ? stepScores : seen;
  const drawn = sparkline($("c-spark"), points, c.degraded_below);
  $("c-spark-note").textContent = drawn
    ? (stepScores.length >= 2 ? "score after each of the last requests" : "score as seen since this page opened")
    : "score over time: shown once it moves";

  const funnels = clear($("c-funnels"));
  if (!c.funnels.length) funnels.append(el("li", { class: "muted" }, "in no funnel"));
  for (const f of c.funnels) {
    funnels.append(el("li", { class: f.after_trouble ? "bad" : "" }, el("strong", {}, f.funnel + ": "), f.summary));
  }
  const p = c.protection;
  $("c-protection").textContent = (p.protected ? "protected on " + p.where + ": " : "") + p.why;
  $("c-follow-up").textContent = c.follow_up ? `${c.follow_up} (tier ${c.tier})` : `none configured for tier ${c.tier}`;

  const tl = clear($("timeline"));
  for (const s of [...c.journey].reverse()) {
    const target = s.target_ms || null;
    const marks = s.marks;
    const li = el("li", { class: marks.filter((m) => m === "failed" || m === "slow").join(" "), "data-marks": marks.join(" ") },
      el("span", { class: "when" }, when(s.at)),
      el("span", { class: "what" }, el("strong", {}, s.method + " "), s.path, s.path_truncated ? "…" : "",
        " ", el("span", { class: s.status >= 500 ? "bad" : "" }, String(s.status)),
        ...marks.map((m) => el("span", { class: "mark mark-" + m }, m))),
      el("span", { class: "detail" },
        `${fmtMs(s.latency_ms)}${target ? " against a target of " + fmtMs(target) : ""}`,
        s.route ? ` · route ${s.route}` : "",
        s.upstream ? ` · ${s.upstream}` : " · no upstream",
        typeof s.score === "number" ? ` · score ${s.score.toFixed(1)}` : "",
        s.request_id ? ` · ${s.request_id}` : ""));
    tl.append(li);
  }

  const ev = await api("/customers/" + encodeURIComponent(id) + "/events?limit=50");
  showEvents($("c-events"), ev.events);
  stamp();
}

// ---- funnels ------------------------------------------------------------------------------

function showIds(title, cell) {
  $("ids").hidden = false;
  $("ids-title").textContent = title;
  const list = clear($("ids-list"));
  for (const id of cell.customers) list.append(el("li", {}, lookupLink(id)));
  $("ids-more").textContent = cell.more ? `and ${cell.more} more` : "";
  $("ids").scrollIntoView({ block: "nearest" });
}

function numberButton(title, cell, testid) {
  if (!cell.count) return el("span", { class: "muted" }, "0");
  return el("button", { class: "link", type: "button", "data-testid": testid, onclick: () => showIds(title, cell) }, cell.count);
}

function splitCell(funnel, step, kind, split) {
  const title = (what) => `${funnel} · ${step} · ${kind}${what ? " · " + what : ""}`;
  const key = `${funnel}-${step}-${kind}`;
  const td = el("td", { class: "num" }, numberButton(title(""), split, key));
  const sub = el("span", { class: "sub" },
    "after trouble ", numberButton(title("after trouble"), split.after_trouble, key + "-trouble"));
  for (const [tier, cell] of Object.entries(split.by_tier)) {
    sub.append(" · " + tier + " ", numberButton(title(tier), cell, key + "-" + tier));
  }
  td.append(sub);
  return td;
}

async function refreshFunnels() {
  const w = $("window").value;
  const r = await api("/funnels?window=" + encodeURIComponent(w));
  $("funnels-note").textContent = `${r.from.slice(11, 19)} to ${r.to.slice(11, 19)} UTC; ${r.history.kept} ended journeys kept`;
  const box = clear($("funnels"));
  if (!r.funnels.length) box.append(el("p", { class: "card muted" }, "No funnels are configured."));
  for (const f of r.funnels) {
    const body = el("tbody");
    for (const s of f.steps) {
      body.append(el("tr", { "data-step": s.name },
        el("th", {}, s.name),
        splitCell(f.name, s.name, "reached", s.reached),
        splitCell(f.name, s.name, "dropped", s.dropped)));
    }
    box.append(el("div", { class: "card funnel", "data-funnel": f.name },
      el("h2", {}, f.name),
      el("p", { class: "muted" }, `${f.completed} completed, ${f.abandoned} abandoned (after ${f.abandon_after}), ${f.in_progress} in progress`),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "step"), el("th", {}, "reached"), el("th", {}, "dropped there"))), body)));
  }
  stamp();
}

// ---- wiring -------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    try {
      await api("/now");
      $("login-error").textContent = "";
      route();
    } catch (e) {
      signOut(e instanceof Unauthorized ? "That token was refused." : "Cannot reach usher: " + e.message);
    }
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("lookup-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = $("customer-id").value.trim();
    if (id) location.hash = "#customer/" + encodeURIComponent(id);
  });
  $("window").addEventListener("change", () => every(15000, refreshFunnels));
  window.addEventListener("hashchange", route);
  route();
});
