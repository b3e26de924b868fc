// jectguard dashboard: plain DOM, no external resources. Data is only ever inserted as
// text (textContent / createTextNode / SVG attributes), never as markup.
"use strict";

(function () {
  const TOKEN_KEY = "jectguard-admin-token";
  const POLL_MS = 10000;
  const CHART_MINUTES = 180;
  const BUCKET_MINUTES = 5;
  const SVG_NS = "http://www.w3.org/2000/svg";
  let timer = null;

  const $ = (id) => document.getElementById(id);
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 120) return s + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }

  class AuthError extends Error {}

  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers.Authorization = "Bearer " + token();
    opts.cache = "no-store";
    opts.credentials = "omit";
    const r = await fetch(path, opts);
    if (r.status === 401) throw new AuthError("token rejected");
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    return { status: r.status, body: body };
  }

  function showLogin(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer) { clearInterval(timer); timer = null; }
    $("panels").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("summary").textContent = "Not signed in.";
    $("token").focus();
  }

  function showPanels() {
    $("login").hidden = true;
    $("panels").hidden = false;
    $("logout").hidden = false;
    refreshAll();
    if (!timer) timer = setInterval(refreshAll, POLL_MS);
  }

  async function refreshAll() {
    try {
      await Promise.all([loadStatus(), loadEvents(), loadChart(), loadCampaigns(), loadRetro()]);
    } catch (e) {
      if (e instanceof AuthError) showLogin("The token was rejected. Paste it again.");
      else $("summary").textContent = "Cannot reach the admin API: " + e.message;
    }
  }

  async function loadStatus() {
    const { body: s } = await api("/api/status");
    if (!s) return;
    const parts = ["v" + s.version, "up " + age(s.uptime_seconds)];
    if (s.proxy) parts.push("proxy " + s.proxy);
    parts.push(s.ready ? "ready" : "NOT READY: no index loaded");
    $("summary").textContent = parts.join(" · ");
    const snap = s.snapshot;
    $("snapshot").textContent = snap
      ? snap.rules + " block rules, " + snap.allow_rules + " allow rules; index built " +
        age(snap.age_seconds) + " ago" + (snap.refused_by_guard ? "; " + snap.refused_by_guard +
        " refused by the poison guard" : "")
      : "No index loaded.";
    showInForce(s.in_force);
    const refreshBySource = {};
    const r = s.refresh;
    const sources = r && (Array.isArray(r) ? r : r.sources);
    if (Array.isArray(sources)) {
      for (const src of sources) if (src && src.name) refreshBySource[src.name] = src;
    }
    const tbody = $("lists").tBodies[0];
    clear(tbody);
    for (const l of s.lists || []) {
      const tr = document.createElement("tr");
      tr.appendChild(el("td", l.name));
      tr.appendChild(el("td", l.allow ? "allow" : l.category));
      tr.appendChild(el("td", l.mode));
      tr.appendChild(el("td", l.rules !== undefined ? l.rules : "–", "num"));
      tr.appendChild(healthCell(l, refreshBySource[l.name]));
      tbody.appendChild(tr);
    }
    const last = r && !Array.isArray(r) ? r.last_refresh : null;
    $("refresh-msg").textContent = last && last.not_published
      ? "Last refresh not published: " + last.not_published : $("refresh-msg").textContent;
    $("refresh").hidden = !s.refresh_available;
  }

  // The store's record of what is in force (the same one `jectguard lists` shows): which
  // snapshot, whether this process serves it, a rollback and the sources it holds, a repair.
  function showInForce(rec) {
    const box = $("in-force");
    clear(box);
    if (!rec) { box.hidden = true; return; }
    box.hidden = false;
    const lines = ["In force: " + rec.snapshot + (rec.serving === false ? " (this process " +
      "does not serve it yet)" : "")];
    if (rec.rolled_back_from) lines.push("Rolled back from " + rec.rolled_back_from + ".");
    const holds = rec.holds || {};
    for (const name of Object.keys(holds)) {
      lines.push("Held: " + name + " (" + holds[name].reason + "); release with " +
        "`jectguard rollback --release " + name + "`.");
    }
    if (rec.repaired) lines.push("Repaired: " + rec.repaired);
    for (const line of lines) box.appendChild(el("div", line));
  }

  function healthCell(list, src) {
    const td = document.createElement("td");
    const info = Object.assign({}, list, src || {});
    let state = "ok";
    let text = "loaded";
    if (info.held_back || info.held_back_reason) { state = "refresh-held"; text = "held back"; }
    if (info.last_error || info.error) { state = "error"; text = "error"; }
    if (info.loaded === false) { state = "error"; text = "not loaded"; }
    const hold = info.held || (info.hold && info.hold.reason);
    if (hold) { state = "refresh-held"; text = "held (rollback)"; }
    td.appendChild(el("span", text, "badge " + state));
    const why = (hold ? "held: " + hold : null) || info.held_back || info.held_back_reason ||
      info.last_error || info.error;
    if (why) td.appendChild(el("div", why, "muted"));
    const ageS = info.age_seconds !== undefined ? info.age_seconds : null;
    if (ageS !== null) td.appendChild(el("div", "updated " + age(ageS) + " ago", "muted"));
    return td;
  }

  async function loadEvents() {
    const { body } = await api("/api/events?limit=50");
    const tbody = $("events").tBodies[0];
    clear(tbody);
    const events = (body && body.events) || [];
    if (!events.length) {
      const tr = document.createElement("tr");
      const td = el("td", "No events yet.", "muted");
      td.colSpan = 6;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    for (const ev of events) {
      const tr = document.createElement("tr");
      const t = new Date(ev.time);
      tr.appendChild(el("td", isNaN(t) ? ev.time : t.toLocaleTimeString()));
      const kind = document.createElement("td");
      kind.appendChild(el("span", ev.event, "badge " + ev.event));
      tr.appendChild(kind);
      tr.appendChild(el("td", ev.client || ""));
      tr.appendChild(el("td", ev.url || ev.source || ev.reason || "", "url"));
      tr.appendChild(el("td", [ev.list, ev.rule].filter(Boolean).join(": ")));
      tr.appendChild(el("td", ev.request_id || ""));
      tbody.appendChild(tr);
    }
  }

  // Campaigns: the listed hosts (enforce) and the recent findings (monitor), one row a host.
  async function loadCampaigns() {
    const { status, body } = await api("/api/campaigns");
    const panel = $("campaigns-panel");
    if (status !== 200 || !body) { panel.hidden = true; return; }
    panel.hidden = false;
    $("campaign-mode").textContent = "(" + (body.enabled === false ? "off" : body.action) + ")";
    const rows = [];
    const seen = new Set();
    for (const c of body.listed || []) { rows.push([c, "blocked"]); seen.add(c.host); }
    const cleared = body.cleared || {};
    for (const f of body.findings || []) {
      if (seen.has(f.host)) continue;
      seen.add(f.host);
      rows.push([f, f.host in cleared ? "cleared" : "reported"]);
    }
    const tbody = $("campaigns").tBodies[0];
    clear(tbody);
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = el("td", "No campaign seen.", "muted");
      td.colSpan = 7;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    for (const [c, state] of rows) {
      const tr = document.createElement("tr");
      tr.appendChild(el("td", c.host, "url"));
      const st = document.createElement("td");
      st.appendChild(el("span", state, "badge " + (state === "blocked" ? "block" : "monitor")));
      tr.appendChild(st);
      const t = new Date(c.flagged_at);
      tr.appendChild(el("td", isNaN(t) ? c.flagged_at : t.toLocaleString()));
      tr.appendChild(el("td", (c.sites || []).join(", ")));
      tr.appendChild(el("td", c.score, "num"));
      const ev = document.createElement("td");
      for (const line of c.evidence || []) ev.appendChild(el("div", line, "muted"));
      tr.appendChild(ev);
      const act = document.createElement("td");
      if (state !== "cleared") {
        const b = el("button", state === "blocked" ? "Clear (unblock)" : "Dismiss");
        b.type = "button";
        b.className = "campaign-clear";
        b.dataset.host = c.host;
        b.addEventListener("click", () => onClearCampaign(c.host));
        act.appendChild(b);
      }
      tr.appendChild(act);
      tbody.appendChild(tr);
    }
  }

  // Retro-hunt: every field is text (textContent), never markup: hosts and users come from traffic.
  async function loadRetro() {
    const { body } = await api("/api/retro?days=30");
    const tbody = $("retro").tBodies[0];
    clear(tbody);
    const hits = (body && body.hits) || [];
    if (!hits.length) {
      const tr = document.createElement("tr");
      const td = el("td", body && body.enabled === false ? "The ledger is off (jg_ledger)." : "No retro-hunt hits.", "muted");
      td.colSpan = 4;
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    for (const h of hits) {
      const tr = document.createElement("tr");
      const t = new Date(h.found_at);
      tr.appendChild(el("td", isNaN(t) ? h.found_at : t.toLocaleString()));
      tr.appendChild(el("td", h.host, "url"));
      tr.appendChild(el("td", [h.list, h.rule].filter(Boolean).join(": ")));
      const who = (h.clients || []).map(function (c) {
        return (c.user ? c.user + " @ " : "") + (c.client || "?") + " ×" + c.count + " (" + c.first + " … " + c.last + ")";
      });
      tr.appendChild(el("td", who.join("; ")));
      tbody.appendChild(tr);
    }
  }

  async function onClearCampaign(host) {
    const msg = $("campaign-msg");
    try {
      const { status, body } = await api("/api/campaigns/" + encodeURIComponent(host),
        { method: "DELETE" });
      msg.textContent = status === 200 ? host + " cleared." : (body && body.error) || "HTTP " + status;
      await loadCampaigns();
    } catch (e) {
      if (e instanceof AuthError) showLogin("The token was rejected. Paste it again.");
      else msg.textContent = e.message;
    }
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }

  async function loadChart() {
    const { body: tl } = await api("/api/timeline?minutes=" + CHART_MINUTES);
    if (!tl || !tl.series) return;
    // DNS blocks (whole-network DNS mode) are counted apart from proxy blocks.
    const kinds = ["block", "dns-block", "monitor", "strip"];
    const n = tl.series.block.length;
    const buckets = [];
    for (let i = 0; i < n; i += BUCKET_MINUTES) {
      const b = { start: tl.start + i * tl.step };
      for (const k of kinds) {
        b[k] = tl.series[k].slice(i, i + BUCKET_MINUTES).reduce((a, c) => a + c, 0);
      }
      buckets.push(b);
    }
    const W = 600, H = 180, PAD_L = 34, PAD_B = 20, PAD_T = 8;
    const max = Math.max(1, ...buckets.map((b) => kinds.reduce((a, k) => a + b[k], 0)));
    const root = svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none" });
    const plotW = W - PAD_L, plotH = H - PAD_B - PAD_T;
    const bw = plotW / buckets.length;
    root.appendChild(svg("line", { x1: PAD_L, y1: H - PAD_B, x2: W, y2: H - PAD_B, class: "axis" }));
    const top = svg("text", { x: 2, y: PAD_T + 10 });
    top.textContent = String(max);
    root.appendChild(top);
    const zero = svg("text", { x: 2, y: H - PAD_B });
    zero.textContent = "0";
    root.appendChild(zero);
    buckets.forEach((b, i) => {
      let y = H - PAD_B;
      for (const k of kinds) {
        if (!b[k]) continue;
        const h = (b[k] / max) * plotH;
        y -= h;
        const rect = svg("rect", {
          x: PAD_L + i * bw + 0.5, y: y, width: Math.max(1, bw - 1), height: h, class: "bar-" + k,
        });
        const title = svg("title", {});
        title.textContent = new Date(b.start * 1000).toLocaleTimeString() + ": " + b[k] + " " + k;
        rect.appendChild(title);
        root.appendChild(rect);
      }
      if (i % 12 === 0) {
        const label = svg("text", { x: PAD_L + i * bw, y: H - 5 });
        label.textContent = new Date(b.start * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
        root.appendChild(label);
      }
    });
    const chart = $("chart");
    clear(chart);
    chart.appendChild(root);
    $("chart-range").textContent = "(last " + CHART_MINUTES / 60 + " h, " + BUCKET_MINUTES + "-minute bars)";
  }

  async function onCheck(ev) {
    ev.preventDefault();
    const out = $("check-result");
    clear(out);
    const url = $("check-url").value.trim();
    if (!url) return;
    try {
      const { status, body } = await api("/api/check?url=" + encodeURIComponent(url));
      const rows = status === 200 && body
        ? [["verdict", body.verdict], ["canonical URL", body.canonical_url], ["list", body.list],
           ["rule", body.rule], ["category", body.category], ["kind", body.kind],
           ["overridden", body.overridden ? body.overridden.list + ": " + body.overridden.rule : null],
           ["error", body.error]]
        : [["error", (body && body.error) || "HTTP " + status]];
      for (const [k, v] of rows) {
        if (v === null || v === undefined) continue;
        out.appendChild(el("dt", k));
        const dd = el("dd", "");
        if (k === "verdict") dd.appendChild(el("span", v, "badge " + v));
        else dd.textContent = String(v);
        out.appendChild(dd);
      }
    } catch (e) {
      if (e instanceof AuthError) showLogin("The token was rejected. Paste it again.");
      else { out.appendChild(el("dt", "error")); out.appendChild(el("dd", e.message)); }
    }
  }

  async function onRefresh() {
    const msg = $("refresh-msg");
    try {
      const { status, body } = await api("/api/refresh", { method: "POST" });
      msg.textContent = status === 202 ? "Refresh started." :
        (body && body.error) || "HTTP " + status;
    } catch (e) {
      if (e instanceof AuthError) showLogin("The token was rejected. Paste it again.");
      else msg.textContent = e.message;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const t = $("token").value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      $("token").value = "";
      showPanels();
    });
    $("logout").addEventListener("click", () => showLogin(""));
    $("check-form").addEventListener("submit", onCheck);
    $("refresh").addEventListener("click", onRefresh);
    if (token()) showPanels(); else showLogin("");
  });
})();
