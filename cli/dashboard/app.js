// fleetsign's dashboard: one page over the service's own API (the operator's client certificate
// authenticates every request), Chart.js from Debian, the jobs pushed as Server-Sent Events.
// Everything from the registry is shown as text (textContent), never as markup.
'use strict';

const state = { me: null, fleet: null, auditBefore: [], auditNext: null, auditSeq: 0, events: null };

// --- small helpers ----------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}
const num = (v) => el('td', { class: 'num' }, v ?? '');
function fill(tbody, rows) { tbody.replaceChildren(...rows); }

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, options = {}) {
  const init = { credentials: 'same-origin', headers: { Accept: 'application/json' }, ...options };
  if (options.body !== undefined) {
    init.method = init.method || 'POST';
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(options.body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let body = null;
  try { body = JSON.parse(text); } catch (e) { body = null; }
  if (!r.ok && !(body && !body.error)) {
    const err = body && body.error ? body.error : { code: String(r.status), message: text };
    throw new ApiError(r.status, err.code, err.message);
  }
  return body;
}

function showError(e) {
  const box = document.getElementById('error');
  if (!e) { box.hidden = true; return; }
  box.textContent = e instanceof ApiError ? `${e.code}: ${e.message}` : String(e.message || e);
  box.hidden = false;
}

const DAY = 86400e3;
const fmtDate = (iso) => (iso ? iso.slice(0, 10) : '');
function fmtDuration(s) {
  if (s === null || s === undefined) return '';
  if (s < 90) return `${s} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// --- views ------------------------------------------------------------------------------------
const views = {
  horizon: loadHorizon, fleet: loadFleet, jobs: startJobs, revoke: prepareRevoke,
  cas: loadCas, audit: () => loadAudit(0),
};

function show(name) {
  if (name !== 'jobs') stopJobs();
  for (const b of document.querySelectorAll('#tabs button')) {
    b.classList.toggle('active', b.dataset.view === name);
  }
  for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== `view-${name}`;
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
  showError(null);
  Promise.resolve(views[name]()).catch(showError);
}

async function fleet(refresh) {
  if (!state.fleet || refresh) state.fleet = await api('/api/v1/fleet');
  return state.fleet;
}

// Expiry horizon: a stacked bar per week and group, thresholds and CA/CRL dates marked.
let horizonChart = null;
async function loadHorizon() {
  const f = await fleet(true);
  const start = Date.parse(f.as_of);
  const weekOf = (iso) => Math.floor((Date.parse(iso) - start) / (7 * DAY));
  document.getElementById('horizon-asof').textContent = `as of ${f.as_of}`;
  document.getElementById('horizon-thresholds').textContent = f.thresholds.join(' / ');
  const labels = [];
  for (let w = 0; w < f.weeks; w++) labels.push(new Date(start + w * 7 * DAY).toISOString().slice(0, 10));
  const palette = ['#1f5fbf', '#2e7d32', '#c26a00', '#6a1b9a', '#00838f', '#ad1457', '#5d4037', '#455a64'];
  const datasets = f.groups.map((g, i) => ({
    label: g.group, data: g.weeks, backgroundColor: palette[i % palette.length], stack: 'devices',
  }));
  const marks = [];
  for (const c of f.cas) {
    const w = weekOf(c.not_after);
    if (w >= 0 && w < f.weeks) marks.push({ week: w, color: '#b3261e', text: `CA ${c.name} expires ${fmtDate(c.not_after)}` });
    if (c.crl_next_update) {
      const cw = weekOf(c.crl_next_update);
      if (cw >= 0 && cw < f.weeks) marks.push({ week: cw, color: '#c26a00', text: `CRL of ${c.name}: nextUpdate ${c.crl_next_update}` });
    }
  }
  fill(document.querySelector('#horizon-marks'), marks.length
    ? marks.map((m) => el('li', { 'data-week': m.week }, `week ${m.week + 1}: ${m.text}`))
    : [el('li', {}, 'no CA or CRL date within the horizon')]);
  const sum = (a, n) => a.slice(0, n).reduce((x, y) => x + y, 0);
  fill(document.querySelector('#horizon-table tbody'), f.groups.map((g) => el('tr', { 'data-group': g.group },
    el('td', {}, g.group), num(g.expired), num(sum(g.weeks, 1)), num(sum(g.weeks, 2)),
    num(sum(g.weeks, 4)), num(sum(g.weeks, f.weeks)))));
  if (typeof Chart === 'undefined') return;  // Debian's libjs-chart.js missing: the tables stay
  const thresholds = f.thresholds.map((d) => d / 7);
  const markPlugin = {
    id: 'fleetsignMarks',
    afterDatasetsDraw(chart) {
      const { ctx, chartArea: a, scales: { x } } = chart;
      const at = (w) => x.getPixelForValue(0) + (x.getPixelForValue(1) - x.getPixelForValue(0)) * w;
      ctx.save();
      ctx.setLineDash([4, 4]);
      ctx.strokeStyle = '#667';
      for (const t of thresholds) { ctx.beginPath(); ctx.moveTo(at(t - 0.5), a.top); ctx.lineTo(at(t - 0.5), a.bottom); ctx.stroke(); }
      ctx.setLineDash([]);
      ctx.lineWidth = 2;
      for (const m of marks) { ctx.strokeStyle = m.color; ctx.beginPath(); ctx.moveTo(at(m.week), a.top); ctx.lineTo(at(m.week), a.bottom); ctx.stroke(); }
      ctx.restore();
    },
  };
  if (horizonChart) horizonChart.destroy();
  horizonChart = new Chart(document.getElementById('horizon-chart'), {
    type: 'bar',
    data: { labels, datasets },
    options: {
      maintainAspectRatio: false, animation: false,
      scales: { x: { stacked: true, title: { display: true, text: 'week starting' } },
                y: { stacked: true, beginAtZero: true, title: { display: true, text: 'certificates expiring' } } },
    },
    plugins: [markPlugin],
  });
}

async function loadFleet() {
  const f = await fleet(true);
  document.getElementById('fleet-total').textContent = `${f.devices} devices, ${f.connected} connected`;
  fill(document.querySelector('#fleet-table tbody'), f.groups.map((g) => el('tr', { 'data-group': g.group },
    el('td', {}, g.group), el('td', {}, g.enabled ? 'yes' : 'no'), el('td', {}, g.primary_ca || '—'),
    el('td', {}, g.secondary_ca || '—'), num(g.devices), num(g.connected), num(g.primary_certs),
    num(g.secondary_certs))));
  document.getElementById('notback-total').textContent = `${f.not_back_total} devices`;
  fill(document.querySelector('#notback-table tbody'), f.not_back.map((n) => el('tr', {},
    el('td', {}, n.job), el('td', {}, n.kind), el('td', {}, n.device), el('td', {}, n.state), el('td', {}, n.step))));
}

// Jobs: the event stream drives the table; the buttons call the job routes.
const JOB_ACTIONS = {
  running: ['pause', 'cancel'], paused: ['resume', 'cancel'],
  finished: ['retry-failed'], aborted: ['retry-failed'], canceled: [],
};
// One stream while the Jobs view is shown (each holds a server thread). The browser reconnects
// a stream that broke; one the server refused (503: too many) is tried again here, later.
function startJobs() {
  if (state.events) return;
  const live = document.getElementById('jobs-live');
  const events = new EventSource('/api/v1/events');
  state.events = events;
  events.addEventListener('open', () => { live.textContent = 'live'; state.retry = 0; });
  events.addEventListener('error', () => {
    if (events.readyState !== EventSource.CLOSED) { live.textContent = 'reconnecting…'; return; }
    live.textContent = 'the service refused the stream; retrying…';
    stopJobs();
    state.retry = Math.min((state.retry || 0) + 1, 6);
    state.retryTimer = setTimeout(() => {
      if (!document.getElementById('view-jobs').hidden) startJobs();
    }, 1000 * 2 ** state.retry);
  });
  events.addEventListener('jobs', (ev) => {
    live.textContent = 'live';
    renderJobs(JSON.parse(ev.data).jobs);
  });
}
function stopJobs() {
  clearTimeout(state.retryTimer);
  if (state.events) state.events.close();
  state.events = null;
}
// The page's policy forbids style attributes: the bar's width is set through the CSSOM.
function progressBar(pct) {
  const fill = el('span', {});
  fill.style.width = `${pct}%`;
  return el('span', { class: 'bar', role: 'progressbar', 'aria-valuenow': pct }, fill);
}
function renderJobs(jobs) {
  const operator = state.me && state.me.role === 'operator';
  fill(document.querySelector('#jobs-table tbody'), jobs.map((j) => {
    const pct = j.total ? Math.round((100 * j.settled) / j.total) : 100;
    const tasks = Object.entries(j.tasks).map(([s, n]) => `${s} ${n}`).join(', ');
    const buttons = (JOB_ACTIONS[j.state] || []).map((a) => el('button', {
      type: 'button', 'data-action': a, ...(operator ? {} : { disabled: 'disabled', title: 'operators only' }),
      onclick: () => jobAction(j.id, a),
    }, a));
    return el('tr', { 'data-job': j.id, 'data-state': j.state },
      el('td', {}, j.id), el('td', {}, j.kind), el('td', { class: `state-${j.state}`, 'data-testid': 'job-state' }, j.state),
      el('td', {}, progressBar(pct), ` ${j.settled}/${j.total}`),
      el('td', {}, tasks), el('td', { class: 'num' }, `${j.rate_per_min}/min`), el('td', {}, fmtDuration(j.eta_s)),
      el('td', {}, buttons));
  }));
}
async function jobAction(id, action) {
  if (action === 'cancel' && !confirm(`Cancel job ${id}? Devices in progress stop where they are.`)) return;
  try {
    await api(`/api/v1/jobs/${encodeURIComponent(id)}/${action}`, { body: {} });
    showError(null);
  } catch (e) { showError(e); }
}

// Revocation preview: the dry run of `fleetsign revoke`, shown as the blast radius.
async function prepareRevoke() {
  const kind = document.getElementById('revoke-kind');
  const list = document.getElementById('revoke-choices');
  const refill = async () => {
    let names = [];
    if (kind.value === 'ca') names = (await fleet(false)).cas.map((c) => c.name);
    else if (kind.value === 'batch') names = ((await api('/api/v1/batches')).batches || []).map((b) => b.id);
    fill(list, names.map((n) => el('option', { value: n })));
  };
  kind.onchange = () => refill().catch(showError);
  await refill();
}
function kvList(obj) {
  const dl = el('dl', { class: 'kv' });
  for (const [k, v] of Object.entries(obj)) {
    if (v !== null && typeof v === 'object') continue;
    dl.append(el('dt', {}, k.replace(/_/g, ' ')), el('dd', { 'data-key': k }, String(v)));
  }
  return dl;
}
function countsTable(title, counts) {
  const rows = Object.entries(counts || {});
  if (!rows.length) return null;
  return el('table', { 'data-counts': title }, el('thead', {}, el('tr', {}, el('th', {}, title), el('th', { class: 'num' }, 'devices'))),
    el('tbody', {}, rows.map(([k, n]) => el('tr', {}, el('td', {}, k), num(n)))));
}
async function previewRevocation(ev) {
  ev.preventDefault();
  const out = document.getElementById('revoke-result');
  out.replaceChildren(el('p', {}, 'computing the blast radius…'));
  const body = { [document.getElementById('revoke-kind').value]: document.getElementById('revoke-value').value,
    reason: document.getElementById('revoke-reason').value };
  try {
    const r = await api('/api/v1/revocations/preview', { body });
    const p = r.plan;
    out.replaceChildren(
      el('h3', {}, `Blast radius of ${p.selector} (${p.reason}): nothing was revoked`),
      kvList(p),
      countsTable('group', p.devices_by_group), countsTable('lot', p.devices_by_lot), countsTable('site', p.devices_by_site),
      el('p', {}, `CAs revoked: ${(p.cas_revoked || []).join(', ') || 'none'}; CAs affected: ${(p.cas_affected || []).join(', ') || 'none'}`),
      el('p', {}, `Groups left without devices: ${(p.groups_without_devices || []).join(', ') || 'none'}`),
      el('p', {}, `Replacement: reprovision ${p.replacement.reprovision.length}, rotate now ${p.replacement.rotate_now.length}, `
        + `rotate under the incident ${p.replacement.rotate_incident.length}, retire ${p.replacement.retire.length}`));
    showError(null);
  } catch (e) { out.replaceChildren(); showError(e); }
}

// CA tree: parents before children, each with its slot, proof of possession, expiry and CRL.
async function loadCas() {
  const f = await fleet(true);
  const children = new Map();
  for (const c of f.cas) {
    const p = c.parent || '';
    if (!children.has(p)) children.set(p, []);
    children.get(p).push(c);
  }
  const soon = Date.now() + 30 * DAY;
  const node = (c) => el('li', { 'data-ca': c.name },
    el('strong', {}, c.name), ` ${c.subject} `,
    c.group ? el('span', { class: 'tag' }, `${c.group}${c.slot ? ` · ${c.slot}` : ''}`) : null,
    el('span', { class: c.verified ? 'tag' : 'tag warn' }, c.verified ? 'proof of possession' : 'not verified'),
    c.revoked ? el('span', { class: 'tag bad' }, 'revoked') : null,
    el('span', { class: Date.parse(c.not_after) < soon ? 'tag bad' : 'tag' }, `expires ${fmtDate(c.not_after)}`),
    c.crl_next_update ? el('span', { class: Date.parse(c.crl_next_update) < Date.now() + DAY ? 'tag warn' : 'tag' }, `CRL #${c.crl_number} next ${c.crl_next_update}`) : null,
    c.devices ? el('span', { class: 'tag' }, `${c.devices} devices`) : null,
    children.has(c.name) ? el('ul', {}, children.get(c.name).map(node)) : null);
  fill(document.getElementById('ca-tree'), (children.get('') || []).map(node));
}

// Audit log: filters and pages (newest first, "Older" follows next_before). The last request
// wins: an answer that arrives after a later request was made (opening the tab, then filtering,
// then paging) is dropped, so the table and its "Older" cursor always belong to the newest one.
async function loadAudit(before) {
  const seq = ++state.auditSeq;
  const q = new URLSearchParams({ limit: document.getElementById('audit-limit').value });
  for (const [id, key] of [['audit-action', 'action'], ['audit-actor', 'actor'], ['audit-subject', 'subject']]) {
    const v = document.getElementById(id).value.trim();
    if (v) q.set(key, v);
  }
  if (before) q.set('before', before);
  const r = await api(`/api/v1/audit?${q}`);
  if (seq !== state.auditSeq) return;
  state.auditNext = r.next_before;
  document.getElementById('audit-older').disabled = r.next_before === null;
  fill(document.querySelector('#audit-table tbody'), r.audit.map((a) => el('tr', { 'data-id': a.id },
    num(a.id), el('td', {}, a.at), el('td', {}, a.actor), el('td', {}, a.action), el('td', {}, a.subject),
    el('td', { class: 'detail' }, a.detail))));
}

// --- start ------------------------------------------------------------------------------------
document.addEventListener('DOMContentLoaded', async () => {
  for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => show(b.dataset.view));
  document.getElementById('revoke-form').addEventListener('submit', previewRevocation);
  document.getElementById('audit-form').addEventListener('submit', (e) => { e.preventDefault(); loadAudit(0).catch(showError); });
  document.getElementById('audit-older').addEventListener('click', () => loadAudit(state.auditNext).catch(showError));
  document.getElementById('audit-newest').addEventListener('click', () => loadAudit(0).catch(showError));
  try {
    state.me = await api('/api/v1/whoami');
    document.getElementById('whoami').textContent = `${state.me.name} (${state.me.role})`;
  } catch (e) { showError(e); }
  window.addEventListener('hashchange', () => {
    const v = location.hash.slice(1);
    if (views[v]) show(v);
  });
  const first = location.hash.slice(1);
  show(views[first] ? first : 'horizon');
});
