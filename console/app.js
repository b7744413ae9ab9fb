// The flexrun console: a runs list and a live run page over the public API.
//
// Everything on the run page is derived from the run's event stream (the same events the
// store keeps), replayed from seq 1 and then followed live. The page keeps the last seq it
// applied; a frame at or below it is a duplicate and is dropped, a frame above seq + 1 is a
// gap and makes the page reconnect from its last seq. The plan drawing comes from the server
// (`format=svg`, laid out there); the page only sets each node's state class on it.
"use strict";

const EVENT_TYPES = [
  "plan_requested", "plan_generated", "plan_accepted", "plan_updated", "plan_rejected",
  "node_start", "node_complete", "node_error", "validation_error", "policy_triggered",
  "hitl_request", "hitl_resolved", "run_paused", "run_resumed", "complete",
];
const TOKEN_KEY = "flexrun.token";
const LIST_REFRESH_MS = 2000;
const RECONNECT_MS = 1000;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// ---------------------------------------------------------------------------------------
// API access
// ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    const err = body && body.error;
    super(err ? `${err.code}: ${err.message}` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY); }

async function api(path, options) {
  const opts = Object.assign({ method: "GET" }, options || {});
  const headers = Object.assign({}, opts.headers || {});
  const t = token();
  if (t) headers["authorization"] = `Bearer ${t}`;
  if (opts.json !== undefined) {
    headers["content-type"] = "application/json";
    opts.body = JSON.stringify(opts.json);
  }
  const res = await fetch(path, { method: opts.method, headers, body: opts.body });
  if (res.status === 401) askForToken();
  const text = await res.text();
  let body = null;
  if (text) {
    try { body = JSON.parse(text); } catch (_) { body = text; }
  }
  if (!res.ok) throw new ApiError(res.status, body);
  if (opts.raw) return text;
  return body;
}

async function apiText(path) {
  const t = token();
  const res = await fetch(path, { headers: t ? { authorization: `Bearer ${t}` } : {} });
  if (res.status === 401) askForToken();
  if (!res.ok) throw new ApiError(res.status, null);
  return res.text();
}

function askForToken() {
  $("token-form").hidden = false;
  showBanner("The server asks for a bearer token (flexrun serve --auth-token-env).");
}

function showBanner(text) {
  const b = $("banner");
  b.textContent = text;
  b.hidden = !text;
}

function describe(err) {
  if (err instanceof ApiError && err.body && err.body.error) {
    const e = err.body.error;
    const field = e.details && e.details.field ? ` (field ${e.details.field})` : "";
    return `${e.code}: ${e.message}${field}`;
  }
  return String(err && err.message ? err.message : err);
}

// ---------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------

function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

function clock(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour12: false }) +
    "." + String(d.getMilliseconds()).padStart(3, "0");
}

function short(value, n) {
  const s = typeof value === "string" ? value : JSON.stringify(value);
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

function durationText(p) {
  if (typeof p.durationUs === "number") {
    return p.durationUs >= 1000 ? `${(p.durationUs / 1000).toFixed(1)} ms` : `${p.durationUs} µs`;
  }
  if (typeof p.durationMs === "number") return `${p.durationMs} ms`;
  return "";
}

// One line per event, as the terminal client prints them.
function summary(ev) {
  const p = ev.payload || {};
  switch (ev.type) {
    case "plan_requested":
      return `${p.phase} plan, attempt ${p.attempt}` + (p.trigger ? ` (${p.trigger.reason})` : "");
    case "plan_generated": {
      const kind = p.output ? p.output.kind : "?";
      return `${p.planner || "planner"} returned a ${kind}` + (p.latencyMs !== undefined ? ` in ${p.latencyMs} ms` : "");
    }
    case "plan_accepted": return `v${p.version} accepted: ${p.nodes} nodes, ${p.edges} edges`;
    case "plan_updated": {
      const d = p.diff || {};
      return `v${p.previousVersion} → v${p.version}: +${(d.addedNodes || []).join(", ") || "none"}` +
        ((d.removedNodes || []).length ? ` −${d.removedNodes.join(", ")}` : "") +
        ((d.changedNodes || []).length ? ` ~${d.changedNodes.join(", ")}` : "");
    }
    case "plan_rejected": return `${(p.diagnostics || []).length} diagnostic(s), attempt ${p.attempt}`;
    case "node_start": return `${ev.nodeId} ← ${p.capabilityId} (attempt ${p.attempt})`;
    case "node_complete": return `${ev.nodeId} done ${durationText(p)}`.trim();
    case "node_error": return `${ev.nodeId}: ${p.error ? p.error.code + " " + p.error.message : ""}` + (p.willRetry ? " (retrying)" : "");
    case "validation_error": return `${ev.nodeId}: ${(p.errors || []).join("; ")}` + (p.willRetry ? " (retrying)" : "");
    case "policy_triggered": return `${p.policyId} → ${p.action}`;
    case "hitl_request": return `${p.requestId}: ${p.question}`;
    case "hitl_resolved": return `${p.requestId}: ${p.decision} → ${p.next}`;
    case "run_paused": return p.reason || "paused";
    case "run_resumed": return p.reason || "resumed";
    case "complete": return p.status + (p.error ? `: ${p.error.code} ${p.error.message}` : "");
    default: return short(p, 120);
  }
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

let current = null; // the view being shown: { stop() }

function route() {
  if (current) current.stop();
  current = null;
  const m = location.hash.match(/^#\/runs\/([0-9a-fA-F-]{36})/);
  $("list-view").hidden = !!m;
  $("run-view").hidden = !m;
  current = m ? new RunPage(m[1]) : new RunsList();
}

// ---------------------------------------------------------------------------------------
// Runs list
// ---------------------------------------------------------------------------------------

class RunsList {
  constructor() {
    this.cursors = [null]; // the cursor of each page shown so far; the last is this page's
    this.stopped = false;
    this.timer = null;
    this.filterForm = $("filter");
    this.onFilter = (e) => { e.preventDefault(); this.cursors = [null]; this.load(); };
    this.onReset = () => setTimeout(() => { this.cursors = [null]; this.load(); }, 0);
    this.onFirst = () => { this.cursors = [null]; this.load(); };
    this.onNext = () => { if (this.next) { this.cursors.push(this.next); this.load(); } };
    this.onSubmit = (e) => this.submit(e);
    this.filterForm.addEventListener("submit", this.onFilter);
    this.filterForm.addEventListener("reset", this.onReset);
    $("page-first").addEventListener("click", this.onFirst);
    $("page-next").addEventListener("click", this.onNext);
    $("submit-form").addEventListener("submit", this.onSubmit);
    document.title = "Runs · flexrun";
    this.load();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.filterForm.removeEventListener("submit", this.onFilter);
    this.filterForm.removeEventListener("reset", this.onReset);
    $("page-first").removeEventListener("click", this.onFirst);
    $("page-next").removeEventListener("click", this.onNext);
    $("submit-form").removeEventListener("submit", this.onSubmit);
  }

  query() {
    const f = new FormData(this.filterForm);
    const q = new URLSearchParams({ limit: "20" });
    if (f.get("status")) q.set("status", f.get("status"));
    if (f.get("correlationId")) q.set("correlationId", f.get("correlationId"));
    const meta = String(f.get("metadata") || "");
    const eq = meta.indexOf("=");
    if (eq > 0) q.set(`metadata.${meta.slice(0, eq).trim()}`, meta.slice(eq + 1).trim());
    const after = f.get("createdAfter");
    if (after) q.set("createdAfter", new Date(after).toISOString());
    const cursor = this.cursors[this.cursors.length - 1];
    if (cursor) q.set("cursor", cursor);
    return q;
  }

  async load() {
    clearTimeout(this.timer);
    try {
      const page = await api(`/v1/runs?${this.query()}`);
      if (this.stopped) return;
      showBanner("");
      this.render(page);
    } catch (err) {
      if (this.stopped) return;
      showBanner(`Listing runs failed: ${describe(err)}`);
    }
    // The first page follows new runs; older pages stay as they are.
    if (!this.stopped && this.cursors.length === 1) {
      this.timer = setTimeout(() => this.load(), LIST_REFRESH_MS);
    }
  }

  render(page) {
    const body = $("runs");
    body.replaceChildren(...page.runs.map((r) => el("tr", {
      "data-run-id": r.runId,
      "data-status": r.status,
      onclick: () => { location.hash = `#/runs/${r.runId}`; },
    },
      el("td", { class: "status" }, el("span", { class: `badge ${r.status}` }, r.status)),
      el("td", { class: "objective" }, el("a", { href: `#/runs/${r.runId}` }, r.objective)),
      el("td", null, r.state),
      el("td", null, r.planVersion ? `v${r.planVersion}` : "—"),
      el("td", { title: r.createdAt }, age(r.createdAt)),
      el("td", null, el("code", null, r.runId.slice(0, 8) + "…" + r.runId.slice(-4))),
    )));
    $("runs-empty").hidden = page.runs.length > 0;
    this.next = page.nextCursor || null;
    $("page-next").disabled = !this.next;
    $("page-first").disabled = this.cursors.length === 1;
  }

  async submit(e) {
    e.preventDefault();
    $("submit-error").textContent = "";
    let envelope;
    try {
      envelope = JSON.parse($("envelope").value);
    } catch (err) {
      $("submit-error").textContent = `Not JSON: ${err.message}`;
      return;
    }
    try {
      const created = await api("/v1/runs", { method: "POST", json: envelope });
      location.hash = `#/runs/${created.runId}`;
    } catch (err) {
      $("submit-error").textContent = describe(err);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Run page
// ---------------------------------------------------------------------------------------

class RunPage {
  constructor(runId) {
    this.runId = runId;
    this.lastSeq = 0;
    this.events = [];
    this.nodes = new Map(); // node id → { state, capabilityId, attempts, started, ended, output }
    this.versions = [];
    this.currentVersion = 0;
    this.shownVersion = null; // null: follow the current version
    this.drawnVersion = null;
    this.hitl = new Map(); // request id → hitl_request payload (+ nodeId)
    this.planNodes = new Set(); // the node ids of the current version's drawing
    this.status = "active";
    this.stopped = false;
    this.source = null;
    this.reconnectTimer = null;
    this.drawTimer = null;
    this.selected = null;
    this.controls = {
      pause: () => this.control("pause"),
      resume: () => this.control("resume"),
      cancel: () => this.control("cancel"),
    };
    for (const [id, fn] of Object.entries(this.controls)) $(id).addEventListener("click", fn);
    this.onDagClick = (e) => {
      const g = e.target.closest("g.node");
      if (g) this.select(g.dataset.nodeId);
    };
    $("dag").addEventListener("click", this.onDagClick);
    for (const id of ["timeline", "hitl", "diagnostics", "versions", "dag"]) $(id).replaceChildren();
    for (const id of ["hitl-panel", "diagnostics-panel", "outcome-panel", "node-detail"]) $(id).hidden = true;
    $("run-id").textContent = runId;
    $("control-error").textContent = "";
    $("dag-caption").textContent = "";
    this.setStream("connecting");
    this.start();
  }

  stop() {
    this.stopped = true;
    this.closeSource();
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.drawTimer);
    for (const [id, fn] of Object.entries(this.controls)) $(id).removeEventListener("click", fn);
    $("dag").removeEventListener("click", this.onDagClick);
  }

  async start() {
    try {
      const run = await api(`/v1/runs/${this.runId}`);
      if (this.stopped) return;
      showBanner("");
      $("run-objective").textContent = run.objective;
      $("run-created").textContent = new Date(run.createdAt).toLocaleString();
      $("run-created").title = run.createdAt;
      document.title = `${run.objective} · flexrun`;
      this.status = run.status;
      this.state = run.state;
      this.currentVersion = run.planVersion;
      this.renderHead();
    } catch (err) {
      if (this.stopped) return;
      showBanner(`Loading run ${this.runId} failed: ${describe(err)}`);
      if (!(err instanceof ApiError) || err.status >= 500 || err.status === 401) {
        this.reconnectTimer = setTimeout(() => this.start(), RECONNECT_MS);
      }
      return;
    }
    // Node states, the timeline, HITL requests and diagnostics are all rebuilt from the
    // events as they replay from seq 1.
    this.connect();
  }

  // -- the stream --------------------------------------------------------------------

  async connect() {
    if (this.stopped) return;
    this.closeSource();
    let url = `/v1/runs/${this.runId}/events`;
    try {
      if (token()) {
        // EventSource cannot send Authorization: a short-lived stream token goes in the URL.
        const minted = await api(`/v1/runs/${this.runId}/events/token`, { method: "POST", json: {} });
        url = minted.eventsUrl;
      }
    } catch (err) {
      this.scheduleReconnect();
      return;
    }
    if (this.stopped) return;
    url += (url.includes("?") ? "&" : "?") + `after=${this.lastSeq}`;
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => { if (this.source === source) this.setStream("live"); };
    source.onerror = () => {
      if (this.source !== source) return;
      if (this.status !== "active" && this.ended) {
        this.closeSource();
        this.setStream("ended");
        return;
      }
      this.setStream("reconnecting");
      // CONNECTING: the browser retries by itself (with Last-Event-ID). CLOSED: it gave up
      // (an HTTP error such as 401 after the token expired, or 204): start again from our seq.
      if (source.readyState === EventSource.CLOSED) this.scheduleReconnect();
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (msg) => {
        if (this.source !== source) return;
        let ev;
        try { ev = JSON.parse(msg.data); } catch (_) { return; }
        this.receive(ev);
      });
    }
  }

  closeSource() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }

  scheduleReconnect() {
    this.closeSource();
    if (this.stopped || this.ended) return;
    this.setStream("reconnecting");
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), RECONNECT_MS);
  }

  setStream(state) {
    const s = $("stream-status");
    s.textContent = state;
    s.className = `stream ${state}`;
    s.dataset.state = state;
  }

  receive(ev) {
    if (ev.seq <= this.lastSeq) return; // a replayed duplicate
    if (ev.seq !== this.lastSeq + 1) {
      // A gap: never apply out of order; ask again from the last applied seq.
      this.scheduleReconnect();
      return;
    }
    this.lastSeq = ev.seq;
    this.events.push(ev);
    this.apply(ev);
    this.appendTimeline(ev);
    this.renderHead();
  }

  // -- applying one event ----------------------------------------------------------------

  apply(ev) {
    const p = ev.payload || {};
    const node = (id) => {
      if (!this.nodes.has(id)) this.nodes.set(id, { state: "pending", attempts: 0 });
      return this.nodes.get(id);
    };
    switch (ev.type) {
      case "plan_requested": this.state = "Requesting"; break;
      case "plan_generated": this.state = "Validating";
        if (p.diagnostics && p.diagnostics.length) this.addDiagnostics(ev, p.diagnostics, "reading the reply");
        break;
      case "plan_rejected":
        this.state = "Requesting";
        this.addDiagnostics(ev, p.diagnostics || [], `attempt ${p.attempt} (${p.phase}) rejected`);
        break;
      case "plan_accepted":
        this.state = "Executing";
        this.versionAppeared(p.version);
        break;
      case "plan_updated": {
        this.state = "Executing";
        const d = p.diff || {};
        for (const id of d.removedNodes || []) this.nodes.delete(id);
        for (const id of d.changedNodes || []) node(id).state = "pending";
        this.versionAppeared(p.version);
        break;
      }
      case "node_start": {
        const n = node(ev.nodeId);
        n.state = "running"; n.attempts = p.attempt; n.capabilityId = p.capabilityId;
        n.started = ev.timestamp; n.ended = undefined;
        break;
      }
      case "node_complete": {
        const n = node(ev.nodeId);
        n.state = "done"; n.ended = ev.timestamp; n.output = p.output; n.duration = durationText(p);
        break;
      }
      case "node_error":
      case "validation_error": {
        const n = node(ev.nodeId);
        n.state = p.willRetry ? "running" : "failed";
        n.ended = ev.timestamp;
        n.error = p.error ? `${p.error.code}: ${p.error.message}` : (p.errors || []).join("; ");
        break;
      }
      case "policy_triggered": this.state = p.action === "pause" ? "Paused" : "Replanning"; break;
      case "hitl_request":
        this.state = "Paused";
        this.hitl.set(p.requestId, Object.assign({ nodeId: ev.nodeId }, p));
        this.renderHitl();
        break;
      case "hitl_resolved":
        this.hitl.delete(p.requestId);
        this.state = p.next === "replan" ? "Replanning" : "Executing";
        this.renderHitl();
        break;
      case "run_paused": this.state = "Paused"; break;
      case "run_resumed": this.state = "Executing"; break;
      case "complete":
        this.status = p.status;
        this.state = "Done";
        this.ended = true;
        this.hitl.clear();
        this.renderHitl();
        this.renderOutcome(p);
        this.closeSource();
        this.setStream("ended");
        break;
      default: break;
    }
    if (ev.planVersion) this.currentVersion = Math.max(this.currentVersion, ev.planVersion);
    this.paintNodes();
    if (this.selected) this.renderNodeDetail();
  }

  versionAppeared(version) {
    if (!this.versions.includes(version)) this.versions.push(version);
    this.currentVersion = version;
    this.renderVersions();
    if (this.shownVersion === null) this.scheduleDraw();
  }

  // -- drawing -------------------------------------------------------------------------

  shown() { return this.shownVersion === null ? this.currentVersion : this.shownVersion; }

  scheduleDraw() {
    // Coalesce: a replay of many plan versions draws only the last.
    clearTimeout(this.drawTimer);
    this.drawTimer = setTimeout(() => this.draw(), 30);
  }

  async draw() {
    const version = this.shown();
    if (!version || this.stopped) return;
    try {
      const svg = await apiText(`/v1/runs/${this.runId}/plan/versions/${version}?format=svg`);
      if (this.stopped || version !== this.shown()) return;
      const dag = $("dag");
      // The markup is the server's own drawing of stored plan data (escaped there); the
      // page's Content-Security-Policy forbids scripts in it regardless.
      dag.innerHTML = svg;
      this.drawnVersion = version;
      if (version === this.currentVersion) {
        this.planNodes = new Set([...dag.querySelectorAll("g.node:not(.diff-removed)")].map((g) => g.dataset.nodeId));
      }
      const svgEl = dag.querySelector("svg");
      const base = svgEl && svgEl.dataset.base;
      $("dag-caption").textContent = version === this.currentVersion
        ? `Version ${version} (current)` + (base ? `, marked against version ${base}` : "")
        : `Version ${version} of ${this.currentVersion}` + (base ? `, marked against version ${base}` : "");
      this.paintNodes();
      this.renderVersions();
      this.renderHead();
    } catch (err) {
      $("dag-caption").textContent = `Drawing version ${version} failed: ${describe(err)}`;
    }
  }

  paintNodes() {
    for (const g of $("dag").querySelectorAll("g.node")) {
      const n = this.nodes.get(g.dataset.nodeId);
      const state = g.classList.contains("diff-removed") ? null : (n ? n.state : "pending");
      for (const s of ["pending", "running", "done", "failed"]) g.classList.toggle(`state-${s}`, s === state);
      g.classList.toggle("selected", g.dataset.nodeId === this.selected);
      if (state) g.dataset.state = state; else delete g.dataset.state;
    }
  }

  renderVersions() {
    const box = $("versions");
    const shown = this.shown();
    box.replaceChildren(...this.versions.slice().sort((a, b) => a - b).map((v) => el("button", {
      type: "button",
      "data-version": v,
      class: v === shown ? "shown" : "",
      title: v === this.currentVersion ? "the current version" : `an earlier version`,
      onclick: () => {
        this.shownVersion = v === this.currentVersion ? null : v;
        this.renderVersions();
        this.draw();
      },
    }, `v${v}` + (v === this.currentVersion ? " ●" : ""))));
  }

  select(nodeId) {
    this.selected = this.selected === nodeId ? null : nodeId;
    this.paintNodes();
    this.renderNodeDetail();
  }

  renderNodeDetail() {
    const box = $("node-detail");
    const n = this.selected && this.nodes.get(this.selected);
    if (!this.selected) { box.hidden = true; return; }
    box.hidden = false;
    box.replaceChildren(
      el("strong", null, this.selected), " ",
      el("span", { class: "muted" }, n ? `${n.capabilityId || ""} · ${n.state} · attempt ${n.attempts || 0}` +
        (n.duration ? ` · ${n.duration}` : "") : "not in the current version"),
      n && n.error ? el("p", { class: "error" }, n.error) : null,
      n && n.output ? el("pre", null, JSON.stringify(n.output, null, 2)) : null,
    );
  }

  // -- panels ----------------------------------------------------------------------------

  renderHead() {
    const badge = $("run-status");
    badge.textContent = this.status;
    badge.className = `badge ${this.status}`;
    badge.dataset.status = this.status;
    $("run-state").textContent = this.state || "";
    $("run-version").textContent = this.currentVersion ? `v${this.currentVersion}` : "—";
    let done = 0;
    for (const id of this.planNodes) if (this.nodes.has(id) && this.nodes.get(id).state === "done") done += 1;
    $("run-progress").textContent = this.planNodes.size ? `${done} / ${this.planNodes.size} done` : "—";
    $("event-count").textContent = `${this.events.length}`;
    const active = this.status === "active";
    $("pause").disabled = !active || this.state === "Paused";
    $("resume").disabled = !active || this.state !== "Paused" || this.hitl.size > 0;
    $("cancel").disabled = !active;
  }

  appendTimeline(ev) {
    const list = $("timeline");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 30;
    list.append(el("li", { "data-seq": ev.seq, "data-type": ev.type, class: `kind-${ev.type}` },
      el("span", { class: "seq" }, ev.seq),
      el("span", { class: "time", title: ev.timestamp }, clock(ev.timestamp)),
      el("span", { class: "type" }, ev.type),
      el("span", { class: "summary" }, summary(ev)),
    ));
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  addDiagnostics(ev, diagnostics, title) {
    if (!diagnostics.length) return;
    $("diagnostics-panel").hidden = false;
    $("diagnostics").append(el("div", { class: "diag-group", "data-seq": ev.seq },
      el("p", { class: "muted" }, `#${ev.seq} · ${title}`),
      ...diagnostics.map((d) => el("div", { class: `diag ${d.severity || "error"}`, "data-code": d.code },
        el("span", { class: "code" }, d.code), " ",
        el("span", null, d.message),
        d.nodeId ? el("span", { class: "muted" }, ` · node ${d.nodeId}`) : null,
        d.path ? el("span", { class: "muted" }, ` · ${d.path}`) : null,
        d.hint ? el("div", { class: "hint" }, d.hint) : null,
      )),
    ));
  }

  renderHitl() {
    const box = $("hitl");
    $("hitl-panel").hidden = this.hitl.size === 0;
    box.replaceChildren(...[...this.hitl.values()].map((r) => this.hitlCard(r)));
    this.renderHead();
  }

  hitlCard(r) {
    const status = el("span", { class: "error" });
    const text = el("input", { type: "text", placeholder: r.kind === "clarify" ? "your answer" : "comment (optional)" });
    const answer = async (decision, extra) => {
      status.textContent = "";
      const body = Object.assign({ decision, responder: { id: "console" } }, extra || {});
      if (text.value && body.text === undefined) body.text = text.value;
      try {
        await api(`/v1/runs/${this.runId}/hitl/${encodeURIComponent(r.requestId)}`, { method: "POST", json: body });
        for (const b of card.querySelectorAll("button")) b.disabled = true;
        status.textContent = "sent";
        status.className = "muted";
      } catch (err) {
        status.textContent = describe(err);
      }
    };
    const buttons = [];
    if (r.kind === "approval") {
      buttons.push(el("button", { type: "button", class: "primary", "data-decision": "approve", onclick: () => answer("approve") }, "Approve"));
      buttons.push(el("button", { type: "button", class: "danger", "data-decision": "reject", onclick: () => answer("reject") }, "Reject"));
    } else {
      for (const o of r.options || []) {
        buttons.push(el("button", { type: "button", "data-decision": "option", "data-option": o, onclick: () => answer("option", { optionId: o }) }, o));
      }
      buttons.push(el("button", { type: "button", class: "primary", "data-decision": "freeform", onclick: () => answer("freeform", { text: text.value }) }, "Answer"));
      buttons.push(el("button", { type: "button", class: "danger", "data-decision": "reject", onclick: () => answer("reject") }, "Reject"));
    }
    const onReject = r.onReject ? ` · reject → ${r.onReject}` : "";
    const card = el("div", { class: "hitl-card", "data-request-id": r.requestId },
      el("div", { class: "question" }, r.question),
      el("div", { class: "muted" }, `${r.kind} · ${r.requestId}` + (r.nodeId ? ` · node ${r.nodeId}` : "") +
        (r.policyId ? ` · policy ${r.policyId}` : "") + onReject),
      r.contractSummary ? el("pre", null, JSON.stringify(r.contractSummary.values || r.contractSummary, null, 2)) : null,
      el("div", { class: "actions" }, text, ...buttons, status),
    );
    return card;
  }

  renderOutcome(p) {
    $("outcome-panel").hidden = false;
    $("outcome").textContent = JSON.stringify(p.status === "completed" ? p.output : p.error || p, null, 2);
    $("outcome").dataset.status = p.status;
  }

  async control(action) {
    $("control-error").textContent = "";
    try {
      await api(`/v1/runs/${this.runId}/${action}`, { method: "POST", json: { reason: "from the console" } });
    } catch (err) {
      $("control-error").textContent = describe(err);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------

function init() {
  document.body.dataset.loadId = Math.random().toString(36).slice(2);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value);
    $("token-input").value = "";
    $("token-form").hidden = true;
    $("token-forget").hidden = false;
    showBanner("");
    route();
  });
  $("token-forget").hidden = !token();
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    $("token-forget").hidden = true;
    route();
  });
  window.addEventListener("hashchange", route);
  route();
}

document.addEventListener("DOMContentLoaded", init);
