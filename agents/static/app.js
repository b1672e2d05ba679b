"use strict";
// funnelwatch dashboard: plain JS, talks only to the worker that served it
// (/funnel, /alerts, /stats, /messages). Dynamic text is set with textContent only.
(function () {
  const STAGES = ["queued", "sent", "delivered", "opened", "clicked"];
  const FIELDS = ["entered", "queued", "sent", "delivered", "opened", "clicked", "failed",
    "soft_bounced", "complained", "unsubscribed", "opens_total", "clicks_total"];
  const CHANNEL_ORDER = ["email", "sms", "push", "telegram", "unknown"];
  const REFRESH_MS = 10000;
  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ token
  const TOKEN_KEY = "funnelwatch.token";
  const params = new URLSearchParams(location.search);
  if (params.has("token")) {
    sessionStorage.setItem(TOKEN_KEY, params.get("token"));
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }

  async function api(path) {
    const headers = { "Accept": "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers["Authorization"] = "Bearer " + token;
    const resp = await fetch(path, { headers: headers, cache: "no-store" });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (resp.status === 401) $("auth").hidden = false;
    return { status: resp.status, body: body };
  }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v);
    }
    for (const c of children || []) e.appendChild(c);
    return e;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function pct(n, d) { return d > 0 ? (100 * n / d) : 0; }
  function fmtPct(n, d) { return d > 0 ? pct(n, d).toFixed(1) + "%" : "–"; }

  // ------------------------------------------------------------------ period
  function isoUtc(date) { return date.toISOString().replace(/\.\d{3}Z$/, "Z"); }
  function localInputToIso(value) {
    if (!value) return null;
    const v = value.length === 16 ? value + ":00" : value;
    return v + "Z";  // the inputs are UTC by definition (labelled so)
  }

  function periodQuery() {
    const q = new URLSearchParams();
    const p = $("period").value;
    if (p === "custom") {
      const f = localInputToIso($("from").value), t = localInputToIso($("to").value);
      if (f) q.set("from", f);
      if (t) q.set("to", t);
    } else if (p !== "all") {
      const hours = Number(p);
      const now = Date.now();
      // /funnel filters by window start: include the window the period starts in.
      q.set("from", isoUtc(new Date(Math.floor((now - hours * 3600e3) / 3600e3) * 3600e3)));
    }
    return q;
  }

  // ------------------------------------------------------------------ funnel
  function aggregate(rows, tenant) {
    const by = {};
    for (const r of rows) {
      if (tenant && r.tenant !== tenant) continue;
      const acc = by[r.channel] || (by[r.channel] = Object.fromEntries(FIELDS.map((f) => [f, 0])));
      for (const f of FIELDS) acc[f] += r[f] || 0;
    }
    return by;
  }

  function barRow(label, count, entered, cls) {
    const bar = el("div", { class: "bar" });
    bar.style.width = Math.min(100, pct(count, entered)).toFixed(2) + "%";
    return el("div", { class: "row " + (cls || ""), "data-stage": label, "data-count": String(count) }, [
      el("span", { class: "label", text: label }),
      el("div", { class: "track" }, [bar]),
      el("span", { class: "count", text: String(count) }),
      el("span", { class: "rate", text: fmtPct(count, entered) }),
    ]);
  }

  function renderFunnel(rows) {
    const tenantSel = $("tenant");
    const chosen = tenantSel.value;
    const tenants = Array.from(new Set(rows.map((r) => r.tenant))).sort();
    if (chosen && !tenants.includes(chosen)) tenants.push(chosen);
    clear(tenantSel);
    tenantSel.appendChild(el("option", { value: "", text: "all tenants" }));
    for (const t of tenants) tenantSel.appendChild(el("option", { value: t, text: t }));
    tenantSel.value = chosen;

    const by = aggregate(rows, chosen);
    const box = $("funnel");
    clear(box);
    const channels = Object.keys(by).sort((a, b) => {
      const ia = CHANNEL_ORDER.indexOf(a), ib = CHANNEL_ORDER.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
    if (!channels.length) {
      box.appendChild(el("p", { class: "empty", text: "No messages in this period." }));
      return;
    }
    for (const ch of channels) {
      const v = by[ch];
      const card = el("div", { class: "card", "data-channel": ch, "data-entered": String(v.entered) }, [
        el("h3", {}, [document.createTextNode(ch + " "), el("span", { class: "n", text: v.entered + " entered" })]),
      ]);
      for (const s of STAGES) card.appendChild(barRow(s, v[s], v.entered));
      card.appendChild(barRow("failed", v.failed, v.entered, "failed"));
      card.appendChild(el("div", { class: "extra", text:
        "opens " + v.opens_total + " · clicks " + v.clicks_total + " · soft bounced " + v.soft_bounced +
        " · complained " + v.complained + " · unsubscribed " + v.unsubscribed }));
      box.appendChild(card);
    }
  }

  // ------------------------------------------------------------------ alerts
  function renderAlerts(body) {
    const tbody = $("alerts").querySelector("tbody");
    clear(tbody);
    $("alerts-total").textContent = String(body.total);
    if (!body.alerts.length) {
      tbody.appendChild(el("tr", {}, [el("td", { colspan: "6", class: "empty", text: "No message is stuck." })]));
      return;
    }
    for (const a of body.alerts) {
      const link = el("a", { class: "msg", href: "#", text: a.message_id });
      link.addEventListener("click", (ev) => {
        ev.preventDefault();
        $("l-source").value = a.source; $("l-tenant").value = a.tenant; $("l-id").value = a.message_id;
        lookup();
      });
      tbody.appendChild(el("tr", {}, [
        el("td", { text: a.tenant }), el("td", { text: a.channel }), el("td", { text: a.stage }),
        el("td", {}, [link]), el("td", { text: a.since || "" }), el("td", { text: a.deadline || "" }),
      ]));
    }
  }

  // ------------------------------------------------------------------ dead letters
  function renderStats(body) {
    const tbody = $("dlq").querySelector("tbody");
    clear(tbody);
    $("dlq-total").textContent = String(body.dead_letters_total);
    const reasons = Object.entries(body.dead_letters_by_reason);
    if (!reasons.length) {
      tbody.appendChild(el("tr", {}, [el("td", { colspan: "2", class: "empty", text: "No rejected records." })]));
    }
    for (const [reason, n] of reasons) {
      tbody.appendChild(el("tr", { "data-reason": reason }, [el("td", { text: reason }), el("td", { class: "num", text: String(n) })]));
    }
    const ign = Object.values(body.ignored).reduce((s, m) => s + Object.values(m).reduce((a, b) => a + b, 0), 0);
    const dup = Object.values(body.duplicates).reduce((a, b) => a + b, 0);
    $("other-stats").textContent = body.events + " input events · " + ign + " ignored (test events) · " +
      dup + " duplicates · " + body.inflight + " messages in flight · " + body.workers + " worker(s)";
  }

  // ------------------------------------------------------------------ message lookup
  function dl(pairs) {
    const d = el("dl", { class: "summary" });
    for (const [k, v] of pairs) {
      d.appendChild(el("dt", { text: k }));
      d.appendChild(v instanceof Node ? el("dd", {}, [v]) : el("dd", { text: v }));
    }
    return d;
  }

  async function lookup() {
    const box = $("message");
    const q = new URLSearchParams({ source: $("l-source").value, tenant: $("l-tenant").value.trim(), id: $("l-id").value.trim() });
    clear(box);
    if (!q.get("tenant") || !q.get("id")) {
      box.appendChild(el("p", { class: "empty", text: "Give a tenant and a message id." }));
      return;
    }
    box.appendChild(el("p", { class: "empty", text: "looking up…" }));
    let r;
    try { r = await api("/messages?" + q.toString()); } catch (e) { r = { status: 0, body: null }; }
    clear(box);
    if (r.status !== 200 || !r.body) {
      const why = r.status === 404 ? "No such message (unknown, or expired)." :
        "Lookup failed (" + r.status + "): " + ((r.body && r.body.error) || "no answer");
      box.appendChild(el("p", { class: "empty", id: "message-error", text: why }));
      return;
    }
    const m = r.body;
    const stages = m.stages.map((s) => s.stage + " " + s.at).join(" → ") || "none";
    const stuck = m.stuck ? (m.stuck.stage + " since " + m.stuck.since + ", deadline " + m.stuck.deadline +
      (m.stuck.stuck_now ? " — STUCK NOW" : " — within SLA")) : "no pending deadline";
    const alerts = m.alerts.map((a) => a.type + " (" + a.stage + (a.open ? ", open" : "") + ")").join(", ") || "none";
    const outcome = el("span", { class: "outcome-" + m.outcome, id: "message-outcome", text: m.outcome });
    box.appendChild(el("div", { id: "message-found", "data-message-id": m.message_id }, [
      dl([
        ["message", m.source + " / " + m.tenant + " / " + m.message_id],
        ["channel", m.channel],
        ["outcome", outcome],
        ["conflicting", m.conflicting ? "yes (delivery evidence and a failure)" : "no"],
        ["stages", stages],
        ["annotations", m.annotations.join(", ") || "none"],
        ["opens / clicks", m.opens_total + " / " + m.clicks_total],
        ["entry window", m.window_start + " – " + m.window_end],
        ["stuck", stuck],
        ["alerts", alerts],
        ["served by", m.served_by || ""],
      ]),
      el("pre", { text: JSON.stringify(m, null, 2) }),
    ]));
  }

  // ------------------------------------------------------------------ refresh
  let timer = null;
  let busy = false;

  async function refresh() {
    if (busy) return;
    busy = true;
    const status = $("status");
    const problems = [];
    try {
      const q = periodQuery();
      const tenant = $("tenant").value;
      const [funnel, alerts, stats] = await Promise.all([
        api("/funnel?" + q.toString()),
        api("/alerts?" + new URLSearchParams(tenant ? { tenant: tenant, limit: "100" } : { limit: "100" }).toString()),
        api("/stats"),
      ]);
      if (funnel.status === 200) renderFunnel(funnel.body.windows);
      else problems.push("funnel " + funnel.status + ((funnel.body && funnel.body.error) ? ": " + funnel.body.error : ""));
      if (alerts.status === 200) renderAlerts(alerts.body);
      else problems.push("alerts " + alerts.status);
      if (stats.status === 200) renderStats(stats.body);
      else problems.push("stats " + stats.status);
    } catch (e) {
      problems.push("worker unreachable");
    } finally {
      busy = false;
    }
    status.className = problems.length ? "error" : "";
    status.textContent = (problems.length ? "incomplete: " + problems.join("; ") + " — " : "") +
      "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    status.dataset.loaded = problems.length ? "error" : "ok";
  }

  function schedule() {
    if (timer) clearInterval(timer);
    timer = $("auto").checked ? setInterval(refresh, REFRESH_MS) : null;
  }

  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
  $("period").addEventListener("change", () => {
    const custom = $("period").value === "custom";
    for (const l of document.querySelectorAll("label.custom")) l.hidden = !custom;
    if (!custom) refresh();
  });
  $("tenant").addEventListener("change", refresh);
  $("from").addEventListener("change", refresh);
  $("to").addEventListener("change", refresh);
  $("auto").addEventListener("change", schedule);
  $("lookup").addEventListener("submit", (ev) => { ev.preventDefault(); lookup(); });
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("auth-token").value);
    $("auth").hidden = true;
    refresh();
  });

  refresh();
  schedule();
})();
