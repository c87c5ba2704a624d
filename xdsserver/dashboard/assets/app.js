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
    return el("tr", { class: overall.toLowerCase(), "data-node": c.nodeId, "data-state": overall },
      el("td", {}, c.nodeId || "-"), el("td", {}, String(c.streamId)), el("td", {}, c.userAgent || "-"),
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
    renderClients(state.clients);
    renderConsul(state.consul);
    document.getElementById("updated").textContent = "updated " + new Date(state.generated_at).toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (err) {
    document.getElementById("updated").textContent = "update failed: " + err.message;
  }
}

document.getElementById("next-page").addEventListener("click", () => { if (nextToken) { pageToken = nextToken; poll(); } });
document.getElementById("first-page").addEventListener("click", () => { pageToken = ""; poll(); });
document.getElementById("state-filter").addEventListener("change", () => { pageToken = ""; poll(); });
document.getElementById("service-filter").addEventListener("change", () => { pageToken = ""; poll(); });
poll();
setInterval(poll, POLL_MS);
