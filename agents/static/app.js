"use strict";
// funnelwatch dashboard: plain JS, talks only to the worker that served it
// (/funnel, /funnel?by=campaign, /latency, /alerts, /stats, /messages). Dynamic text is set
// with textContent only; charts are inline SVG built with createElementNS.
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

  function renderTenants(rows) {
    const tenantSel = $("tenant");
    const chosen = tenantSel.value;
    const tenants = Array.from(new Set(rows.map((r) => r.tenant))).sort();
    if (chosen && !tenants.includes(chosen)) tenants.push(chosen);
    clear(tenantSel);
    tenantSel.appendChild(el("option", { value: "", text: "all tenants" }));
    for (const t of tenants) tenantSel.appendChild(el("option", { value: t, text: t }));
    tenantSel.value = chosen;
  }

  function channelSort(a, b) {
    const ia = CHANNEL_ORDER.indexOf(a), ib = CHANNEL_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  }

  function renderFunnel(rows) {
    const chosen = $("tenant").value;
    const by = aggregate(rows, chosen);
    const box = $("funnel");
    clear(box);
    const channels = Object.keys(by).sort(channelSort);
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

  // ------------------------------------------------------------------ campaigns (SPEC §11)
  const SVG = "http://www.w3.org/2000/svg";
  const CHANNEL_COLORS = { email: "#3b6fd8", sms: "#16a34a", push: "#c026d3", telegram: "#0891b2", unknown: "#667085" };
  const RATE_FIELDS = ["delivered", "opened", "clicked", "failed"];
  const state = { campaign: null, sort: { key: "entered", dir: -1 }, campaignRows: null };

  function campaignTable(rows, tenant) {
    const by = new Map();
    for (const r of rows) {
      if (tenant && r.tenant !== tenant) continue;
      const key = JSON.stringify([r.tenant, r.campaign, r.channel]);
      let acc = by.get(key);
      if (!acc) {
        acc = { tenant: r.tenant, campaign: r.campaign, channel: r.channel, name: r.campaign_name };
        for (const f of FIELDS) acc[f] = 0;
        by.set(key, acc);
      }
      for (const f of FIELDS) acc[f] += r[f] || 0;
      if (r.campaign_name) acc.name = r.campaign_name;
    }
    return Array.from(by.values());
  }

  function sortValue(r, key) {
    if (RATE_FIELDS.includes(key)) return pct(r[key], r.entered);
    if (key === "entered") return r.entered;
    if (key === "name") return (r.name || r.campaign || "").toLowerCase();
    if (key === "campaign") return r.campaign || "";
    return r[key] || "";
  }

  function renderCampaigns(rows) {
    const list = campaignTable(rows, $("tenant").value);
    const { key, dir } = state.sort;
    list.sort((a, b) => {
      const va = sortValue(a, key), vb = sortValue(b, key);
      const c = typeof va === "number" ? va - vb : String(va).localeCompare(String(vb));
      return c * dir || b.entered - a.entered || String(a.campaign).localeCompare(String(b.campaign)) ||
        a.channel.localeCompare(b.channel) || a.tenant.localeCompare(b.tenant);
    });
    for (const th of document.querySelectorAll("#campaigns th[data-sort]")) {
      th.className = (th.classList.contains("num") ? "num " : "") +
        (th.dataset.sort === key ? (dir > 0 ? "sorted-asc" : "sorted-desc") : "");
    }
    $("campaigns-total").textContent = String(new Set(list.map((r) => r.tenant + "\u0000" + r.campaign)).size);
    const tbody = $("campaigns").querySelector("tbody");
    clear(tbody);
    if (!list.length) {
      tbody.appendChild(el("tr", {}, [el("td", { colspan: "9", class: "empty", text: "No messages in this period." })]));
      return;
    }
    const sel = state.campaign;
    for (const r of list) {
      const selected = sel && sel.tenant === r.tenant && sel.campaign === r.campaign;
      const tr = el("tr", {
        class: "campaign" + (selected ? " selected" : ""), "data-tenant": r.tenant, "data-campaign": r.campaign || "",
        "data-channel": r.channel, "data-entered": String(r.entered), "data-delivered": String(r.delivered),
        "data-opened": String(r.opened), "data-clicked": String(r.clicked), "data-failed": String(r.failed),
      }, [
        el("td", { class: "name", text: r.name || (r.campaign ? "(no name)" : "(no campaign)") }),
        el("td", { class: "id", text: r.campaign || "–", title: r.campaign || "" }),
        el("td", { text: r.tenant }), el("td", { text: r.channel }),
        el("td", { class: "num", text: String(r.entered) }),
        ...RATE_FIELDS.map((f) => el("td", { class: "num rate-" + f, text: fmtPct(r[f], r.entered), title: r[f] + " of " + r.entered })),
      ]);
      tr.addEventListener("click", () => chooseCampaign(selected ? null : r));
      tbody.appendChild(tr);
    }
  }

  function chooseCampaign(r) {
    state.campaign = r ? { tenant: r.tenant, campaign: r.campaign, label: r.name || r.campaign || "(no campaign)" } : null;
    $("campaign-filter").hidden = !r;
    $("campaign-filter-name").textContent = r ? state.campaign.label + " · tenant " + r.tenant : "";
    if (r) $("tenant").value = r.tenant;
    refresh();
  }

  function svg(tag, attrs, children) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children || []) e.appendChild(c);
    return e;
  }

  function shortWindow(iso) { return iso.slice(5, 16).replace("T", " "); }

  function renderTrend(rows) {
    const tenant = $("tenant").value;
    const field = $("trend-rate").value;
    const box = $("trend");
    clear(box);
    const series = {};
    const windows = new Set();
    for (const r of rows) {
      if (tenant && r.tenant !== tenant) continue;
      windows.add(r.window_start);
      const ch = series[r.channel] || (series[r.channel] = {});
      const acc = ch[r.window_start] || (ch[r.window_start] = { entered: 0, n: 0 });
      acc.entered += r.entered;
      acc.n += r[field];
    }
    const xs = Array.from(windows).sort();
    if (!xs.length) {
      box.appendChild(el("p", { class: "empty", text: "No messages in this period." }));
      return;
    }
    const W = 900, H = 240, L = 44, R = 14, T = 10, B = 34;
    const x = (i) => xs.length === 1 ? L + (W - L - R) / 2 : L + i * (W - L - R) / (xs.length - 1);
    const y = (rate) => T + (H - T - B) * (1 - rate / 100);
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": field + " rate per window" });
    for (const g of [0, 25, 50, 75, 100]) {
      chart.appendChild(svg("line", { class: g ? "grid" : "axis", x1: L, x2: W - R, y1: y(g), y2: y(g) }));
      chart.appendChild(svg("text", { x: L - 6, y: y(g) + 4, "text-anchor": "end", text: g + "%" }));
    }
    const every = Math.max(1, Math.ceil(xs.length / 8));
    xs.forEach((w, i) => {
      if (i % every === 0 || i === xs.length - 1) {
        chart.appendChild(svg("text", { x: x(i), y: H - 10, "text-anchor": "middle", text: shortWindow(w) }));
      }
    });
    const legend = el("div", { class: "legend" });
    for (const ch of Object.keys(series).sort(channelSort)) {
      const color = CHANNEL_COLORS[ch] || "#444";
      const pts = xs.map((w, i) => [w, i, series[ch][w]]).filter((p) => p[2] && p[2].entered > 0);
      const line = svg("polyline", { fill: "none", stroke: color, "stroke-width": "2", "data-channel": ch,
        points: pts.map(([, i, a]) => x(i) + "," + y(pct(a.n, a.entered))).join(" ") });
      chart.appendChild(line);
      for (const [w, i, a] of pts) {
        const rate = pct(a.n, a.entered);
        chart.appendChild(svg("circle", { class: "point", cx: x(i), cy: y(rate), r: "3.5", fill: color,
          "data-channel": ch, "data-window": w, "data-rate": rate.toFixed(4), "data-entered": String(a.entered) },
          [svg("title", { text: ch + " " + w + ": " + field + " " + a.n + " of " + a.entered + " (" + rate.toFixed(1) + "%)" })]));
      }
      const sw = el("span", { class: "swatch" });
      sw.style.background = color;
      legend.appendChild(el("span", {}, [sw, document.createTextNode(ch)]));
    }
    box.appendChild(chart);
    box.appendChild(legend);
  }

  // ------------------------------------------------------------------ latency
  const PAIR_ORDER = ["queued→sent", "sent→delivered", "delivered→opened", "delivered→clicked"];
  function fmtDuration(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 120) return s.toFixed(1) + " s";
    if (s < 7200) return (s / 60).toFixed(1) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function renderLatency(rows) {
    const tbody = $("latency").querySelector("tbody");
    clear(tbody);
    if (!rows.length) {
      tbody.appendChild(el("tr", {}, [el("td", { colspan: "6", class: "empty", text: "No stage reached yet." })]));
      return;
    }
    const pair = (r) => r.from_stage + "→" + r.to_stage;
    rows = rows.slice().sort((a, b) => channelSort(a.channel, b.channel) ||
      PAIR_ORDER.indexOf(pair(a)) - PAIR_ORDER.indexOf(pair(b)));
    const max = Math.max(...rows.map((r) => r.p95_s || 0), 1e-9);
    for (const r of rows) {
      const p95 = el("span", { class: "p95" }), p50 = el("span", { class: "p50" });
      p95.style.width = (100 * (r.p95_s || 0) / max).toFixed(2) + "%";
      p50.style.width = (100 * (r.p50_s || 0) / max).toFixed(2) + "%";
      tbody.appendChild(el("tr", { "data-channel": r.channel, "data-pair": pair(r),
        "data-p50": String(r.p50_s), "data-p95": String(r.p95_s) }, [
        el("td", { text: r.channel }), el("td", { text: pair(r) }),
        el("td", { class: "num", text: fmtDuration(r.p50_s) }), el("td", { class: "num", text: fmtDuration(r.p95_s) }),
        el("td", {}, [el("div", { class: "lbar" }, [p95, p50])]), el("td", { class: "num", text: String(r.count) }),
      ]));
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
      const cq = new URLSearchParams(q);
      cq.set("by", "campaign");
      if (tenant) cq.set("tenant", tenant);
      const [funnel, campaigns, alerts, stats, latency] = await Promise.all([
        api("/funnel?" + q.toString()),
        api("/funnel?" + cq.toString()),
        api("/alerts?" + new URLSearchParams(tenant ? { tenant: tenant, limit: "100" } : { limit: "100" }).toString()),
        api("/stats"),
        api("/latency"),
      ]);
      const sel = state.campaign;
      if (funnel.status === 200) {
        renderTenants(funnel.body.windows);
        if (!sel) {
          renderFunnel(funnel.body.windows);
          renderTrend(funnel.body.windows);
        }
      } else problems.push("funnel " + funnel.status + ((funnel.body && funnel.body.error) ? ": " + funnel.body.error : ""));
      if (campaigns.status === 200) {
        state.campaignRows = campaigns.body.campaigns;
        renderCampaigns(campaigns.body.campaigns);
        if (sel) {  // the page shows one campaign: its rows are funnel rows with a campaign
          const mine = campaigns.body.campaigns.filter((r) => r.tenant === sel.tenant && r.campaign === sel.campaign);
          renderFunnel(mine);
          renderTrend(mine);
        }
      } else problems.push("campaigns " + campaigns.status);
      if (latency.status === 200) renderLatency(latency.body.latency);
      else problems.push("latency " + latency.status);
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
  $("tenant").addEventListener("change", () => {
    if (state.campaign && state.campaign.tenant !== $("tenant").value) {
      chooseCampaign(null);
      return;
    }
    refresh();
  });
  $("trend-rate").addEventListener("change", refresh);
  $("campaign-clear").addEventListener("click", () => chooseCampaign(null));
  for (const th of document.querySelectorAll("#campaigns th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      const numeric = key === "entered" || RATE_FIELDS.includes(key);
      state.sort = state.sort.key === key ? { key: key, dir: -state.sort.dir } : { key: key, dir: numeric ? -1 : 1 };
      renderCampaigns(state.campaignRows || []);
    });
  }
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
