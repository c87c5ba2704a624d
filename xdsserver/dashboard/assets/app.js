// Trellis dashboard: polls /ui/api/state and redraws; no reloads.
"use strict";

const POLL_MS = 2000;
const TYPES = [
  ["LDS", "type.googleapis.com/envoy.config.listener.v3.Listener"],
  ["RDS", "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"],
  ["CDS", "type.googleapis.com/envoy.config.cluster.v3.Cluster"],
  ["EDS", "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"],
];

let pageToken = "";
let nextToken = "";
// selected is the stream id of the client whose detail is shown, or "".
let selected = "";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function word(state) {
  switch (state) {
    case "SYNC_STATE_SYNCED": return "SYNCED";
    case "SYNC_STATE_STALE": return "STALE";
    case "SYNC_STATE_NACKED": return "NACKED";
  }
  return "-";
}

function renderServices(state) {
  const body = document.querySelector("#services tbody");
  const rows = state.services.map((s) => {
    const list = el("ul", { class: "instances" }, ...s.instances.map((i) =>
      el("li", { "data-instance": i.id }, `${i.id} ${i.address}:${i.port} `, el("span", { class: i.health }, i.health))));
    const policy = s.policy ? `revision ${s.policy.revision}, ${s.policy.routes} routes` : "-";
    return el("tr", { "data-service": s.name }, el("td", {}, s.name), el("td", {}, list),
      el("td", {}, (s.subsets || []).join(", ") || "-"), el("td", {}, policy));
  });
  body.replaceChildren(...rows);
  document.getElementById("services-count").textContent = `(${state.services.length + (state.more_services || 0)})`;
  const more = document.getElementById("services-more");
  more.hidden = !state.more_services;
  more.textContent = state.more_services ? `and ${state.more_services} more services` : "";
}

const SVG = "http://www.w3.org/2000/svg";
// An edge whose error ratio is above this is drawn red.
const ERROR_RATIO_ALERT = 0.05;

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) e.append(c);
  return e;
}

function rate(r) { return r >= 10 ? r.toFixed(0) : r.toFixed(1); }
function percent(r) { return (100 * r).toFixed(r > 0 && r < 0.01 ? 2 : 1) + "%"; }

// renderGraph draws callers on the left, callees on the right, and an
// arrow per edge labelled with its call rate and error ratio; the table
// below lists the same edges.
function renderGraph(graph) {
  const section = document.getElementById("graph-section");
  section.hidden = !graph;
  if (!graph) return;
  const edges = graph.edges || [];
  const sources = [...new Set(edges.map((e) => e.source))].sort();
  const dests = [...new Set(edges.map((e) => e.destination))].sort();
  const rowH = 34, boxW = 180, boxH = 24, width = 760;
  const height = Math.max(sources.length, dests.length, 1) * rowH + 10;
  const left = 10, right = width - boxW - 10;
  const y = (list, name) => 10 + list.indexOf(name) * rowH;
  const box = (x, yy, name, side) => svg("g", { class: "node", "data-service": name, "data-side": side },
    svg("rect", { x, y: yy, width: boxW, height: boxH, rx: 4 }),
    svg("text", { x: x + 8, y: yy + 16 }, name));
  const pic = document.getElementById("graph");
  pic.setAttribute("viewBox", `0 0 ${width} ${height}`);
  pic.setAttribute("height", String(height));
  const lines = edges.map((e) => {
    const y1 = y(sources, e.source) + boxH / 2, y2 = y(dests, e.destination) + boxH / 2;
    const x1 = left + boxW, x2 = right;
    const bad = e.error_ratio > ERROR_RATIO_ALERT;
    return svg("g", { class: "edge" + (bad ? " errors" : ""), "data-source": e.source, "data-destination": e.destination },
      svg("line", { x1, y1, x2, y2, "stroke-width": Math.min(1 + Math.log10(1 + e.rate_per_second) * 2, 8) }),
      svg("text", { x: (x1 + x2) / 2 - 40, y: (y1 + y2) / 2 - 4 }, `${rate(e.rate_per_second)}/s, ${percent(e.error_ratio)} errors`));
  });
  pic.replaceChildren(...lines,
    ...sources.map((n) => box(left, y(sources, n), n, "source")),
    ...dests.map((n) => box(right, y(dests, n), n, "destination")));

  const body = document.querySelector("#edges tbody");
  body.replaceChildren(...edges.map((e) => el("tr", {
    "data-edge": `${e.source}->${e.destination}`, class: e.error_ratio > ERROR_RATIO_ALERT ? "errors" : "",
  }, el("td", {}, e.source), el("td", {}, e.destination), el("td", { class: "rate" }, rate(e.rate_per_second)),
  el("td", { class: "error-ratio" }, percent(e.error_ratio)), el("td", {}, String(e.in_progress)),
  el("td", { class: "succeeded" }, String(e.succeeded)), el("td", { class: "errored" }, String(e.errored)))));
  const total = edges.length + (graph.more_edges || 0);
  document.getElementById("graph-summary").textContent = `(${total} ${total === 1 ? "edge" : "edges"})`;
  const more = document.getElementById("edges-more");
  more.hidden = !graph.more_edges;
  more.textContent = graph.more_edges ? `and ${graph.more_edges} quieter edges` : "";
}

function renderClients(clients) {
  const body = document.querySelector("#clients tbody");
  const rows = (clients.clients || []).map((c) => {
    const byType = new Map((c.types || []).map((t) => [t.typeUrl, t]));
    const cells = TYPES.map(([, url]) => {
      const t = byType.get(url);
      const w = t ? word(t.state) : "-";
      return el("td", { class: "state-" + w }, w);
    });
    const overall = word(c.state);
    const why = (c.types || []).filter((t) => t.reason).map((t) => t.reason).join("; ");
    const pick = el("button", { type: "button", class: "client-link", "data-client": String(c.streamId) }, c.nodeId || "-");
    pick.addEventListener("click", () => { selected = String(c.streamId); pollClient(); });
    return el("tr", { class: overall.toLowerCase(), "data-node": c.nodeId, "data-state": overall },
      el("td", {}, pick), el("td", {}, String(c.streamId)), el("td", {}, c.userAgent || "-"),
      ...cells, el("td", { class: "state-" + overall }, overall), el("td", { class: "why" }, why));
  });
  body.replaceChildren(...rows);
  const s = clients.summary || {};
  document.getElementById("clients-summary").textContent =
    `(${s.clients || 0}: ${s.synced || 0} synced, ${s.stale || 0} stale, ${s.nacked || 0} nacked)`;
  nextToken = clients.nextPageToken || "";
  document.getElementById("next-page").disabled = !nextToken;
  document.getElementById("replica").textContent = clients.replica ? `replica ${clients.replica}` : "";
}

function shortType(url) {
  const t = TYPES.find(([, u]) => u === url);
  return t ? t[0] : url;
}

function when(ts) { return ts ? new Date(ts).toLocaleString() : "-"; }

// renderClient shows one client's detail as GetClient returns it: per
// type its state, versions and counts, every NACK kept with its text and
// time, and the resources that differ from what is served now.
function renderClient(detail, error) {
  const section = document.getElementById("client-detail");
  section.hidden = !selected;
  if (!selected) return;
  const body = document.getElementById("client-body");
  if (error) {
    body.replaceChildren(el("p", { class: "gone" }, error));
    return;
  }
  const parts = [];
  for (const c of detail.clients || []) {
    const facts = [
      ["Node", c.nodeId || "-"], ["Stream", String(c.streamId)], ["User agent", c.userAgent || "-"],
      ["Profile", c.profile || "-"], ["SPIFFE ID", c.spiffeId || "-"], ["Peer", c.peer || "-"],
      ["Locality", c.locality ? [c.locality.region, c.locality.zone, c.locality.subZone].filter(Boolean).join("/") : "-"],
      ["Connected", when(c.connectedAt)], ["Replica", c.replica || "-"], ["State", word(c.state)],
    ];
    parts.push(el("dl", { class: "facts" }, ...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
    const types = c.types || [];
    parts.push(el("table", { class: "types" },
      el("thead", {}, el("tr", {}, ...["Type", "State", "Resources", "Sent", "ACKed", "ACKs", "NACKs", "Why"].map((h) => el("th", {}, h)))),
      el("tbody", {}, ...types.map((t) => el("tr", { class: word(t.state).toLowerCase(), "data-type": shortType(t.typeUrl) },
        el("td", {}, shortType(t.typeUrl)), el("td", { class: "state-" + word(t.state) }, word(t.state)),
        el("td", {}, String(t.resourceCount)), el("td", {}, t.sentVersion || "-"), el("td", {}, t.ackedVersion || "-"),
        el("td", {}, String(t.acks)), el("td", {}, String(t.nacks)), el("td", { class: "why" }, t.reason || ""))))));
    const nacks = types.flatMap((t) => (t.nackHistory || []).map((n) => ({ type: shortType(t.typeUrl), ...n })));
    if (nacks.length) {
      parts.push(el("h3", {}, "NACKs"));
      parts.push(el("table", { class: "nacks" },
        el("thead", {}, el("tr", {}, el("th", {}, "At"), el("th", {}, "Type"), el("th", {}, "Version"), el("th", {}, "Error"))),
        el("tbody", {}, ...nacks.map((n) => el("tr", { "data-nack": n.type },
          el("td", { class: "at" }, when(n.at)), el("td", {}, n.type), el("td", {}, n.version || "-"), el("td", { class: "error" }, n.error || ""))))));
    }
    const diffs = types.flatMap((t) => (t.outOfDate || []).map((d) => ({ type: shortType(t.typeUrl), ...d })));
    if (diffs.length) {
      parts.push(el("h3", {}, "Differs from what is served now"));
      parts.push(el("ul", { class: "diffs" }, ...diffs.map((d) => el("li", { "data-diff": d.name },
        `${d.type} ${d.name}: sent ${d.sentContentVersion || "(not served then)"}, now ${d.currentContentVersion || "(not served)"}`))));
    }
  }
  body.replaceChildren(...parts);
}

async function pollClient() {
  if (!selected) { renderClient(null); return; }
  try {
    const resp = await fetch("api/client?client=" + encodeURIComponent(selected), { cache: "no-store" });
    if (resp.status === 404) { renderClient(null, `stream ${selected} is no longer connected`); return; }
    if (!resp.ok) throw new Error(await resp.text());
    renderClient(await resp.json());
  } catch (err) {
    renderClient(null, "client read failed: " + err.message);
  }
}

function renderConsul(consul) {
  const badge = document.getElementById("consul");
  const problems = document.getElementById("problems");
  if (!consul) { badge.textContent = "Consul: not reported"; return; }
  badge.textContent = consul.reachable ? (consul.synced ? "Consul: reachable" : "Consul: syncing") : "Consul: unreachable";
  badge.className = "badge " + (consul.reachable ? "ok" : "down");
  const lines = [...(consul.problems || [])];
  if (consul.last_error) lines.unshift("Consul: " + consul.last_error);
  problems.hidden = lines.length === 0;
  problems.replaceChildren(...lines.map((l) => el("div", {}, l)));
}

async function poll() {
  const q = new URLSearchParams();
  if (pageToken) q.set("page_token", pageToken);
  const st = document.getElementById("state-filter").value;
  if (st) q.set("state", st);
  const svc = document.getElementById("service-filter").value.trim();
  if (svc) q.set("service", svc);
  try {
    const resp = await fetch("api/state?" + q.toString(), { cache: "no-store" });
    if (!resp.ok) throw new Error(await resp.text());
    const state = await resp.json();
    renderServices(state);
    renderGraph(state.graph);
    renderClients(state.clients);
    renderConsul(state.consul);
    if (selected) pollClient();
    document.getElementById("updated").textContent = "updated " + new Date(state.generated_at).toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (err) {
    document.getElementById("updated").textContent = "update failed: " + err.message;
  }
}

document.getElementById("close-client").addEventListener("click", () => { selected = ""; renderClient(null); });
document.getElementById("next-page").addEventListener("click", () => { if (nextToken) { pageToken = nextToken; poll(); } });
document.getElementById("first-page").addEventListener("click", () => { pageToken = ""; poll(); });
document.getElementById("state-filter").addEventListener("change", () => { pageToken = ""; poll(); });
document.getElementById("service-filter").addEventListener("change", () => { pageToken = ""; poll(); });
poll();
setInterval(poll, POLL_MS);
