// time-sync dashboard: renders the frames `tsc dashboard` pushes (GET /api/stream, Server-Sent
// Events), ticks every clock between frames, draws the true-error chart, and sends controls
// (POST /api/..., JSON, with the operator cookie set by the login form). No dependencies.
'use strict';

const $ = (s, root = document) => root.querySelector(s);
const ui = { frame: null, recvAt: 0, cards: new Map(), rows: new Map(), samples: [], windowS: 180 };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// A stable colour per client, shared by its card and its line on the chart.
function colour(id) {
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360} 75% 62%)`;
}

const pad = (n, w = 2) => String(n).padStart(w, '0');
function hms(ms) {
  const d = new Date(ms);
  return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.${pad(d.getUTCMilliseconds(), 3)}`;
}
function day(ms) {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} UTC`;
}
function us(v) {
  if (v === null || v === undefined) return '–';
  const a = Math.abs(v), s = v < 0 ? '−' : '+';
  if (a < 1000) return `${s}${a} µs`;
  if (a < 1e6) return `${s}${(a / 1e3).toFixed(3)} ms`;
  return `${s}${(a / 1e6).toFixed(3)} s`;
}
const short = id => id.slice(0, 8);
const nodeName = n => n.startsWith('client-') ? 'client ' + short(n.slice(7)) : n;

// ---- controls -------------------------------------------------------------------------------

function show(ok, text) {
  const r = $('#result');
  r.className = ok ? 'ok' : 'err';
  r.textContent = (ok ? '✓ ' : '✗ ') + text;
}

async function post(path, body, label) {
  let res, j = {};
  try {
    res = await fetch(path, {
      method: 'POST', credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body || {}),
    });
    j = await res.json().catch(() => ({}));
  } catch (e) {
    show(false, `${label}: ${e}`);
    return null;
  }
  if (res.ok) {
    show(true, `${label}: ${j.message || 'done'}`);
    return j;
  }
  if (res.status === 401) setOperator(false);
  show(false, `${label}: ${res.status} ${j.error || res.statusText}`);
  return null;
}

function setOperator(on) {
  ui.operator = on;
  $('#login').hidden = on;
  $('#operator').hidden = !on;
}

$('#login').addEventListener('submit', async e => {
  e.preventDefault();
  const token = $('#login-token').value;
  if (await post('/api/login', { token }, 'log in')) {
    $('#login-token').value = '';
    setOperator(true);
  }
});
$('#logout-btn').addEventListener('click', async () => {
  if (await post('/api/logout', {}, 'log out')) setOperator(false);
});
$('#add-form').addEventListener('submit', e => {
  e.preventDefault();
  post('/api/clients', { n: Number($('#add-n').value) || 1 }, 'add clients');
});
$('#elect-btn').addEventListener('click', () => post('/api/election', {}, 'election'));
$('#round-btn').addEventListener('click', () => post('/api/berkeley/round', {}, 'Berkeley round'));

// "+30", "-2.5", "30s" shift the clock; anything else is an RFC 3339 time.
function timeBody(text) {
  const t = text.trim();
  const m = /^([+-]?\d+(?:\.\d+)?)\s*s?$/.exec(t);
  return m ? { shift_s: Number(m[1]) } : { time: t };
}

// ---- clocks ---------------------------------------------------------------------------------

const SVG = 'http://www.w3.org/2000/svg';
function face() {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 100 100');
  svg.setAttribute('class', 'face');
  const add = (tag, attrs) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    svg.appendChild(e);
    return e;
  };
  add('circle', { class: 'rim', cx: 50, cy: 50, r: 46 });
  for (let i = 0; i < 12; i++) {
    const a = i * Math.PI / 6, r1 = i % 3 ? 40 : 36;
    add('line', { class: 'tick', x1: 50 + r1 * Math.sin(a), y1: 50 - r1 * Math.cos(a), x2: 50 + 44 * Math.sin(a), y2: 50 - 44 * Math.cos(a) });
  }
  const hands = {
    h: add('line', { class: 'h', x1: 50, y1: 50, x2: 50, y2: 27 }),
    m: add('line', { class: 'm', x1: 50, y1: 50, x2: 50, y2: 15 }),
    s: add('line', { class: 's', x1: 50, y1: 56, x2: 50, y2: 10 }),
  };
  add('circle', { cx: 50, cy: 50, r: 3, fill: '#e2e8f0' });
  return [svg, hands];
}

function newCard(id) {
  const c = el('div', 'card');
  c.dataset.id = id;
  c.style.setProperty('--c', colour(id));
  const [svg, hands] = face();
  c.append(svg, el('div', 'digital', '--:--:--.---'), el('div', 'date', 'waiting for a report'));
  const who = el('div', 'who');
  who.append(el('b', 'short', short(id)), el('span', 'ip muted'), el('span', 'role'));
  c.append(who);
  const dl = el('dl');
  for (const [label, cls] of [['offset to master', 'off'], ['true error', 'err'], ['bound ε', 'eps'], ['last report', 'age'], ['NTP', 'ntp'], ['state', 'st']]) {
    dl.append(el('dt', '', label), el('dd', cls));
  }
  c.append(dl, el('ul', 'steps'));
  const ctl = el('form', 'ctl');
  const input = el('input', 'shift');
  input.placeholder = '+30 (s) or 2026-12-02T12:00:00Z';
  input.setAttribute('aria-label', 'new time or shift in seconds');
  const set = el('button', 'set', 'Set');
  const rm = el('button', 'rm danger', 'Remove');
  rm.type = 'button';
  ctl.append(input, set, rm);
  ctl.addEventListener('submit', e => {
    e.preventDefault();
    if (!input.value.trim()) return show(false, 'set time: give a shift in seconds (+30) or an RFC 3339 time');
    post(`/api/clients/${id}/time`, timeBody(input.value), `set time of ${short(id)}`)
      .then(ok => { if (ok) input.value = ''; });
  });
  rm.addEventListener('click', () => {
    if (rm.dataset.armed) {
      post(`/api/clients/${id}/remove`, {}, `remove ${short(id)}`);
      return;
    }
    rm.dataset.armed = '1';
    rm.textContent = 'Sure?';
    setTimeout(() => { delete rm.dataset.armed; rm.textContent = 'Remove'; }, 4000);
  });
  c.append(ctl);
  return { el: c, hands, base: null };
}

function renderCards(f) {
  const box = $('#clocks');
  const keep = new Set(f.clients.map(c => c.id));
  for (const [id, card] of ui.cards) {
    if (!keep.has(id)) { card.el.remove(); ui.cards.delete(id); }
  }
  f.clients.forEach((c, i) => {
    let card = ui.cards.get(c.id);
    if (!card) { card = newCard(c.id); ui.cards.set(c.id, card); }
    if (box.children[i] !== card.el) box.insertBefore(card.el, box.children[i] || null);
    const e = card.el;
    e.classList.toggle('master', c.is_master);
    e.classList.toggle('down', c.state !== 'running' && c.state !== 'external');
    card.base = c.time_us === null ? null : c.time_us / 1000;
    $('.ip', e).textContent = c.ip;
    $('.role', e).textContent = c.is_master ? 'master' : (c.state === 'external' ? 'external' : 'follower');
    $('.off', e).textContent = c.is_master ? '0 (master)' : us(c.offset_to_master_us);
    $('.err', e).textContent = c.is_master ? '0 (master)' : us(c.true_error_us);
    $('.eps', e).textContent = c.max_error_us == null ? '–' : `±${us(c.max_error_us).slice(1)}`;
    $('.age', e).textContent = c.last_report_age_ms === null ? '–' : `${(c.last_report_age_ms / 1000).toFixed(1)} s ago`;
    $('.st', e).textContent = c.state;
    $('.ntp', e).textContent = c.stratum == null ? '–'
      : (c.stratum === 16 ? 'stratum 16 (not synced)' : `stratum ${c.stratum}${c.reference ? ' · ' + c.reference : ''}`)
        + (c.ntp ? ', serving' : '');
    const steps = $('.steps', e);
    steps.replaceChildren(...c.clock_events.map(ev => {
      const li = el('li', ev.kind, `${hms(ev.at_us / 1000)} ${ev.text}`);
      return li;
    }));
    if (card.base === null) { $('.digital', e).textContent = '--:--:--.---'; $('.date', e).textContent = 'waiting for a report'; }
  });
}

// Every clock moves on its own between frames: its time in the last frame plus the time since.
function tick() {
  const since = performance.now() - ui.recvAt;
  for (const card of ui.cards.values()) {
    if (card.base === null) continue;
    const t = card.base + since;
    const e = card.el;
    $('.digital', e).textContent = hms(t);
    $('.date', e).textContent = day(t);
    const d = new Date(t);
    const s = d.getUTCSeconds() + d.getUTCMilliseconds() / 1000;
    const m = d.getUTCMinutes() + s / 60;
    const h = (d.getUTCHours() % 12) + m / 60;
    card.hands.s.setAttribute('transform', `rotate(${s * 6} 50 50)`);
    card.hands.m.setAttribute('transform', `rotate(${m * 6} 50 50)`);
    card.hands.h.setAttribute('transform', `rotate(${h * 30} 50 50)`);
  }
  requestAnimationFrame(tick);
}

// ---- servers and elections ------------------------------------------------------------------

function renderServers(f) {
  const body = $('#servers tbody');
  const phases = new Map(f.election.candidates);
  const keep = new Set(f.servers.map(s => String(s.id)));
  for (const [id, tr] of ui.rows) if (!keep.has(id)) { tr.remove(); ui.rows.delete(id); }
  f.servers.forEach((s, i) => {
    const id = String(s.id);
    let tr = ui.rows.get(id);
    if (!tr) {
      tr = el('tr');
      tr.dataset.id = id;
      for (const cls of ['sid', 'addr', 'srole', 'epoch', 'hb', 'phase']) tr.append(el('td', cls));
      const acts = el('td', 'acts');
      for (const [act, label, cls] of [['stop', 'Stop', ''], ['start', 'Start', ''], ['kill', 'Kill', 'danger']]) {
        const b = el('button', cls, label);
        b.dataset.act = act;
        b.addEventListener('click', () => post(`/api/servers/${id}/${act}`, {}, `${act} replica ${id}`));
        acts.append(b);
      }
      tr.append(acts);
      ui.rows.set(id, tr);
    }
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    const lead = f.leader === s.id;
    tr.classList.toggle('leader', lead);
    tr.classList.toggle('down', s.state !== 'running');
    $('.sid', tr).textContent = id;
    $('.addr', tr).textContent = s.ip;
    $('.addr', tr).title = `${s.state}${s.http ? ', API at ' + s.http : ''}`;
    $('.srole', tr).textContent = s.role;
    $('.epoch', tr).textContent = s.epoch ?? '–';
    $('.hb', tr).textContent = s.heartbeat_age_ms === null ? '–' : `${(s.heartbeat_age_ms / 1000).toFixed(1)} s`;
    $('.phase', tr).textContent = (phases.get(s.id) || 'idle').replaceAll('_', ' ');
    // Only what the replica's state allows (the CLI refuses the rest, and so would the API).
    $('[data-act=stop]', tr).hidden = s.state !== 'running';
    $('[data-act=kill]', tr).hidden = s.state !== 'running';
    $('[data-act=start]', tr).hidden = s.state === 'running' || s.state === 'paused';
  });
}

function logItem(atUs, kind, text) {
  const li = el('li');
  const k = el('span', 'k ' + kind, kind);
  li.append(el('time', '', hms(atUs / 1000)), k, el('span', '', text));
  return li;
}

function renderElection(f) {
  $('#electing').hidden = !f.election.in_progress;
  $('#electing').className = 'badge live';
  const steps = f.election.steps.slice().reverse();
  $('#timeline').replaceChildren(...(steps.length ? steps.map(s => logItem(s.at_us, s.what, s.text))
    : [el('li', 'muted', 'no election seen since this dashboard started')]));
  $('#past').replaceChildren(...f.elections.map(p => logItem(p.at_us, `epoch ${p.epoch}`,
    `replica ${p.replica} leads${p.took_ms === null ? '' : ` after ${p.took_ms} ms`}${p.why ? ' — ' + p.why : ''}`)));
}

function renderEvents(f) {
  $('#events').replaceChildren(...f.events.map(e => logItem(e.at_us, e.kind, `${nodeName(e.node)}: ${e.text}`)));
}

function renderHeader(f) {
  $('#cluster').textContent = `cluster ${f.cluster_id} · ${f.runtime} runtime`;
  $('#live').textContent = `${f.live}/${f.clients.length}`;
  $('#algorithm').textContent = f.algorithm;
  $('#master').textContent = f.master ? `${short(f.master.id)} (${f.master.ip})` : 'none';
  $('#leader').textContent = f.leader === null ? 'none' : `replica ${f.leader} (epoch ${f.epoch})`;
  const h = $('#health');
  h.textContent = f.problems.length ? `${f.problems.length} problem${f.problems.length > 1 ? 's' : ''}` : 'healthy';
  h.className = 'badge ' + (f.problems.length ? 'bad' : 'ok');
  const p = $('#problems');
  p.hidden = !f.problems.length;
  p.textContent = f.problems.join(' · ');
}

// ---- chart ----------------------------------------------------------------------------------

const symlog = v => Math.sign(v) * Math.log10(1 + Math.abs(v));
function label(dec) {
  const v = 10 ** Math.abs(dec), s = dec < 0 ? '−' : '+';
  if (dec === 0) return '0';
  return s + (v < 1e3 ? `${v} µs` : v < 1e6 ? `${v / 1e3} ms` : `${v / 1e6} s`);
}

function drawChart() {
  const cv = $('#chart');
  const dpr = window.devicePixelRatio || 1;
  const W = cv.clientWidth, H = cv.clientHeight;
  if (cv.width !== W * dpr) { cv.width = W * dpr; cv.height = H * dpr; }
  const g = cv.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, W, H);
  const S = ui.samples;
  const L = 70, R = 10, T = 8, B = 22;
  g.font = '11px system-ui, sans-serif';
  g.fillStyle = '#8b9bb8';
  if (!S.length) { g.fillText('waiting for samples…', L, H / 2); return; }
  let max = 100;
  for (const s of S) for (const v of Object.values(s.errors)) max = Math.max(max, Math.abs(v));
  const top = Math.ceil(Math.log10(max));
  const y = v => T + (H - T - B) * (1 - (symlog(v) + top) / (2 * top));
  const t1 = S[S.length - 1].t_us, t0 = t1 - ui.windowS * 1e6;
  const x = t => L + (W - L - R) * (t - t0) / (t1 - t0);
  g.strokeStyle = '#1f2a44';
  g.textAlign = 'right';
  g.textBaseline = 'middle';
  const step = top > 6 ? 2 : 1;
  const decades = [0];
  for (let k = top; k > 0; k -= step) decades.push(k, -k);
  for (const d of decades) {
    const v = d === 0 ? 0 : Math.sign(d) * 10 ** Math.abs(d);
    const yy = y(v);
    g.beginPath(); g.moveTo(L, yy); g.lineTo(W - R, yy); g.stroke();
    g.fillText(label(d), L - 6, yy);
  }
  g.textAlign = 'center';
  g.textBaseline = 'top';
  for (let m = 0; m <= ui.windowS; m += 30) g.fillText(m ? `−${m} s` : 'now', x(t1 - m * 1e6), H - B + 6);
  const ids = new Set();
  for (const s of S) for (const id of Object.keys(s.errors)) ids.add(id);
  g.lineWidth = 1.5;
  for (const id of ids) {
    g.strokeStyle = colour(id);
    g.beginPath();
    let pen = false;
    for (const s of S) {
      const v = s.errors[id];
      if (v === undefined) { pen = false; continue; }
      const px = x(s.t_us), py = y(v);
      if (pen) g.lineTo(px, py); else g.moveTo(px, py);
      pen = true;
    }
    g.stroke();
  }
}

function pushSample(s) {
  ui.samples.push(s);
  const oldest = s.t_us - ui.windowS * 1e6;
  while (ui.samples.length && ui.samples[0].t_us < oldest) ui.samples.shift();
}

// ---- the stream -----------------------------------------------------------------------------

function onFrame(f) {
  if (!f) return;
  ui.frame = f;
  ui.recvAt = performance.now();
  renderHeader(f);
  renderCards(f);
  renderServers(f);
  renderElection(f);
  renderEvents(f);
  if (f.sample) pushSample(f.sample);
  drawChart();
}

function connect() {
  const es = new EventSource('/api/stream');
  es.addEventListener('open', () => $('#conn').classList.add('on'));
  es.addEventListener('error', () => $('#conn').classList.remove('on'));
  es.addEventListener('history', e => {
    const h = JSON.parse(e.data);
    ui.windowS = h.window_s;
    ui.samples = h.samples;
    $('#window').textContent = Math.round(h.window_s / 60);
  });
  es.addEventListener('frame', e => onFrame(JSON.parse(e.data)));
}

fetch('/api/session', { credentials: 'same-origin' }).then(r => r.json()).then(s => setOperator(!!s.operator)).catch(() => {});
connect();
requestAnimationFrame(tick);
