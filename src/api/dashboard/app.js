// The lanswarm dashboard. Plain JavaScript, no dependencies: the node
// serves this file from its binary, and the page works with no internet.
// Every action calls the documented HTTP API under /api/v1; live state
// arrives as server-sent events from /api/v1/events (read with fetch, so
// the bearer token can be sent as a header).
'use strict';

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem('lanswarm.token') || '',
  local: null,
  nodes: [],
  allocations: { held: [], granted: [] },
  groups: [],
  // The reservations table is drawn again only when what it shows
  // changed, so buttons and the cores typed for a draw stay put.
  resvKey: '',
  drawCores: {},
  samples: [],
  latency: [],
  everyMs: 2000,
  rangeMs: 900000,
};

class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body || {};
  }
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (state.token) opts.headers.Authorization = 'Bearer ' + state.token;
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch('/api/v1' + path, opts);
  const text = await r.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = text; }
  }
  if (r.status === 401) needToken();
  if (!r.ok) {
    const e = data && data.error ? data.error : { code: String(r.status), message: String(text || r.statusText) };
    throw new ApiError(r.status, e.code, e.message, e);
  }
  return data;
}

// ---------- small helpers ----------

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const badge = (s) => el('span', { class: 'badge badge-' + s }, s);
// A node's name when the view knows it, else its short id.
const nameOf = (id) => (state.nodes.find((n) => n.id === id) || {}).name || short(id);
const short = (id) => (id && id.length > 16 ? id.slice(0, 8) + '…' + id.slice(-4) : id || '');
function fmtMB(mb) {
  if (mb >= 1024) return (mb / 1024).toFixed(mb % 1024 === 0 ? 0 : 1) + ' GiB';
  return mb + ' MiB';
}
function fmtAgo(iso) {
  if (!iso) return '';
  const s = Math.round((Date.parse(iso) - Date.now()) / 1000);
  if (Math.abs(s) < 90) return (s >= 0 ? 'in ' : '') + Math.abs(s) + ' s' + (s < 0 ? ' ago' : '');
  const m = Math.round(s / 60);
  return (m >= 0 ? 'in ' : '') + Math.abs(m) + ' min' + (m < 0 ? ' ago' : '');
}
// replaceChildren turns null into the text "null": drop empty parts.
function setChildren(e, ...children) {
  e.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
}
function fillBody(table, rows) {
  const tb = table.tBodies[0];
  tb.replaceChildren(...rows);
}
function say(id, text, isError) {
  const m = $(id);
  m.textContent = text;
  m.classList.toggle('error', !!isError);
}
function errText(e) {
  return e instanceof ApiError ? `${e.code}: ${e.message}` : String(e.message || e);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
function resources(r) {
  const parts = [];
  if (r.cpu_cores) parts.push(r.cpu_cores + (r.cpu_cores === 1 ? ' core' : ' cores'));
  if (r.memory_mb) parts.push(fmtMB(r.memory_mb));
  if (r.disk_mb) parts.push(fmtMB(r.disk_mb) + ' disk');
  if (r.gpu_count) parts.push(r.gpu_count + ' GPU' + (r.gpu_count > 1 ? 's' : '') + (r.gpu_memory_mb ? ' (' + fmtMB(r.gpu_memory_mb) + ')' : ''));
  for (const [k, v] of Object.entries(r.custom || {})) parts.push(v + ' ' + k);
  return parts.join(', ') || 'nothing';
}
function wholeFreeGpus(res) {
  return res.lendable.gpus.filter((g) => res.free.gpus.some((f) => f.index === g.index && f.memory_mb === g.memory_mb)).length;
}
function needToken() {
  $('token-box').hidden = false;
  banner('This API needs a token: enter it at the top right.');
}
function banner(text) {
  const b = $('banner');
  b.textContent = text || '';
  b.hidden = !text;
}

// ---------- rendering ----------

function renderLocal(n) {
  state.local = n;
  $('node-name').textContent = n.name;
  $('node-id').textContent = short(n.id);
  $('node-id').title = n.id;
  $('node-version').textContent = 'v' + n.version;
  if (n.duplicate_identity) banner(n.duplicate_identity);
}

function renderNodes(nodes) {
  state.nodes = nodes;
  const usable = nodes.filter((n) => n.status === 'online' || n.status === 'degraded').length;
  $('node-uptime').textContent = `${nodes.length} node${nodes.length === 1 ? '' : 's'} known, ${usable} usable`;
  fillBody($('nodes-table'), nodes.map((n) => {
    const r = n.resources;
    return el('tr', { 'data-node': n.id },
      el('td', {}, n.name, n.is_local ? el('span', { class: 'muted' }, ' (this node)') : null),
      el('td', { title: n.id }, el('code', {}, short(n.id))),
      el('td', {}, badge(n.status)),
      el('td', {}, `${r.free.cpu_cores} / ${r.lendable.cpu_cores}`),
      el('td', {}, `${fmtMB(r.free.memory_mb)} / ${fmtMB(r.lendable.memory_mb)}`),
      el('td', {}, `${wholeFreeGpus(r)} / ${r.lendable.gpus.length}`),
      el('td', { class: 'detail' }, (n.models || []).join(', ')),
      el('td', {}, n.active_allocations),
      el('td', {}, n.rtt_ms == null ? '' : n.rtt_ms.toFixed(1) + ' ms'),
      el('td', {}, n.allow_remote_access ? 'yes' : 'no'));
  }));
  // The request and reservation forms' node choices and the model
  // suggestions follow the view.
  for (const sel of [$('req-node'), $('resv-node')]) {
    const keep = sel.value;
    sel.replaceChildren(el('option', { value: '' }, 'any'),
      ...nodes.map((n) => el('option', { value: n.id }, n.name + ' (' + short(n.id) + ')')));
    sel.value = nodes.some((n) => n.id === keep) ? keep : '';
  }
  const models = [...new Set(nodes.flatMap((n) => n.models || []))].sort();
  $('models-list').replaceChildren(...models.map((m) => el('option', { value: m })));
}

function renderAllocations(a) {
  state.allocations = a;
  const releasable = (s) => s === 'active' || s === 'queued';
  fillBody($('alloc-held'), a.held.map((x) => el('tr', { 'data-allocation': x.allocation_id },
    el('td', { title: x.allocation_id }, el('code', {}, short(x.allocation_id))),
    el('td', { title: x.node_id }, x.node_name || short(x.node_id)),
    el('td', {}, resources(x.allocated_resources)),
    el('td', {}, x.priority),
    el('td', { title: x.ended_reason || '' }, badge(x.status), x.queue_position ? ' #' + x.queue_position : ''),
    el('td', {}, releasable(x.status) ? fmtAgo(x.expires_at) : ''),
    el('td', {}, releasable(x.status)
      ? el('button', { class: 'danger', 'data-release': x.allocation_id, onclick: () => release(x.allocation_id) }, 'Release')
      : ''))));
  fillBody($('alloc-granted'), a.granted.map((x) => el('tr', { 'data-granted': x.allocation_id },
    el('td', { title: x.allocation_id }, el('code', {}, short(x.allocation_id))),
    el('td', { title: x.holder }, nameOf(x.holder)),
    el('td', {}, resources(x.allocated_resources)),
    el('td', {}, x.priority),
    el('td', {}, fmtAgo(x.expires_at)),
    el('td', {}, el('button', { class: 'danger', 'data-revoke': x.allocation_id, onclick: () => release(x.allocation_id) }, 'Revoke')))));
}

// One row per reservation: one this node made on itself is both held
// and granted, and the owner's copy (granted) also knows what is left.
const RESV_LIVE = ['confirmed', 'waiting', 'active'];
function mergeReservations(r) {
  const byId = new Map();
  for (const x of r.held) byId.set(x.reservation_id, { ...x, sides: ['held'] });
  for (const x of r.granted) {
    const h = byId.get(x.reservation_id);
    byId.set(x.reservation_id, { ...x, sides: h ? ['held', 'granted'] : ['granted'] });
  }
  const live = (x) => RESV_LIVE.includes(x.status);
  // Live ones first, soonest first; then finished ones, latest first.
  return [...byId.values()].sort((a, b) => (live(b) - live(a)) ||
    (live(a) ? Date.parse(a.start) - Date.parse(b.start) : Date.parse(b.end) - Date.parse(a.end)));
}
function fmtWindow(startIso, endIso) {
  const s = new Date(startIso), e = new Date(endIso);
  const hm = (d) => d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const day = (d) => (d.toDateString() === new Date().toDateString() ? '' : d.toLocaleDateString() + ' ');
  return day(s) + hm(s) + '–' + (s.toDateString() === e.toDateString() ? '' : e.toLocaleDateString() + ' ') + hm(e);
}
function fmtCapacity(c) {
  const parts = [];
  parts.push(c.cpu_cores + (c.cpu_cores === 1 ? ' core' : ' cores'));
  if (c.memory_mb) parts.push(fmtMB(c.memory_mb));
  if (c.disk_mb) parts.push(fmtMB(c.disk_mb) + ' disk');
  if ((c.gpus || []).length) parts.push(c.gpus.length + ' GPU' + (c.gpus.length > 1 ? 's' : ''));
  for (const [k, v] of Object.entries(c.custom || {})) parts.push(v + ' ' + k);
  return parts.join(', ');
}
function condition(x) {
  const parts = [];
  if (x.when_event) parts.push('event ' + x.when_event);
  if (x.after_reservation) parts.push('after ' + short(x.after_reservation));
  if (!parts.length) return '';
  return parts.join(', ') + (x.condition_met ? ', met ' + new Date(x.condition_met).toLocaleTimeString() : '');
}
const groupName = (id) => (state.groups.find((g) => g.id === id) || {}).name || short(id);

function renderReservations(r) {
  const rows = mergeReservations(r);
  const key = JSON.stringify([rows, state.groups.map((g) => [g.id, g.name]), state.local && state.local.id]);
  if (key === state.resvKey) return;
  state.resvKey = key;
  const me = state.local ? state.local.id : '';
  fillBody($('resv-table'), rows.map((x) => {
    const id = x.reservation_id;
    const live = RESV_LIVE.includes(x.status);
    const pooledActive = x.shared_with && x.status === 'active';
    const cores = el('input', {
      type: 'number', min: 1, value: state.drawCores[id] || 1, title: 'cores to draw', 'data-draw-cores': id,
      oninput: (e) => { state.drawCores[id] = e.target.value; },
    });
    return el('tr', { 'data-reservation': id, 'data-status': x.status },
      el('td', { title: id }, el('code', {}, short(id))),
      el('td', { title: x.node_id }, x.node_name || short(x.node_id)),
      el('td', { title: x.holder }, x.holder === me ? 'this node' : nameOf(x.holder)),
      el('td', { title: `${x.start} – ${x.end}` }, fmtWindow(x.start, x.end)),
      el('td', { class: 'resv-status' }, badge(x.status)),
      el('td', { class: 'detail' }, resources(x.required_resources)),
      el('td', { class: 'resv-condition', title: x.after_reservation || null }, condition(x)),
      el('td', { title: x.shared_with || null }, x.shared_with ? groupName(x.shared_with) : ''),
      el('td', {}, x.left ? fmtCapacity(x.left) : ''),
      el('td', {},
        pooledActive ? [cores, ' ', el('button', { 'data-draw': id, onclick: () => draw(x, cores) }, 'Draw'), ' '] : null,
        live ? el('button', {
          class: 'danger', 'data-cancel': id, onclick: () => cancelReservation(id, x.status),
          title: x.status === 'active' ? 'end the window now (releases its lease)' : 'call it off',
        }, 'Cancel') : null));
  }));
}

// ---------- charts (canvas, drawn by hand) ----------

const COLORS = ['#2f6fde', '#1f9d55', '#d69e2e', '#9f4fd6', '#d64545', '#0f9fb0'];

function prepCanvas(c) {
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth || 560, h = c.clientHeight || 220;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr);
    c.height = Math.round(h * dpr);
  }
  const g = c.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  return { g, w, h };
}

// series: [{label, color, points: [[t, v]], scatter}]
function drawChart(canvas, series, opt) {
  const { g, w, h } = prepCanvas(canvas);
  const pad = { l: 46, r: 10, t: 36, b: 22 };
  // The window ends now and spans the chosen range, or less while the
  // node has not kept that much yet (at least a minute).
  const t1 = Date.now();
  let oldest = t1;
  for (const s of series) if (s.points.length) oldest = Math.min(oldest, s.points[0][0]);
  const t0 = Math.max(t1 - state.rangeMs, Math.min(oldest, t1 - 60000));
  let yMax = opt.yMax;
  if (yMax === undefined) {
    yMax = 0;
    for (const s of series) for (const [t, v] of s.points) if (t >= t0 && v > yMax) yMax = v;
    yMax = yMax <= 0 ? 1 : niceCeil(yMax * 1.1);
  }
  const X = (t) => pad.l + ((t - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  const Y = (v) => h - pad.b - (Math.min(v, yMax) / yMax) * (h - pad.t - pad.b);
  g.font = '11px system-ui, sans-serif';
  g.strokeStyle = '#e6e9ef';
  g.fillStyle = '#6b7385';
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4, y = Y(v);
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(fmtAxis(v) + (opt.unit || ''), 4, y + 4);
  }
  for (let i = 0; i <= 3; i++) {
    const t = t0 + ((t1 - t0) * i) / 3;
    const d = new Date(t);
    const label = d.toTimeString().slice(0, t1 - t0 < 600000 ? 8 : 5);
    g.fillText(label, X(t) - (i === 3 ? g.measureText(label).width : 0), h - 6);
  }
  let lx = pad.l, ly = 13;
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const pts = s.points.filter(([t]) => t >= t0);
    g.strokeStyle = color;
    g.fillStyle = color;
    g.lineWidth = 1.8;
    if (s.scatter) {
      for (const [t, v] of pts) { g.beginPath(); g.arc(X(t), Y(v), 3, 0, 2 * Math.PI); g.fill(); }
    } else if (pts.length) {
      g.beginPath();
      pts.forEach(([t, v], j) => (j ? g.lineTo(X(t), Y(v)) : g.moveTo(X(t), Y(v))));
      g.stroke();
    }
    const label = s.label + (s.current !== undefined ? ' ' + s.current : '');
    const lw = g.measureText(label).width + 28;
    if (lx + lw > w - pad.r && lx > pad.l) {
      lx = pad.l;
      ly += 13;
    }
    g.fillRect(lx, ly - 5, 10, 3);
    g.fillStyle = '#1d2330';
    g.fillText(label, lx + 14, ly);
    lx += lw;
  });
  if (!series.some((s) => s.points.some(([t]) => t >= t0))) {
    g.fillStyle = '#9aa3b5';
    g.fillText(opt.empty || 'no data yet', w / 2 - 40, h / 2);
  }
}
function niceCeil(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
function fmtAxis(v) {
  return v >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1);
}
const pct = (used, total) => (total > 0 ? (100 * used) / total : 0);

function usageSeries(key, cpuKey) {
  const S = state.samples;
  const last = S[S.length - 1];
  const mk = (label, f, cur) => ({ label, points: S.map((s) => [s.at_ms, f(s)]), current: last ? cur(last) : undefined });
  const c = (s) => s[key];
  return [
    mk('cores', (s) => pct(c(s).cpu_cores_total - c(s).cpu_cores_free, c(s).cpu_cores_total),
      (s) => `${c(s).cpu_cores_total - c(s).cpu_cores_free}/${c(s).cpu_cores_total}`),
    mk('memory', (s) => pct(c(s).memory_mb_total - c(s).memory_mb_free, c(s).memory_mb_total),
      (s) => fmtMB(c(s).memory_mb_total - c(s).memory_mb_free)),
    mk('GPU memory', (s) => pct(c(s).gpu_memory_mb_total - c(s).gpu_memory_mb_free, c(s).gpu_memory_mb_total),
      (s) => fmtMB(c(s).gpu_memory_mb_total - c(s).gpu_memory_mb_free)),
    mk('host CPU', (s) => s[cpuKey], (s) => s[cpuKey].toFixed(0) + '%'),
  ];
}

function drawCharts() {
  drawChart($('chart-local'), usageSeries('local', 'local_cpu_usage_pct'), { yMax: 100, unit: '%' });
  drawChart($('chart-swarm'), usageSeries('swarm', 'swarm_cpu_usage_pct'), { yMax: 100, unit: '%' });
  const outcomes = ['granted', 'queued', 'denied', 'failed'];
  const colors = { granted: '#1f9d55', queued: '#d69e2e', denied: '#d64545', failed: '#8a8fa0' };
  drawChart($('chart-latency'), outcomes.map((o) => {
    const pts = state.latency.filter((p) => p.outcome === o).map((p) => [p.at_ms, p.ms]);
    return { label: o, color: colors[o], scatter: true, points: pts, current: pts.length ? '(' + pts.length + ')' : undefined };
  }), { unit: ' ms', empty: 'no allocations requested yet' });
}

function addUtilization(u) {
  state.everyMs = u.every_ms || state.everyMs;
  const lastS = state.samples.length ? state.samples[state.samples.length - 1].at_ms : 0;
  for (const s of u.samples) if (s.at_ms > lastS) state.samples.push(s);
  const lastL = state.latency.length ? state.latency[state.latency.length - 1].at_ms : 0;
  for (const p of u.latency) if (p.at_ms > lastL || !state.latency.length) state.latency.push(p);
  const cut = Date.now() - 3600000;
  while (state.samples.length && state.samples[0].at_ms < cut) state.samples.shift();
  while (state.latency.length > 512) state.latency.shift();
}

// ---------- live updates ----------

function setLive(live, why) {
  const b = $('live');
  b.textContent = live ? 'live' : why || 'reconnecting';
  b.className = 'badge ' + (live ? 'badge-live' : 'badge-offline');
}

function applySnapshot(s) {
  renderLocal(s.node);
  renderNodes(s.nodes);
  renderAllocations(s.allocations);
  addUtilization(s.utilization);
  drawCharts();
}

async function stream() {
  for (;;) {
    try {
      const headers = state.token ? { Authorization: 'Bearer ' + state.token } : {};
      const r = await fetch('/api/v1/events', { headers });
      if (r.status === 401) {
        needToken();
        setLive(false, 'token needed');
        await sleep(2000);
        continue;
      }
      if (!r.ok || !r.body) throw new Error('HTTP ' + r.status);
      const reader = r.body.getReader();
      const dec = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true }).replace(/\r\n/g, '\n');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const raw = buf.slice(0, i);
          buf = buf.slice(i + 2);
          onEvent(raw);
        }
      }
    } catch (_) { /* reconnect below */ }
    setLive(false);
    await sleep(2000);
  }
}

function onEvent(raw) {
  let name = 'message';
  const data = [];
  for (const line of raw.split('\n')) {
    if (line.startsWith('event:')) name = line.slice(6).trim();
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
  }
  if (name !== 'snapshot' || !data.length) return;
  try {
    applySnapshot(JSON.parse(data.join('\n')));
    setLive(true);
    banner('');
  } catch (e) {
    banner('bad update from the node: ' + e.message);
  }
}

// ---------- actions ----------

async function refreshNodes(msg) {
  try {
    renderNodes(await api('GET', '/nodes'));
    if (msg) say('nodes-msg', msg);
  } catch (e) { say('nodes-msg', errText(e), true); }
}

async function refreshAllocations() {
  try { renderAllocations(await api('GET', '/allocations')); } catch (e) { say('alloc-msg', errText(e), true); }
}

async function refreshReservations() {
  try { renderReservations(await api('GET', '/reservations')); } catch (e) { say('resv-msg', errText(e), true); }
}

async function cancelReservation(id, status) {
  try {
    const r = await api('DELETE', '/reservations/' + encodeURIComponent(id));
    say('resv-msg', `${status === 'active' ? 'ended' : 'cancelled'} ${short(id)}` +
      (r.owner_confirmed ? ' (owner confirmed)' : ' (owner not reached)'));
  } catch (e) { say('resv-msg', errText(e), true); }
  await Promise.all([refreshReservations(), refreshAllocations()]);
}

// Draw a lease from a pooled reservation, on its owner.
async function draw(x, input) {
  const cores = Number(input.value);
  if (!Number.isInteger(cores) || cores < 1) {
    say('resv-msg', 'cores to draw must be a whole number ≥ 1', true);
    return;
  }
  try {
    const a = await api('POST', '/allocations', {
      required_resources: { cpu_cores: cores }, reservation: x.reservation_id, node_id: x.node_id,
    });
    say('resv-msg', `drew ${resources(a.allocated_resources)} from ${short(x.reservation_id)}: lease ${short(a.allocation_id)} (${a.status})`);
  } catch (e) { say('resv-msg', errText(e), true); }
  await Promise.all([refreshReservations(), refreshAllocations()]);
}

async function bookReservation(ev) {
  ev.preventDefault();
  const btn = $('resv-submit');
  let body;
  try {
    const duration = intOr('resv-duration', 0);
    if (duration < 1) throw new Error('Duration (min) must be at least 1');
    body = {
      required_resources: {
        cpu_cores: intOr('resv-cpu', 0),
        memory_mb: intOr('resv-mem', 0),
        gpu_count: intOr('resv-gpus', 0),
      },
      start_in_secs: intOr('resv-start', 0) * 60,
      duration_secs: duration * 60,
    };
    const node = $('resv-node').value;
    if (node) body.node_id = node;
    const event = $('resv-event').value.trim();
    if (event) body.when_event = event;
    const share = $('resv-share').value.trim();
    if (share) body.share_with = share;
  } catch (e) {
    say('resv-msg', e.message, true);
    return;
  }
  btn.disabled = true;
  say('resv-msg', 'booking…');
  try {
    const x = await api('POST', '/reservations', body);
    say('resv-msg', `reserved ${short(x.reservation_id)} on ${x.node_name || short(x.node_id)}: ` +
      `${resources(x.required_resources)}, ${fmtWindow(x.start, x.end)} (${x.status})`);
  } catch (e) {
    const refusals = (e.body && e.body.refusals) || [];
    say('resv-msg', errText(e) + (refusals.length
      ? ' — refused by: ' + refusals.map((r) => `${r.node_name || short(r.node_id)} (${r.reason})`).join(', ')
      : ''), true);
  } finally {
    btn.disabled = false;
  }
  await refreshReservations();
}

async function postEvent(ev) {
  ev.preventDefault();
  const res = $('resv-event-result');
  const btn = $('resv-event-post');
  btn.disabled = true;
  res.hidden = false;
  try {
    const p = await api('POST', '/reservations/events', { name: $('resv-event-name').value.trim() });
    res.className = 'result';
    setChildren(res,
      el('div', {}, el('strong', {}, p.name), `: met ${p.met.length} reservation${p.met.length === 1 ? '' : 's'}`),
      p.met.length ? el('ul', {}, p.met.map((m) => el('li', { 'data-met': m.reservation_id },
        el('code', { title: m.reservation_id }, short(m.reservation_id)), ' on ', m.node_name || short(m.node_id)))) : null,
      p.errors.length ? el('div', { class: 'msg error' }, 'not told: ' + p.errors.join('; ')) : null);
  } catch (e) {
    res.className = 'result error';
    setChildren(res, el('div', {}, el('strong', {}, e.code || 'error'), ': ', e.message || String(e)));
  } finally {
    btn.disabled = false;
  }
  await Promise.all([refreshReservations(), refreshAllocations()]);
}

async function release(id) {
  try {
    const r = await api('DELETE', '/allocations/' + encodeURIComponent(id));
    say('alloc-msg', `released ${short(id)}` + (r.owner_confirmed ? ' (owner confirmed)' : ' (owner not reached: it runs out on its own)'));
    const res = $('req-result');
    if (res.dataset.allocationId === id) {
      res.dataset.status = 'released';
      res.querySelector('.badge')?.replaceWith(badge('released'));
      res.querySelector('#req-release')?.remove();
    }
  } catch (e) { say('alloc-msg', errText(e), true); }
  await refreshAllocations();
}

function intOr(id, dflt) {
  const v = $(id).value.trim();
  if (v === '') return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${$(id).labels?.[0]?.textContent.trim() || id} must be a whole number ≥ 0`);
  return n;
}

async function requestResources(ev) {
  ev.preventDefault();
  const res = $('req-result');
  const btn = $('req-submit');
  let body;
  try {
    const model = $('req-model').value.trim();
    body = {
      required_resources: {
        cpu_cores: intOr('req-cpu', 0),
        memory_mb: intOr('req-mem', 0),
        gpu_count: intOr('req-gpus', 0),
        gpu_memory_mb: intOr('req-gpu-mem', 0),
        preferred_models: model ? [model] : [],
      },
      task_type: $('req-task-type').value,
      priority: $('req-priority').value,
    };
    const node = $('req-node').value;
    if (node) body.node_id = node;
    const d = intOr('req-duration', null);
    if (d) body.duration_secs = d;
    const w = intOr('req-wait', null);
    if (w) body.wait_secs = w;
  } catch (e) {
    showResult(false, 'bad_input', e.message);
    return;
  }
  btn.disabled = true;
  res.hidden = false;
  res.className = 'result';
  res.textContent = 'asking…';
  try {
    const a = await api('POST', '/allocations', body);
    res.dataset.allocationId = a.allocation_id;
    res.dataset.status = a.status;
    setChildren(res, 
      el('div', {}, badge(a.status), ' ', el('code', { id: 'req-allocation-id' }, a.allocation_id)),
      el('div', {}, `on ${a.node_name || short(a.node_id)}: ${resources(a.allocated_resources)}`,
        a.queue_position ? ` — queue position ${a.queue_position}` : '',
        ` — expires ${fmtAgo(a.expires_at)}`),
      (a.refusals || []).length ? el('div', { class: 'muted' }, 'refused first by: ' + a.refusals.map((r) => `${r.node_name || short(r.node_id)} (${r.reason})`).join(', ')) : null,
      el('button', { id: 'req-release', class: 'danger', onclick: () => release(a.allocation_id) }, 'Release'));
  } catch (e) {
    showResult(false, e.code, e.message, e.body);
  } finally {
    btn.disabled = false;
  }
  await Promise.all([refreshAllocations(), loadBottlenecks()]);
}

function showResult(ok, code, message, body) {
  const res = $('req-result');
  res.hidden = false;
  res.className = 'result' + (ok ? '' : ' error');
  delete res.dataset.allocationId;
  res.dataset.status = 'denied';
  // Whatever else the error carries (refusals, exclusions), when present.
  const extra = {};
  for (const [k, v] of Object.entries(body || {})) {
    if (k === 'code' || k === 'message' || v === null || (Array.isArray(v) && !v.length)) continue;
    extra[k] = v;
  }
  setChildren(res, el('div', {}, badge('denied'), ' ', el('strong', {}, code || 'error'), ': ', message || ''),
    Object.keys(extra).length ? el('pre', {}, JSON.stringify(extra, null, 2)) : null);
}

function showAccess(p) {
  $('access-remote').checked = !!p.allow_remote;
  $('access-group-only').checked = !!p.group_peers_only;
  say('access-status', `Remote access ${p.allow_remote ? 'allowed' : 'off'}` +
    (p.group_peers_only ? ', group peers only' : '') +
    (p.allow.length ? `, allow list of ${p.allow.length}` : '') +
    (p.deny.length ? `, ${p.deny.length} denied` : ''));
}

async function getAccess() {
  try { showAccess(await api('GET', '/access')); } catch (e) { say('access-status', errText(e), true); }
}

async function setAccess(change, box) {
  box.disabled = true;
  try {
    showAccess(await api('PATCH', '/access', change));
    $('access-status').textContent += ' — saved';
  } catch (e) {
    say('access-status', errText(e), true);
    await getAccess();
  } finally { box.disabled = false; }
}

async function healthCheck() {
  const btn = $('health-check');
  btn.disabled = true;
  say('health-msg', 'asking every node…');
  try {
    const t0 = performance.now();
    const checks = await api('POST', '/health-checks');
    fillBody($('health-table'), checks.map((c) => el('tr', { 'data-node': c.node_id },
      el('td', { title: c.node_id }, c.name || short(c.node_id)),
      el('td', {}, badge(c.status)),
      el('td', {}, c.response_time_ms == null ? '' : c.response_time_ms.toFixed(1) + ' ms'),
      el('td', {}, c.active_allocations),
      el('td', {}, c.queued),
      el('td', {}, c.running_tasks),
      el('td', {}, c.resources ? c.resources.cpu_usage_pct.toFixed(0) + '%' : ''),
      el('td', {}, c.uptime_secs == null ? '' : fmtUptime(c.uptime_secs)),
      el('td', { class: 'detail' }, c.error || ''))));
    say('health-msg', `${checks.length} node${checks.length === 1 ? '' : 's'} checked in ${(performance.now() - t0).toFixed(0)} ms`);
  } catch (e) { say('health-msg', errText(e), true); } finally { btn.disabled = false; }
}
function fmtUptime(s) {
  if (s < 120) return s + ' s';
  if (s < 7200) return Math.round(s / 60) + ' min';
  if (s < 172800) return Math.round(s / 3600) + ' h';
  return Math.round(s / 86400) + ' d';
}

let strategyCfg = null;
async function getStrategy() {
  try {
    strategyCfg = await api('GET', '/strategy');
    $('strategy-select').value = strategyCfg.strategy;
    const w = Object.entries(strategyCfg.weights || {});
    say('strategy-current', 'In force: ' + strategyCfg.strategy + (w.length ? ' (weights ' + w.map(([k, v]) => k + '=' + v).join(', ') + ')' : ''));
  } catch (e) { say('strategy-current', errText(e), true); }
}
async function setStrategy() {
  try {
    strategyCfg = await api('PUT', '/strategy', { strategy: $('strategy-select').value, weights: (strategyCfg && strategyCfg.weights) || {} });
    say('strategy-current', 'In force: ' + strategyCfg.strategy + ' — saved');
  } catch (e) { say('strategy-current', errText(e), true); }
}

async function listGroups() {
  try {
    const groups = await api('GET', '/groups');
    state.groups = groups;
    $('groups-list').replaceChildren(...groups.filter((g) => g.is_member).map((g) => el('option', { value: g.name })));
    fillBody($('groups-table'), groups.map((g) => el('tr', { 'data-group': g.id },
      el('td', {}, g.name),
      el('td', { title: g.id }, el('code', {}, short(g.id))),
      el('td', { class: 'detail' }, `${g.members.length}/${g.max_members}: ` + g.members.map((m) => m.name || short(m.id)).join(', ')),
      el('td', {}, g.open ? 'open' : 'invite only'),
      el('td', {}, g.is_member ? 'yes' : 'no'))));
  } catch (e) { say('group-msg', errText(e), true); }
}
async function groupAction(kind) {
  const id = $('group-id').value.trim();
  if (!id) { say('group-msg', 'enter a group id or name', true); return; }
  try {
    const path = '/groups/' + encodeURIComponent(id);
    if (kind === 'members') {
      const ms = await api('GET', path + '/members');
      say('group-msg', `${ms.length} member${ms.length === 1 ? '' : 's'}: ` + ms.map((m) => (m.name || short(m.id))).join(', '));
    } else {
      const g = await api('POST', path + '/' + kind);
      say('group-msg', `${kind === 'join' ? 'joined' : 'left'} ${g.name}: ${g.members.length} member${g.members.length === 1 ? '' : 's'}`);
    }
  } catch (e) { say('group-msg', errText(e), true); }
  await listGroups();
}
async function createGroup() {
  try {
    const g = await api('POST', '/groups', {
      name: $('group-name').value,
      max_members: Number($('group-max').value),
      open: $('group-open').checked,
    });
    $('group-id').value = g.id;
    say('group-msg', `created ${g.name} (${short(g.id)})`);
  } catch (e) { say('group-msg', errText(e), true); }
  await listGroups();
}

function parseLabels(text) {
  const labels = {};
  for (const part of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const i = part.indexOf('=');
    if (i <= 0) throw new Error(`label "${part}" must be key=value`);
    labels[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return labels;
}
async function listPools() {
  try {
    const pools = await api('GET', '/pools');
    fillBody($('pools-table'), pools.map((p) => el('tr', { 'data-pool': p.name },
      el('td', {}, p.name),
      el('td', { class: 'detail' }, [
        ...Object.entries(p.selector.labels || {}).map(([k, v]) => k + '=' + v),
        ...(p.selector.nodes || []).map(short)].join(', ')),
      el('td', { class: 'detail' }, p.members.map((m) => m.name || short(m.id)).join(', ')),
      el('td', {}, `${p.capacity.cpu_cores_free}/${p.capacity.cpu_cores_total}`),
      el('td', {}, `${fmtMB(p.capacity.memory_mb_free)}/${fmtMB(p.capacity.memory_mb_total)}`),
      el('td', {}, `${p.capacity.gpus_free}/${p.capacity.gpus_total}`),
      el('td', {}, el('button', { class: 'danger', onclick: () => deletePool(p.name) }, 'Delete')))));
  } catch (e) { say('pool-msg', errText(e), true); }
}
async function createPool() {
  try {
    const nodes = $('pool-nodes').value.split(',').map((s) => s.trim()).filter(Boolean);
    const p = await api('POST', '/pools', { name: $('pool-name').value.trim(), labels: parseLabels($('pool-labels').value), nodes });
    say('pool-msg', `created ${p.name}: ${p.members.length} member${p.members.length === 1 ? '' : 's'}`);
  } catch (e) { say('pool-msg', errText(e), true); }
  await listPools();
}
async function deletePool(name) {
  try {
    await api('DELETE', '/pools/' + encodeURIComponent(name));
    say('pool-msg', 'deleted ' + name);
  } catch (e) { say('pool-msg', errText(e), true); }
  await listPools();
}

async function loadHistory() {
  try {
    const events = await api('GET', '/history?since=' + encodeURIComponent($('history-since').value) + '&limit=50');
    fillBody($('history-table'), events.map((h) => el('tr', {},
      el('td', {}, new Date(h.at_ms).toLocaleString()),
      el('td', {}, h.kind.replace('_', ' '), el('span', { class: 'muted' }, ' (' + h.role + ')')),
      el('td', { title: h.requester || '' }, h.requester ? nameOf(h.requester) : ''),
      el('td', { title: h.node || '' }, h.node ? nameOf(h.node) : ''),
      el('td', {}, badge(h.outcome), h.reason ? ' ' + h.reason : ''),
      el('td', { class: 'detail' }, h.detail || ''))));
    say('history-msg', events.length ? `${events.length} most recent` : 'nothing recorded in this range');
  } catch (e) {
    say('history-msg', e.status === 404 ? 'this node does not keep a history' : errText(e), e.status !== 404);
  }
}

async function loadBottlenecks() {
  try {
    const b = await api('GET', '/bottlenecks');
    const mins = Math.round(b.window_secs / 60);
    say('bottleneck-summary', b.bottleneck
      ? `swarm-wide bottleneck (last ${mins} min): ${b.bottleneck}, ${b.swarm[0].count} refusal${b.swarm[0].count === 1 ? '' : 's'}`
      : `no requests refused for capacity in the last ${mins} min`);
    const rows = [];
    for (const n of b.nodes) {
      for (const d of n.dimensions) {
        rows.push(el('tr', { 'data-node': n.node_id, 'data-dimension': d.dimension },
          el('td', { title: n.node_id }, n.name || short(n.node_id)),
          el('td', {}, d.dimension),
          el('td', {}, d.count)));
      }
    }
    fillBody($('bottlenecks-table'), rows);
  } catch (e) { say('bottleneck-summary', errText(e), true); }
}

async function loadUtilization() {
  try {
    addUtilization(await api('GET', '/utilization?since=1h'));
    drawCharts();
  } catch (_) { /* the stream fills it in */ }
}

// ---------- wiring ----------

function wire() {
  $('token-save').addEventListener('click', () => {
    state.token = $('token-input').value.trim();
    sessionStorage.setItem('lanswarm.token', state.token);
    $('token-box').hidden = true;
    banner('');
    start();
  });
  $('nodes-discover').addEventListener('click', async () => {
    try {
      const d = await api('POST', '/discover');
      say('nodes-msg', `discovering: dialled ${d.bootstrap_dialed} bootstrap address${d.bootstrap_dialed === 1 ? '' : 'es'}, syncing with ${d.synced_with} peer${d.synced_with === 1 ? '' : 's'}${d.mdns ? ', mDNS on' : ', mDNS off'}`);
      await sleep(800);
      await refreshNodes();
    } catch (e) { say('nodes-msg', errText(e), true); }
  });
  $('nodes-list').addEventListener('click', () => refreshNodes('listed at ' + new Date().toLocaleTimeString()));
  $('nodes-refresh').addEventListener('click', () => refreshNodes('refreshed at ' + new Date().toLocaleTimeString()));
  $('req-form').addEventListener('submit', requestResources);
  $('access-remote').addEventListener('change', (e) => setAccess({ allow_remote: e.target.checked }, e.target));
  $('access-group-only').addEventListener('change', (e) => setAccess({ group_peers_only: e.target.checked }, e.target));
  $('access-get').addEventListener('click', getAccess);
  $('health-check').addEventListener('click', healthCheck);
  $('strategy-set').addEventListener('click', setStrategy);
  $('strategy-get').addEventListener('click', getStrategy);
  $('group-create').addEventListener('click', createGroup);
  $('group-join').addEventListener('click', () => groupAction('join'));
  $('group-leave').addEventListener('click', () => groupAction('leave'));
  $('group-members').addEventListener('click', () => groupAction('members'));
  $('pool-create').addEventListener('click', createPool);
  $('pool-list').addEventListener('click', listPools);
  $('resv-refresh').addEventListener('click', refreshReservations);
  $('resv-form').addEventListener('submit', bookReservation);
  $('resv-event-form').addEventListener('submit', postEvent);
  $('history-refresh').addEventListener('click', loadHistory);
  $('history-since').addEventListener('change', loadHistory);
  $('bottlenecks-refresh').addEventListener('click', loadBottlenecks);
  $('chart-range').addEventListener('change', (e) => { state.rangeMs = Number(e.target.value); drawCharts(); });
  window.addEventListener('resize', drawCharts);
}

let started = false;
async function start() {
  try {
    renderLocal(await api('GET', '/node'));
  } catch (e) {
    if (e.status !== 401) banner('cannot reach the node: ' + errText(e));
    return;
  }
  await Promise.all([refreshNodes(), refreshAllocations(), getAccess(), getStrategy(), listGroups(), listPools(), refreshReservations(), loadHistory(), loadUtilization(), loadBottlenecks()]);
  if (!started) {
    started = true;
    stream();
    setInterval(() => { if (!document.hidden) loadHistory(); }, 10000);
    setInterval(() => { if (!document.hidden) loadBottlenecks(); }, 5000);
    setInterval(() => { if (!document.hidden) refreshReservations(); }, 2000);
    setInterval(drawCharts, 5000);
  }
}

wire();
start();
