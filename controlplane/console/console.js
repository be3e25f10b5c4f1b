// Meridian's operator console: sign in with an admin token (kept for this browser session only, never in a
// URL), one server-sent-events stream from the control plane for everything live, writes through the admin
// API with If-Match and a reason. No framework, no build step, nothing from another origin.

const $ = (sel) => document.querySelector(sel);
const state = { token: null, role: null, topology: [], regions: {}, traffic: {}, audit: [], editing: {},
  runs: [], edges: 0, pools: [], signals: {}, active: {}, explaining: null, flows: {} };
// where each continent's clients are drawn from (GeoIP continent codes)
const CONTINENTS = { AF: [5, 20], AN: [-75, 0], AS: [35, 95], EU: [50, 12], NA: [42, -100], OC: [-25, 135],
  SA: [-15, -60] };
const HEALTH = { up: "up", degraded: "degraded", down: "down" };
const USAGE_REFRESH_MS = 5000; // the tenants view's usage tables: the edges report theirs every second or so

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (v === true) node.setAttribute(k, "");
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { Authorization: `Bearer ${state.token}`, ...headers }, cache: "no-store" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  return { status: r.status, data, headers: r.headers };
}

// --- signing in -------------------------------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  const { status, data } = await api("GET", "/v1/session");
  if (status !== 200) {
    state.token = null;
    $("#login-error").textContent = status === 401 ? "That token is not valid." : `Sign-in failed (${status}).`;
    return false;
  }
  if (data.role !== "viewer" && data.role !== "operator") {
    state.token = null;
    $("#login-error").textContent = `Role '${data.role}' cannot use the console (viewer or operator).`;
    return false;
  }
  sessionStorage.setItem("meridian-token", token);
  state.role = data.role;
  $("#who").textContent = `${data.name} (${data.role})`;
  $("#login").hidden = true;
  $("#nav").hidden = false;
  $("#signout").hidden = false;
  $("#readonly").hidden = data.role === "operator";
  show("map");
  stream();
  loadTenants();
  return true;
}

function signOut() {
  sessionStorage.removeItem("meridian-token");
  state.token = null;
  location.reload();
}

function show(view) {
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${view}`;
  for (const b of document.querySelectorAll("nav button")) {
    if (b.dataset.view === view) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  if (view === "tenants") loadTenants();
}

// --- the live stream --------------------------------------------------------------------------------------

function live(on, text) {
  const node = $("#live");
  node.textContent = text;
  node.className = on ? "on" : "off";
}

async function stream() {
  while (state.token) {
    try {
      const r = await fetch("/v1/events", { headers: { Authorization: `Bearer ${state.token}` }, cache: "no-store" });
      if (r.status === 401 || r.status === 403) { signOut(); return; }
      if (r.status !== 200) throw new Error(`status ${r.status}`);
      live(true, "live");
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true }).replace(/\r/g, "");
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          dispatch(buf.slice(0, cut));
          buf = buf.slice(cut + 2);
        }
      }
    } catch (e) {
      // the control plane went away (a restart): retried below
    }
    live(false, "reconnecting…");
    await new Promise((ok) => setTimeout(ok, 1000));
  }
}

function dispatch(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (!data.length) return;
  const body = JSON.parse(data.join("\n"));
  if (kind === "topology") { state.topology = body.regions; renderAll(); }
  else if (kind === "regions") {
    state.regions = Object.fromEntries(body.regions.map((r) => [r.name, r]));
    renderAll();
    if (state.explaining) explain();
  } else if (kind === "traffic") { state.traffic = body; renderMap(); }
  else if (kind === "audit") { state.audit = body.entries; renderAudit(); }
  else if (kind === "flows") { state.flows = body; renderFlows(); renderMap(); }
  else if (kind === "active") { state.active = body; renderActive(); }
  else if (kind === "pools") { state.pools = body; renderFleet(); }
  else if (kind === "signals") { state.signals = body; renderFleet(); }
  else if (kind === "runs") {  // edges reporting what they applied: the explainer's answers may have changed
    state.runs = body.runs; state.edges = body.edges; renderRuns(); renderCountdowns();
    if (state.explaining) explain();
  }
  else if (kind === "store") live(body.ok, body.ok ? "live" : "store unavailable");
}

// --- views ------------------------------------------------------------------------------------------------

function colour(r) {
  if (!r || r.invalid) return "down";
  if (r.drained || r.weight === 0) return "off";
  return HEALTH[r.health] || "down";
}

function renderAll() { renderMap(); renderCards(); renderFleet(); renderAuditFilter(); }

function rps(region) {  // requests a second over the last minute, from the edges' flow counts
  const n = Object.values(state.flows).reduce((sum, to) => sum + (to[region] || 0), 0);
  return (n / 60).toFixed(1);
}

function renderMap() {
  const sites = $("#sites");
  sites.replaceChildren();
  const rows = [];
  for (const t of state.topology) {
    const r = state.regions[t.name];
    const x = t.lon + 180, y = 90 - t.lat;
    const g = svg("g", { class: `site ${colour(r)}`, "data-region": t.name });
    g.append(svg("circle", { cx: x, cy: y, r: 2.6, class: colour(r) }));
    const label = svg("text", { x: x + 3.2, y: y + 1.4 });
    label.textContent = `${t.name} · ${rps(t.name)} req/s`;
    const title = svg("title");
    title.textContent = `${t.name}: ${r ? r.health : "unknown"}, dial ${r ? r.weight : "?"}`;
    g.append(label, title);
    sites.append(g);
    rows.push(el("tr", { "data-region": t.name },
      el("th", { scope: "row", text: t.name }),
      el("td", { class: colour(r), text: r ? (r.drained ? "drained" : r.health) : "unknown" }),
      el("td", { text: r ? `${r.weight}` : "" }),
      el("td", { text: `${state.traffic[t.name] ?? 0}` }),
      el("td", { text: r ? `${Math.round(r.utilization * 100)} %` : "" }),
      el("td", { text: r && r.latency_ms != null ? `${Math.round(r.latency_ms)} ms` : "—" })));
  }
  $("#map-table tbody").replaceChildren(...rows);
}

function renderFleet() {
  for (const t of state.topology) {
    const card = document.querySelector(`#cards [data-region="${t.name}"]`);
    const r = state.regions[t.name];
    if (!card || !r || r.invalid) continue;
    const rows = Object.entries(r.replicas || {}).map(([rep, health]) => {
      const s = state.signals[`${t.name}/${rep}`] || {};
      return el("tr", {}, el("th", { scope: "row", text: rep }), el("td", { class: HEALTH[health] || "down", text: health }),
        el("td", { text: s.running == null ? "—" : `${s.running}` }), el("td", { text: s.waiting == null ? "—" : `${s.waiting}` }),
        el("td", { text: s.kv_usage == null ? "—" : `${Math.round(s.kv_usage * 100)} %` }));
    });
    card.querySelector(".replicas tbody").replaceChildren(...rows);
    const pools = state.pools.filter((p) => p.region === t.name).map((p) => el("li", {
      text: `${p.model}: ${p.current} on, ${p.desired} wanted (${p.min}–${p.max}); ${p.spot} spot, ` +
        `${p.on_demand} on-demand; $${p.cost_per_hour.toFixed(2)}/h${p.cost_capped ? " (cost ceiling)" : ""}` }));
    card.querySelector(".pools").replaceChildren(...pools);
  }
}

function renderFlows() {
  const lines = [], rows = [];
  const site = Object.fromEntries(state.topology.map((t) => [t.name, [t.lon + 180, 90 - t.lat]]));
  for (const [continent, to] of Object.entries(state.flows)) {
    for (const [region, n] of Object.entries(to)) {
      rows.push(el("tr", { "data-flow": `${continent}>${region}` }, el("th", { scope: "row", text: continent }),
        el("td", { text: region }), el("td", { text: `${n}` })));
      const from = CONTINENTS[continent];
      if (!from || !site[region]) continue;
      const [x0, y0] = [from[1] + 180, 90 - from[0]], [x1, y1] = site[region];
      const bend = `${(x0 + x1) / 2},${Math.min(y0, y1) - 12}`;
      lines.push(svg("path", { d: `M${x0},${y0} Q${bend} ${x1},${y1}`, class: "flow",
        "stroke-width": Math.min(3, 0.4 + Math.log10(1 + n)) }));
    }
  }
  $("#flows").replaceChildren(...lines);
  $("#flows-table tbody").replaceChildren(...rows);
}

function renderCards() {
  const cards = $("#cards");
  for (const t of state.topology) {
    const r = state.regions[t.name];
    let card = cards.querySelector(`[data-region="${t.name}"]`);
    if (!card) { card = buildCard(t.name); cards.append(card); }
    if (r && !state.editing[t.name]) fillCard(card, r);
    card.querySelector(".health").textContent = r ? describe(r) : "no state";
  }
}

function describe(r) {
  if (r.invalid) return `invalid record: ${r.invalid}`;
  const up = Object.values(r.replicas || {}).filter((h) => h === "up").length;
  const total = Object.keys(r.replicas || {}).length;
  const why = r.drained ? "drained" : r.weight === 0 ? "dial at 0" : r.health;
  return `${why} · ${up}/${total} replicas up${r.starting ? `, ${r.starting} starting` : ""} · version ${r.version}`;
}

function buildCard(name) {
  const id = name.replace(/[^a-z0-9-]/gi, "");
  const readOnly = state.role !== "operator";
  const card = el("article", { class: "card", "data-region": name, "aria-labelledby": `card-${id}` },
    el("h3", { id: `card-${id}`, text: name }),
    el("p", { class: "health" }),
    el("div", { class: "row" },
      el("label", { for: `dial-${id}`, text: "Dial" }),
      el("input", { id: `dial-${id}`, class: "dial", type: "range", min: 0, max: 100, step: 5, disabled: readOnly,
        "aria-describedby": `dialv-${id}` }),
      el("output", { id: `dialv-${id}`, class: "dial-value", for: `dial-${id}` })),
    el("div", { class: "row" },
      el("span", { id: `drainl-${id}`, text: "Drained" }),
      el("button", { type: "button", class: "drain", role: "switch", "aria-checked": "false",
        "aria-labelledby": `drainl-${id}`, disabled: readOnly, text: "off" })),
    el("label", { for: `reason-${id}`, text: "Reason (required, goes to the audit log)" }),
    el("input", { id: `reason-${id}`, class: "reason", type: "text", maxlength: 500, disabled: readOnly }),
    el("div", { class: "row" },
      el("button", { type: "button", class: "apply", disabled: readOnly, text: "Apply" }),
      el("button", { type: "button", class: "cancel", disabled: readOnly, text: "Discard" })),
    el("div", { class: "row" },
      el("label", { for: `over-${id}`, text: "Drain over (s)" }),
      el("input", { id: `over-${id}`, class: "over", type: "number", min: 1, max: 86400, value: 60,
        disabled: readOnly }),
      el("button", { type: "button", class: "start-drain", disabled: readOnly, text: "Start drain" })),
    el("p", { class: "countdown", role: "status", "aria-live": "polite" }),
    el("table", { class: "replicas" },
      el("caption", { text: `${name}: replicas` }),
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Replica" }), el("th", { scope: "col", text: "Health" }),
        el("th", { scope: "col", text: "Run" }), el("th", { scope: "col", text: "Wait" }),
        el("th", { scope: "col", text: "KV" }))),
      el("tbody", {})),
    el("ul", { class: "pools", "aria-label": `${name}: pools` }),
    el("p", { class: "result", role: "status", "aria-live": "polite" }));
  const dial = card.querySelector(".dial");
  dial.addEventListener("input", () => {
    state.editing[name] = state.editing[name] || startEdit(name);
    card.querySelector(".dial-value").textContent = dial.value;
  });
  const drain = card.querySelector(".drain");
  drain.addEventListener("click", () => {
    state.editing[name] = state.editing[name] || startEdit(name);
    const on = drain.getAttribute("aria-checked") !== "true";
    drain.setAttribute("aria-checked", String(on));
    drain.textContent = on ? "on" : "off";
  });
  card.querySelector(".apply").addEventListener("click", () => apply(name, card));
  card.querySelector(".start-drain").addEventListener("click", () => startDrain(name, card));
  card.querySelector(".cancel").addEventListener("click", () => {
    delete state.editing[name];
    card.querySelector(".result").textContent = "";
    fillCard(card, state.regions[name]);
  });
  return card;
}

function fillCard(card, r) {
  if (!r || r.invalid) return;
  card.querySelector(".dial").value = r.weight;
  card.querySelector(".dial-value").textContent = r.weight;
  const drain = card.querySelector(".drain");
  drain.setAttribute("aria-checked", String(r.drained));
  drain.textContent = r.drained ? "on" : "off";
}

function startEdit(name) {
  const r = state.regions[name] || {};
  return { version: r.version, weight: r.weight, drained: r.drained };
}

async function apply(name, card) {
  const result = card.querySelector(".result");
  const reason = card.querySelector(".reason").value.trim();
  if (!reason) { result.textContent = "Give a reason: it goes to the audit log."; result.className = "result error"; return; }
  const edit = state.editing[name] || startEdit(name);
  const body = {
    reason,
    weight: Number(card.querySelector(".dial").value),
    drained: card.querySelector(".drain").getAttribute("aria-checked") === "true",
  };
  const path = `/v1/regions/${encodeURIComponent(name)}`;
  let { status, data } = await api("PATCH", path, body, { "If-Match": `"${edit.version}"` });
  for (let i = 0; status === 412 && i < 3; i++) {
    // the record moved on: a conflict only if someone changed what this edit changes (the dial, the drain);
    // the prober's own writes (health, latency) bump the version too, and are not one
    const now = (await api("GET", path)).data;
    if (now.weight !== edit.weight || now.drained !== edit.drained) break;
    edit.version = now.version;
    ({ status, data } = await api("PATCH", path, body, { "If-Match": `"${now.version}"` }));
  }
  if (status === 200) {
    delete state.editing[name];
    result.className = "result";
    result.textContent = `Applied: dial ${data.after.weight}, ${data.after.drained ? "drained" : "not drained"} (version ${data.after.version}).`;
    card.querySelector(".reason").value = "";
    state.regions[name] = data.after;
    renderAll();
  } else if (status === 412) {
    const current = (await api("GET", `/v1/regions/${encodeURIComponent(name)}`)).data;
    result.className = "result conflict";
    result.textContent = `Conflict: someone changed ${name} since you started (${data.detail}). ` +
      `Now: dial ${current.weight}, ${current.drained ? "drained" : "not drained"}, version ${current.version}. ` +
      "Discard to start from it, or Apply again to overwrite it.";
    state.editing[name] = { version: current.version };
  } else {
    result.className = "result error";
    result.textContent = `Refused (${status}): ${data && data.detail ? data.detail : "see the audit log"}`;
  }
}

async function startDrain(name, card) {
  const result = card.querySelector(".result");
  const reason = card.querySelector(".reason").value.trim();
  if (!reason) { result.textContent = "Give a reason: it goes to the audit log."; result.className = "result error"; return; }
  const overS = Number(card.querySelector(".over").value);
  const { status, data } = await api("POST", `/v1/regions/${encodeURIComponent(name)}/drain`,
    { reason, over_s: overS });
  result.className = status === 202 ? "result" : "result error";
  result.textContent = status === 202 ? `Draining ${name} over ${overS} s.` : `Refused (${status}): ${data && data.detail}`;
  if (status === 202) card.querySelector(".reason").value = "";
}

function renderCountdowns() {
  const now = Date.now() / 1000;
  for (const t of state.topology) {
    const card = document.querySelector(`#cards [data-region="${t.name}"]`);
    if (!card) continue;
    const run = state.runs.find((r) => r.region === t.name && r.kind === "drain" && r.version === null);
    card.querySelector(".countdown").textContent = run
      ? `Draining: the dial walks to 0 in ${Math.max(0, Math.ceil(run.asked_at + run.over_s - now))} s` : "";
  }
}

function renderActive() {
  const now = Date.now() / 1000;
  const rows = [];
  for (const [edge, list] of Object.entries(state.active)) {
    for (const a of list) {
      const cancel = el("button", { type: "button", disabled: state.role !== "operator", text: "Cancel",
        "aria-label": `Cancel request ${a.request_id} at ${edge}` });
      cancel.addEventListener("click", async () => {
        const r = await api("POST", `/v1/active/${encodeURIComponent(edge)}/${encodeURIComponent(a.id)}/cancel`);
        $("#cancelled").textContent = r.status === 202
          ? `Asked ${edge} to cancel ${a.request_id}: it ends within a second.` : `Refused (${r.status}).`;
      });
      rows.push(el("tr", { "data-request": a.request_id || "" },
        el("th", { scope: "row", text: edge }), el("td", { text: `${Math.max(0, now - a.since).toFixed(1)} s` }),
        el("td", { text: a.tenant || "—" }), el("td", { text: a.model || "—" }), el("td", { text: a.region || "—" }),
        el("td", { text: a.replica || "—" }), el("td", { text: a.stream ? "stream" : "" }),
        el("td", { class: "rid", text: a.request_id || "" }), el("td", {}, cancel)));
    }
  }
  $("#active tbody").replaceChildren(...rows);
}

let explained = 0;  // the newest explainer call: an older answer arriving later is not shown

async function explain() {
  const q = state.explaining;
  const mine = ++explained;
  const params = new URLSearchParams(Object.entries(q).filter(([, v]) => v));
  const { status, data } = await api("GET", `/v1/explain?${params}`);
  if (mine !== explained) return;
  const out = $("#explained");
  if (status !== 200) {
    out.replaceChildren(el("p", { class: "error", text: `Refused (${status}): ${data && data.detail}` }));
    return;
  }
  const blocks = [];
  for (const [edge, got] of Object.entries(data.edges)) {
    const a = got.answer;
    if (!a || got.status !== 200) {
      blocks.push(el("p", { "data-edge": edge, text: `${edge}: ${got.error || (a && a.error && a.error.message) || got.status}` }));
      continue;
    }
    const rows = (a.scores || []).map((s) => el("tr", {},
      el("th", { scope: "row", text: s.region }), el("td", { text: s.why_not || (s.routable ? "routable" : "not routable") }),
      el("td", { text: `${s.network_ms}` }), el("td", { text: `${s.service_ms}` }),
      el("td", { text: `${Math.round(s.utilization * 100)} %` }), el("td", { text: `${s.weight}` }),
      el("td", { text: s.score_ms == null ? "—" : `${s.score_ms}` }),
      el("td", { text: s.end_to_end_ms == null ? "—" : `${s.end_to_end_ms}` })));
    const replica = a.replica ? ` on ${a.replica.replica} (${a.replica.why})` : "";
    const imagined = a.what_if ? `what if ${a.what_if.dial}: ${a.what_if.choice || "no region"}` : "";
    const chosen = (a.candidates || []).find((c) => c.region === a.choice);
    const steps = (chosen ? chosen.steps || [] : []).map((s) => el("li", { text: describeStep(s) }));
    blocks.push(el("section", { class: "explained", "data-edge": edge, "data-choice": a.choice || "",
      "data-what-if": a.what_if ? a.what_if.choice || "" : "" },
      el("h3", { text: `edge ${edge}: ${a.choice || "no region"}${replica}` }),
      el("p", { class: "what-if", text: imagined }),
      el("table", {}, el("caption", { text: `${edge}: score components per region (ms)` }),
        el("thead", {}, el("tr", {}, ...["Region", "Standing", "Network", "Service", "Utilization", "Dial", "Score",
          "End to end"].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, ...rows)),
      el("p", { text: `Replica choice in ${a.choice || "—"}, step by step:` }),
      el("ol", { class: "steps" }, ...steps)));
  }
  out.replaceChildren(...blocks);
}

function describeStep(s) {
  if (s.filter) return `${s.filter}: kept ${s.kept.join(", ") || "none"}${s.note ? ` (${s.note})` : ""}`;
  if (s.scores) {
    return "scores: " + Object.entries(s.scores).map(([r, v]) => `${r} ${Object.entries(v)
      .map(([k, x]) => `${k} ${typeof x === "number" ? x.toFixed(2) : x}`).join(" ")}`).join("; ");
  }
  if (s.picker) return `picker: ${s.picker}`;
  return JSON.stringify(s);
}

function clock(t) { return new Date(t * 1000).toISOString().slice(11, 19); }

function renderRuns() {
  const rows = state.runs.map((r) => {
    const applied = Object.values(r.applied || {});
    const last = applied.length ? Math.max(...applied) : null;
    return el("tr", { "data-run": r.id },
      el("th", { scope: "row", text: r.region }),
      el("td", { text: r.kind === "drain" ? `drain over ${r.over_s} s` : "switch" }),
      el("td", { text: clock(r.asked_at) }),
      el("td", { text: `${r.actor}: ${r.reason}` }),
      el("td", { text: r.done_at ? `+${(r.done_at - r.asked_at).toFixed(2)} s` : "walking" }),
      el("td", { text: `${applied.length}/${state.edges}${last ? ` by +${(last - r.asked_at).toFixed(2)} s` : ""}` }),
      el("td", { class: "recovery", text: r.recovery_s === null ? "—" : `${r.recovery_s.toFixed(2)} s` }),
      el("td", { class: "zero", text: r.traffic_zero_at == null ? "—" : `+${(r.traffic_zero_at - r.asked_at).toFixed(2)} s` }));
  });
  $("#runs tbody").replaceChildren(...rows);
}

function renderAuditFilter() {
  const select = $("#audit-region");
  const have = new Set([...select.options].map((o) => o.value));
  for (const t of state.topology) if (!have.has(t.name)) select.append(el("option", { value: t.name, text: t.name }));
}

function renderAudit() {
  const region = $("#audit-region").value;
  const q = $("#audit-q").value.trim().toLowerCase();
  const rows = state.audit
    .filter((e) => !region || e.region === region)
    .filter((e) => !q || `${e.actor} ${e.action} ${e.reason}`.toLowerCase().includes(q))
    .map((e) => el("tr", {},
      el("td", { text: new Date(e.at * 1000).toISOString().replace("T", " ").slice(0, 19) }),
      el("td", { text: e.actor }), el("td", { text: e.region }), el("td", { text: e.action }),
      el("td", { text: e.reason })));
  $("#audit tbody").replaceChildren(...rows);
}

// --- tenants ----------------------------------------------------------------------------------------------

async function loadTenants() {
  await Promise.all([loadUsage(), loadTenantList()]);
}

// the top tenants and their use by model: what the edges have reported so far (refreshed while shown)
async function loadUsage() {
  const top = await api("GET", "/v1/usage/top?by=tokens&n=10");
  if (top.status === 200) {
    $("#top tbody").replaceChildren(...top.data.tenants.map((t) => el("tr", {},
      el("th", { scope: "row", text: t.name }), el("td", { text: `${t.totals.requests}` }),
      el("td", { text: `${t.totals.prompt_tokens + t.totals.completion_tokens}` }),
      el("td", { text: `$${t.totals.spend_usd.toFixed(4)}` }))));
  }
  if (top.status === 200) {
    const byModel = [];
    for (const t of top.data.tenants.slice(0, 5)) {
      const u = await api("GET", `/v1/tenants/${encodeURIComponent(t.tenant)}/usage`);
      const models = {};
      for (const row of u.status === 200 ? u.data.rows : []) {
        const m = models[row.model] || (models[row.model] = { tokens: 0, spend: 0 });
        m.tokens += row.prompt_tokens + row.completion_tokens;
        m.spend += row.spend_usd;
      }
      for (const [model, m] of Object.entries(models)) {
        byModel.push(el("tr", {}, el("th", { scope: "row", text: t.name }), el("td", { text: model }),
          el("td", { text: `${m.tokens}` }), el("td", { text: `$${m.spend.toFixed(4)}` })));
      }
    }
    $("#by-model tbody").replaceChildren(...byModel);
  }
}

async function loadTenantList() {
  const list = await api("GET", "/v1/tenants");
  if (list.status !== 200) return;
  const rows = [];
  for (const t of list.data.tenants) {
    const keys = await api("GET", `/v1/tenants/${encodeURIComponent(t.id)}/keys`);
    const limits = Object.entries(t.limits).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v}`).join(", ");
    const keyCell = el("td", {});
    for (const k of keys.status === 200 ? keys.data.keys : []) {
      const revoke = el("button", { type: "button", disabled: state.role !== "operator", text: `Revoke ${k.prefix}…`,
        "aria-label": `Revoke key ${k.prefix} of ${t.name}` });
      revoke.addEventListener("click", async () => {
        const r = await api("DELETE", `/v1/tenants/${encodeURIComponent(t.id)}/keys/${encodeURIComponent(k.id)}`);
        $("#issued").textContent = r.status === 204 ? `Revoked ${k.prefix}… of ${t.name}.` : `Refused (${r.status}).`;
        loadTenants();
      });
      keyCell.append(el("div", {}, revoke));
    }
    const issue = el("button", { type: "button", disabled: state.role !== "operator", text: "Issue a key",
      "aria-label": `Issue a key for ${t.name}` });
    issue.addEventListener("click", async () => {
      const r = await api("POST", `/v1/tenants/${encodeURIComponent(t.id)}/keys`);
      $("#issued").textContent = r.status === 201
        ? `New key for ${t.name} (shown this once): ${r.data.key}` : `Refused (${r.status}).`;
      loadTenants();
    });
    rows.push(el("tr", {}, el("th", { scope: "row", text: t.name }), el("td", { text: t.priority }),
      el("td", { text: limits || "none" }), keyCell, el("td", {}, issue)));
  }
  $("#tenants tbody").replaceChildren(...rows);
}

// --- start ------------------------------------------------------------------------------------------------

$("#login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("#token").value.trim()).then((ok) => { if (ok) $("#token").value = ""; });
});
$("#signout").addEventListener("click", signOut);
$("#explain-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.explaining = { ip: $("#explain-ip").value.trim(), model: $("#explain-model").value.trim(),
    session: $("#explain-session").value.trim(), what_if: $("#explain-whatif").value.trim() };
  explain();
});
for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => show(b.dataset.view));
$("#audit-region").addEventListener("change", renderAudit);
$("#audit-q").addEventListener("input", renderAudit);
setInterval(renderCountdowns, 1000);
setInterval(() => { if (state.token && !$("#view-tenants").hidden) loadUsage(); }, USAGE_REFRESH_MS);
const kept = sessionStorage.getItem("meridian-token");
if (kept) signIn(kept);
