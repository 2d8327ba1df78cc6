"use strict";
// The hosts that serve the server's worker groups, from GET /server_status (its hosts and
// groups): each host's name, state (local: the server's own; serving, draining, left, lost,
// refused: one that joined), devices, its groups with what each does (ready, busy,
// starting; and which model it serves, where there are several), the job runs started on it, and when a joined host last asked for its orders.
// A front that runs no group itself (--num-devices 0) has no local row: only the hosts that
// joined. Loaded before app.js, whose helpers (api, json, $, page) these functions call once the
// page has started; app.js refreshes the list with the list of jobs. Server data goes in as
// text only (textContent, dataset).

const TAKING_JOBS = new Set(["local", "serving"]);

// GET /server_status answers 503 while no group is ready (starting, restarting, or a front
// no host has joined yet), with the same body: the hosts are shown all the same.
async function refreshHosts() {
  const response = await api("/server_status", { headers: { Accept: "application/json" } });
  if (!response.ok && response.status !== 503) throw new Error(`server status: ${response.status}`);
  const status = await json(response);
  const hosts = status.hosts || [];
  const groups = new Map((status.groups || []).map((group) => [group.group, group]));
  $("hosts-list").replaceChildren(...hosts.map((host) => hostRow(host, groups)));
  $("hosts-note").textContent = hosts.some((host) => TAKING_JOBS.has(host.state))
    ? ""
    : "No host serves yet: jobs wait in the queue until one joins.";
}

function hostRow(host, groups) {
  const row = document.createElement("tr");
  row.dataset.host = host.name;
  row.insertCell().textContent = host.name;
  const state = document.createElement("span");
  state.className = "state host-state";
  state.dataset.state = host.state;
  state.textContent = host.state;
  const stateCell = row.insertCell();
  stateCell.append(state);
  if (host.reason) {
    const reason = document.createElement("small");
    reason.className = "note host-reason";
    reason.textContent = host.reason;
    stateCell.append(" ", reason);
  }
  const devices = row.insertCell();
  devices.className = "host-devices";
  devices.textContent = String(host.devices);
  devices.title = `groups of ${host.group_size} device(s)`;
  const list = row.insertCell();
  list.className = "host-groups";
  list.append(...(host.groups || []).map((index) => groupChip(index, groups.get(index))));
  if (!list.childElementCount) list.textContent = "none";
  const runs = row.insertCell();
  runs.className = "host-runs";
  runs.textContent = String(host.runs ?? 0);
  const seen = row.insertCell();
  seen.className = "host-seen";
  seen.textContent = host.last_seen_s == null ? "" : `${Math.round(host.last_seen_s)} s ago`;
  return row;
}

// One group of a host: "group 2: busy", "group 2 (noop): busy" on a server of several
// models (its ranks up out of its ranks in the tooltip).
function groupChip(index, group) {
  const what = !group ? "unknown" : group.busy ? "busy" : group.ready ? "ready" : "starting";
  const chip = document.createElement("span");
  chip.className = "group";
  chip.dataset.group = String(index);
  chip.dataset.state = what;
  const model = group && group.model && page.models.length > 1 ? ` (${group.model})` : "";
  chip.textContent = `group ${index}${model}: ${what}`;
  if (group) {
    const up = (group.ranks || []).filter((rank) => rank.state !== "starting").length;
    chip.title = `${up} of ${(group.ranks || []).length} rank(s) up, ${group.restarts} restart(s)`;
  }
  return chip;
}
