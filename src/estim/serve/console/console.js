// estim console: shows what the service says and sends what the clinician asks.
// It decides nothing about current: every start and amplitude is judged by the
// service (the room's limits), and a refusal is shown in the service's words.
"use strict";

const API = "/api/v1";
const tiles = new Map(); // room id -> { el, room, at }
let presets = [];

async function call(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(API + path, init);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const err = new Error((data && data.detail) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  return data;
}

function $(root, sel) { return root.querySelector(sel); }

function clock(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function say(tile, text, ok) {
  const m = $(tile.el, ".message");
  m.textContent = text || "";
  m.classList.toggle("ok", !!ok);
}

// -- one tile per room ---------------------------------------------------------------

function tileFor(room) {
  let tile = tiles.get(room.id);
  if (tile) return tile;
  const el = document.getElementById("tile").content.firstElementChild.cloneNode(true);
  el.id = `tile-${room.id}`;
  el.dataset.room = room.id;
  el.setAttribute("aria-label", room.name);
  tile = { el, room, at: performance.now(), channelsKey: "" };
  tiles.set(room.id, tile);
  document.getElementById("rooms").appendChild(el);
  const form = $(el, "form.start");
  const select = form.elements.preset;
  fillPresets(select);
  select.addEventListener("change", () => showCustom(form));
  showCustom(form);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); start(tile, form); });
  $(el, "button.stop").addEventListener("click", () => stop(tile));
  $(el, "button.clear-fault").addEventListener("click", () => clearFault(tile));
  return tile;
}

function fillPresets(select) {
  select.textContent = "";
  for (const p of presets) {
    const o = document.createElement("option");
    o.value = p.name;
    o.textContent = `${p.name}: ${p.description}`;
    select.appendChild(o);
  }
  const custom = document.createElement("option");
  custom.value = "";
  custom.textContent = "custom (Hz and µs below)";
  select.appendChild(custom);
}

function showCustom(form) {
  const custom = form.elements.preset.value === "";
  for (const el of form.querySelectorAll(".custom")) el.hidden = !custom;
}

function limitsText(room) {
  const l = room.limits || {};
  const unit = l.unit || {};
  const clinic = l.clinic || {};
  const env = l.envelope || {};
  const parts = [];
  const maxes = [];
  if (unit.amplitude_max_ma != null) maxes.push(`unit ${unit.amplitude_max_ma} mA`);
  if (clinic.amplitude_max_ma != null) maxes.push(`clinic/room ${clinic.amplitude_max_ma} mA`);
  if (maxes.length) parts.push(`amplitude at most: ${maxes.join(", ")}`);
  parts.push(`at most ${env.rms_max_ma} mA r.m.s. (SAFETY.md)`);
  let dwell = `dwell ${env.dwell_min_s}-${env.dwell_max_s} s`;
  if (clinic.dwell_max != null || clinic.dwell_min != null) {
    dwell += ` (clinic/room: ${clinic.dwell_min ?? env.dwell_min_s}-${clinic.dwell_max ?? env.dwell_max_s} s)`;
  }
  parts.push(dwell);
  if (unit.frequency_min_hz != null) parts.push(`${unit.frequency_min_hz}-${unit.frequency_max_hz} Hz`);
  return "Limits here: " + parts.join("; ") + ". The service checks every value.";
}

function render(room) {
  const tile = tileFor(room);
  tile.room = room;
  tile.at = performance.now();
  const el = tile.el;
  const s = room.session;
  const live = !!(s && s.live);
  const sim = !!(room.unit && room.unit.simulated);
  $(el, ".room-name").textContent = room.name;
  $(el, ".badge.sim").hidden = !sim;
  el.classList.toggle("sim", sim);
  el.classList.toggle("live", live);
  el.classList.toggle("is-lost", room.link === "lost" || room.link === "missing");
  const fault = room.unit_state === "FAULT" || room.faults.length > 0;
  el.classList.toggle("is-fault", fault);
  const state = $(el, ".state");
  state.textContent = live ? s.state.replace("_", " ")
    : room.link !== "connected" ? room.link : (room.unit_state || "").toLowerCase() || "idle";
  state.classList.toggle("live", live);

  const lost = $(el, ".banner.lost");
  lost.hidden = room.link === "connected" || room.link === "connecting";
  lost.textContent = room.link === "lost"
    ? `LINK LOST: ${room.link_error || "the unit stopped answering"}. Its watchdog turned output off; retrying.`
    : `UNIT NOT CONNECTED: ${room.link_error || "not found"}. Retrying.`;
  const faultBanner = $(el, ".banner.fault");
  faultBanner.hidden = !fault;
  faultBanner.textContent = `FAULT ${room.faults.join(", ") || ""}: output is off. Check the electrodes, then clear the fault.`;
  $(el, "button.clear-fault").hidden = !fault || room.link !== "connected";

  const u = room.unit;
  $(el, ".unit").textContent = u
    ? `${u.model} ${u.serial_number} on ${room.port}${sim ? " (simulated: no current reaches anyone)" : ""}`
    : room.port;

  $(el, ".session").hidden = !live;
  if (live) renderChannels(tile, s);
  const ended = $(el, ".ended");
  ended.hidden = !s || live || !s.outcome;
  if (s && !live && s.outcome) {
    const delivered = s.delivered_s == null ? "unknown" : `${s.delivered_s} s`;
    $(el, ".ended-text").textContent =
      `Session ${s.id} ${s.outcome.replace("_", " ").toUpperCase()}: delivered ${delivered} of ${s.dwell_s} s. ${s.stop_reason || ""}`;
    ended.classList.toggle("bad", s.outcome !== "completed");
    $(el, "a.report").href = `${API}/sessions/${s.id}/export/html`;
  }
  $(el, ".start-panel").hidden = live || room.link !== "connected";
  $(el, ".limits").textContent = limitsText(room);
  tick(tile);
}

function renderChannels(tile, s) {
  const body = $(tile.el, ".channels tbody");
  const key = s.id + ":" + s.channels.map((c) => c.channel).join(",");
  if (tile.channelsKey !== key) {
    tile.channelsKey = key;
    body.textContent = "";
    for (const c of s.channels) {
      const tr = document.createElement("tr");
      tr.dataset.channel = c.channel;
      tr.innerHTML = '<th scope="row"></th><td class="now"></td><td class="set"></td><td class="imp"></td>';
      $(tr, "th").textContent = c.channel;
      const controls = document.createElement("tr");
      controls.className = "controls";
      controls.innerHTML = '<td colspan="4"><div class="change">'
        + '<button type="button" class="down">− step</button>'
        + '<button type="button" class="up">+ step</button>'
        + '<input type="number" step="any" class="to">'
        + '<button type="button" class="set-to">Set mA</button></div></td>';
      $(controls, "button.down").setAttribute("aria-label", `channel ${c.channel}: lower by one step`);
      $(controls, "button.up").setAttribute("aria-label", `channel ${c.channel}: raise by one step`);
      $(controls, "input.to").setAttribute("aria-label", `channel ${c.channel}: new amplitude in mA`);
      $(controls, "button.down").addEventListener("click", () => nudge(tile, c.channel, -1));
      $(controls, "button.up").addEventListener("click", () => nudge(tile, c.channel, +1));
      $(controls, "button.set-to").addEventListener("click", () => {
        const v = parseFloat($(controls, "input.to").value);
        if (Number.isFinite(v)) setAmplitude(tile, c.channel, v);
      });
      $(controls, "input.to").addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") $(controls, "button.set-to").click();
      });
      body.appendChild(tr);
      body.appendChild(controls);
    }
  }
  for (const c of s.channels) {
    const tr = body.querySelector(`tr[data-channel="${c.channel}"]`);
    if (!tr) continue;
    $(tr, ".now").textContent = c.amplitude_ma == null ? "–" : `${c.amplitude_ma.toFixed(1)}`;
    const set = c.set_ma;
    $(tr, ".set").textContent = `${set} mA` + (c.max_ma != null ? ` (max ${c.max_ma})` : "");
    $(tr, ".imp").textContent = c.impedance_ohm == null ? "–" : `${(c.impedance_ohm / 1000).toFixed(1)} kΩ`;
  }
}

function tick(tile) {
  const s = tile.room.session;
  if (!s || !s.live) return;
  const gone = (performance.now() - tile.at) / 1000;
  const moving = s.state !== "starting";
  const left = Math.max(0, s.remaining_s - (moving ? gone : 0));
  $(tile.el, ".left").textContent = clock(left);
  $(tile.el, ".of").textContent = `left of ${clock(s.dwell_s)}`;
  $(tile.el, ".progress").value = s.dwell_s ? Math.min(1, (s.dwell_s - left) / s.dwell_s) : 0;
}

// -- what the clinician asks ------------------------------------------------------------

async function start(tile, form) {
  const f = form.elements;
  const preset = presets.find((p) => p.name === f.preset.value);
  const channel = { channel: parseInt(f.channel.value, 10), amplitude_ma: parseFloat(f.amplitude.value) };
  if (preset) {
    Object.assign(channel, { frequency_hz: preset.frequency_hz, pulse_width_us: preset.pulse_width_us,
      waveform: preset.waveform, mode: preset.mode });
    if (preset.mode !== "continuous") {
      channel.alt_frequency_hz = preset.alt_frequency_hz;
      channel.switch_s = preset.switch_s;
    }
  } else {
    channel.frequency_hz = parseFloat(f.frequency.value);
    channel.pulse_width_us = parseInt(f.pulse_width.value, 10);
  }
  const plan = { dwell: f.dwell.value.trim(), channels: [channel] };
  if (f.ramp.value.trim()) plan.ramp = f.ramp.value.trim();
  if (f.patient_ref.value.trim()) plan.patient_ref = f.patient_ref.value.trim();
  if (f.site.value.trim()) plan.site = f.site.value.trim();
  say(tile, "starting…", true);
  try {
    const answer = await call("POST", `/rooms/${tile.room.id}/sessions`, plan);
    say(tile, `started session ${answer.session_id}`, true);
    $(tile.el, ".start-panel").open = false;
    render(answer.room);
  } catch (err) {
    say(tile, `Not started: ${err.message}`);
  }
}

function nudge(tile, channel, direction) {
  const s = tile.room.session;
  const c = s && s.channels.find((x) => x.channel === channel);
  if (!c) return;
  const step = c.step_ma || 0.1;
  const from = c.set_ma;
  const to = Math.round((from + direction * step) / step) * step;
  setAmplitude(tile, channel, Math.max(0, Number(to.toFixed(6))));
}

async function setAmplitude(tile, channel, ma) {
  try {
    const room = await call("POST", `/rooms/${tile.room.id}/amplitude`, { channel, amplitude_ma: ma });
    say(tile, `channel ${channel} set to ${ma} mA`, true);
    render(room);
  } catch (err) {
    say(tile, `Refused: ${err.message}`);
  }
}

async function stop(tile) {
  try {
    const done = await call("POST", `/rooms/${tile.room.id}/stop`);
    say(tile, done.result, true);
  } catch (err) {
    say(tile, `Stop: ${err.message}`);
  }
}

async function clearFault(tile) {
  try {
    const done = await call("POST", `/rooms/${tile.room.id}/clear-fault`);
    say(tile, `fault cleared: ${done.result}`, true);
  } catch (err) {
    say(tile, `Not cleared: ${err.message}`);
  }
}

async function stopAll() {
  const out = document.getElementById("stop-all-result");
  out.hidden = false;
  out.textContent = "stopping every room…";
  try {
    const done = await call("POST", "/stop-all");
    out.textContent = "STOP ALL: " + done.rooms.map((r) => `${r.room}: ${r.result}`).join(" · ");
  } catch (err) {
    out.textContent = `STOP ALL failed here: ${err.message}. Stop each unit at its own button.`;
  }
}

// -- the live stream ------------------------------------------------------------------------

function follow() {
  const status = document.getElementById("link-status");
  const source = new EventSource(`${API}/events`);
  source.addEventListener("open", () => {
    status.textContent = "live";
    status.classList.remove("down");
  });
  source.addEventListener("error", () => {
    status.textContent = "NOT CONNECTED to the service: what is shown may be old; reconnecting…";
    status.classList.add("down");
  });
  source.addEventListener("rooms", (ev) => {
    for (const room of JSON.parse(ev.data)) render(room);
  });
  source.addEventListener("session", (ev) => {
    const e = JSON.parse(ev.data);
    const tile = e.room && tiles.get(e.room);
    if (!tile || !e.text) return;
    const li = document.createElement("li");
    li.textContent = `${e.utc.slice(11, 19)} ${e.text}`;
    const log = $(tile.el, ".log");
    log.insertBefore(li, log.firstChild);
    while (log.children.length > 8) log.removeChild(log.lastChild);
  });
}

async function main() {
  document.getElementById("stop-all").addEventListener("click", stopAll);
  let info;
  try {
    info = await call("GET", "");
  } catch (err) {
    if (err.status === 401) return login();
    document.getElementById("link-status").textContent = `cannot reach the service: ${err.message}`;
    return;
  }
  document.getElementById("who").textContent = info.clinician ? `logged in: ${info.clinician}` : "";
  presets = await call("GET", "/presets");
  follow();
  setInterval(() => { for (const tile of tiles.values()) tick(tile); }, 200);
}

function login() {
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("token").focus();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await call("POST", "/login", { token: document.getElementById("token").value });
      location.reload();
    } catch (err) {
      document.getElementById("login-error").textContent = err.message;
    }
  });
}

main();
