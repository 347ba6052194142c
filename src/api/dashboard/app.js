// The gapmeter dashboard: plain JavaScript over the public API (/v1), no build step. The API key
// lives in sessionStorage only: closing the tab signs out.
'use strict';

const KEY = 'gapmeter-key';
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'dead']);
const METRICS = ['fid', 'kid', 'is', 'mmd', 'cmmd', 'prdc', 'style'];
const SYMMETRIC = ['fid', 'kid', 'mmd', 'cmmd', 'style'];
const FILES_PER_REQUEST = 200;

const key = () => sessionStorage.getItem(KEY);
const main = () => document.getElementById('main');

// h('div', {class: 'x', onclick: f}, child, ...): a DOM element.
function h(tag, attrs, ...children) {
  const svg = ['svg', 'rect', 'text', 'title', 'g'].includes(tag);
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function fmt(v, digits = 6) {
  if (typeof v !== 'number') return v === undefined || v === null ? '' : String(v);
  if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6)) return v.toExponential(3);
  return Number(v.toPrecision(digits)).toString();
}

class ApiError extends Error {
  constructor(problem, status) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.problem = problem;
    this.status = status;
  }
}

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${key()}`, ...(opts.headers || {}) };
  let body = opts.body;
  if (opts.json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(opts.json);
  }
  const r = await fetch(path, { method: opts.method || 'GET', headers, body, signal: opts.signal });
  if (!r.ok) {
    let p;
    try { p = await r.json(); } catch { p = { title: r.statusText }; }
    if (r.status === 401 && !opts.noSignOut) { signOut(); }
    throw new ApiError(p, r.status);
  }
  if (opts.raw) return r;
  return r.status === 204 ? null : r.json();
}

async function allDatasets() {
  const out = [];
  let cursor = null;
  do {
    const page = await api(`/v1/datasets?limit=500${cursor ? `&cursor=${cursor}` : ''}`);
    out.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor);
  return out;
}

function problemBox(e) {
  return h('p', { class: 'error', role: 'alert' }, e.problem ? `${e.problem.title || 'Error'}: ${e.message}` : String(e.message || e));
}

// --- sign in -------------------------------------------------------------------------------

function signOut() {
  sessionStorage.removeItem(KEY);
  location.hash = '#/';
  render();
}

function signIn() {
  document.getElementById('nav').hidden = true;
  const input = h('input', { id: 'api-key', type: 'password', placeholder: 'gm_…', size: 48, autocomplete: 'off', required: true });
  const msg = h('div');
  const form = h('form', {
    class: 'row',
    onsubmit: async (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, input.value.trim());
      try {
        await api('/v1/datasets?limit=1', { noSignOut: true });
        location.hash = '#/datasets';
        render();
      } catch (e) {
        sessionStorage.removeItem(KEY);
        msg.replaceChildren(problemBox(e));
      }
    },
  }, h('label', {}, 'API key', input), h('button', { type: 'submit', id: 'sign-in' }, 'Sign in'));
  main().replaceChildren(h('section', {},
    h('h1', {}, 'Sign in'),
    h('p', { class: 'muted' }, 'Paste a team API key. It is kept in this tab only (sessionStorage) and sent as a bearer token.'),
    form, msg));
  input.focus();
}

// --- datasets ------------------------------------------------------------------------------

async function datasetsView() {
  const list = h('div', {}, 'Loading…');
  const create = h('form', {
    class: 'row',
    onsubmit: async (ev) => {
      ev.preventDefault();
      const name = ev.target.elements.name.value.trim();
      try {
        const ds = await api('/v1/datasets', { method: 'POST', json: { name } });
        ev.target.reset();
        await refresh(ds.id);
      } catch (e) { list.prepend(problemBox(e)); }
    },
  }, h('label', {}, 'New dataset', h('input', { name: 'name', id: 'new-dataset', required: true, maxlength: 200 })),
  h('button', { type: 'submit', id: 'create-dataset' }, 'Create'));

  async function refresh(selected) {
    const items = await allDatasets();
    list.replaceChildren(items.length === 0 ? h('p', { class: 'muted' }, 'No datasets yet.') : h('table', { id: 'datasets' },
      h('thead', {}, h('tr', {}, ['Name', 'Kind', 'Status', 'Files', 'Unique', 'Content hash', ''].map((t) => h('th', {}, t)))),
      h('tbody', {}, items.map((d) => h('tr', { 'data-name': d.name },
        h('td', {}, d.name), h('td', {}, d.kind), h('td', {}, d.status + (d.error ? ` (${d.error})` : '')),
        h('td', { class: 'num' }, d.image_count), h('td', { class: 'num' }, d.unique_images),
        h('td', { class: 'mono' }, (d.content_hash || '').slice(0, 24)),
        h('td', {}, h('button', {
          class: 'danger', type: 'button',
          onclick: async () => {
            if (!confirm(`Delete dataset "${d.name}"?`)) return;
            try { await api(`/v1/datasets/${d.id}`, { method: 'DELETE' }); await refresh(); } catch (e) { list.prepend(problemBox(e)); }
          },
        }, 'Delete')))))));
    upload.setDatasets(items.filter((d) => d.kind === 'images'), selected);
  }
  const upload = uploader(() => refresh(upload.selected()));
  main().replaceChildren(
    h('h1', {}, 'Datasets'),
    h('section', {}, create, h('div', { class: 'spaced' }, list)),
    h('section', {}, h('h2', {}, 'Upload images'), upload.el));
  await refresh();
}

// The upload panel; `setDatasets` refreshes its choice of datasets without losing the outcome
// of the last upload.
function uploader(afterUpload) {
  const select = h('select', { id: 'upload-dataset' });
  const empty = h('p', { class: 'muted' }, 'Create a dataset first.');
  const files = h('input', { id: 'upload-files', type: 'file', multiple: true, accept: 'image/*,.tar,.gz,.tgz,.zip' });
  const folder = h('input', { id: 'upload-folder', type: 'file', webkitdirectory: true, multiple: true });
  const bar = h('progress', { id: 'upload-progress', max: 1, value: 0, hidden: true });
  const result = h('div', { id: 'upload-result' });
  let dropped = [];
  const drop = h('div', {
    class: 'drop',
    ondragover: (ev) => { ev.preventDefault(); drop.classList.add('over'); },
    ondragleave: () => drop.classList.remove('over'),
    ondrop: (ev) => {
      ev.preventDefault();
      drop.classList.remove('over');
      dropped = [...ev.dataTransfer.files];
      drop.textContent = `${dropped.length} file(s) ready`;
    },
  }, 'Drop images or archives here');
  const go = h('button', {
    type: 'button', id: 'upload',
    onclick: async () => {
      const chosen = [...files.files, ...folder.files, ...dropped];
      if (chosen.length === 0) { result.replaceChildren(h('p', { class: 'error' }, 'Choose files first.')); return; }
      go.disabled = true;
      bar.hidden = false;
      const outcomes = [];
      try {
        const total = chosen.reduce((s, f) => s + f.size, 0) || 1;
        let sent = 0;
        for (let i = 0; i < chosen.length; i += FILES_PER_REQUEST) {
          const batch = chosen.slice(i, i + FILES_PER_REQUEST);
          const size = batch.reduce((s, f) => s + f.size, 0);
          const v = await uploadBatch(select.value, batch, (frac) => { bar.value = (sent + frac * size) / total; });
          sent += size;
          outcomes.push(...v.files);
        }
        bar.value = 1;
        const count = (o) => outcomes.filter((f) => f.outcome === o).length;
        result.replaceChildren(
          h('p', { class: 'ok', id: 'upload-summary' }, `${count('accepted')} accepted, ${count('duplicate')} duplicates, ${count('unchanged')} unchanged, ${count('rejected')} rejected`),
          h('table', { id: 'upload-outcomes' }, h('thead', {}, h('tr', {}, h('th', {}, 'File'), h('th', {}, 'Outcome'), h('th', {}, 'Reason'))),
            h('tbody', {}, outcomes.map((f) => h('tr', {}, h('td', { class: 'mono' }, f.name), h('td', { class: f.outcome === 'rejected' ? 'error' : '' }, f.outcome), h('td', {}, f.reason || ''))))));
        files.value = '';
        folder.value = '';
        dropped = [];
        drop.textContent = 'Drop images or archives here';
        await afterUpload();
      } catch (e) {
        result.replaceChildren(problemBox(e));
      } finally {
        go.disabled = false;
      }
    },
  }, 'Upload');
  const panel = h('div', { hidden: true },
    h('div', { class: 'row' }, h('label', {}, 'Into', select), h('label', {}, 'Files', files), h('label', {}, 'Or a folder', folder), go),
    h('div', { class: 'spaced' }, drop), bar, result);
  return {
    el: h('div', {}, empty, panel),
    selected: () => select.value,
    setDatasets(datasets, selected) {
      const keep = selected || select.value;
      select.replaceChildren(...datasets.map((d) => h('option', { value: d.id, selected: d.id === keep }, d.name)));
      empty.hidden = datasets.length > 0;
      panel.hidden = datasets.length === 0;
    },
  };
}

// A folder's files keep their paths below the chosen folder, as `gapmeter client upload` sends them.
function memberPath(f) {
  const rel = f.webkitRelativePath || '';
  return rel.includes('/') ? rel.slice(rel.indexOf('/') + 1) : f.name;
}

function uploadBatch(datasetId, files, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const f of files) form.append('file', f, memberPath(f));
    const x = new XMLHttpRequest();
    x.open('POST', `/v1/datasets/${datasetId}/images`);
    x.setRequestHeader('Authorization', `Bearer ${key()}`);
    x.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    x.onload = () => {
      let v = null;
      try { v = JSON.parse(x.responseText); } catch { /* not JSON */ }
      if (x.status >= 200 && x.status < 300) resolve(v);
      else reject(new ApiError(v || { title: x.statusText }, x.status));
    };
    x.onerror = () => reject(new Error('the upload failed (network)'));
    x.send(form);
  });
}

// --- jobs ----------------------------------------------------------------------------------

async function jobsView() {
  const [datasets, extractors, jobs] = await Promise.all([allDatasets(), api('/v1/extractors'), api('/v1/jobs?limit=30')]);
  const ready = datasets.filter((d) => d.status === 'ready');
  const msg = h('div');
  const extractorSelect = (id) => h('select', { id, name: 'extractor' },
    h('option', { value: '' }, '(service default)'),
    extractors.map((x) => h('option', { value: x.id }, x.id + (x.trained ? '' : ' (untrained)'))));
  const metricBoxes = (prefix, names, checked) => h('div', { class: 'row' }, names.map((m) => h('label', { class: 'check' },
    h('input', { type: 'checkbox', name: 'metric', value: m, id: `${prefix}-${m}`, checked: checked.includes(m) }), m.toUpperCase())));
  const dsOptions = () => ready.map((d) => h('option', { value: d.id }, `${d.name}${d.kind === 'statistics' ? ' (statistics)' : ''}`));

  async function submit(path, body) {
    try {
      const job = await api(path, { method: 'POST', json: body });
      location.hash = `#/job/${job.id}`;
    } catch (e) { msg.replaceChildren(problemBox(e)); }
  }
  const metricsOf = (form) => [...form.querySelectorAll('input[name=metric]:checked')].map((i) => i.value);
  const score = h('form', {
    id: 'score-form',
    onsubmit: (ev) => {
      ev.preventDefault();
      const f = ev.target.elements;
      const body = { source: f.source.value, target: f.target.value, metrics: metricsOf(ev.target) };
      if (f.extractor.value) body.extractor = f.extractor.value;
      if (f.top_k.value) body.top_k = Number(f.top_k.value);
      if (f.bootstrap.value) body.bootstrap = { resamples: Number(f.bootstrap.value) };
      submit('/v1/jobs', body);
    },
  },
  h('div', { class: 'row' },
    h('label', {}, 'Source', h('select', { id: 'score-source', name: 'source' }, dsOptions())),
    h('label', {}, 'Target', h('select', { id: 'score-target', name: 'target' }, dsOptions())),
    h('label', {}, 'Extractor', extractorSelect('score-extractor')),
    h('label', {}, 'Most out-of-domain images', h('input', { name: 'top_k', type: 'number', min: 1, max: 1000, value: 8, id: 'score-top-k' })),
    h('label', {}, 'Bootstrap resamples', h('input', { name: 'bootstrap', type: 'number', min: 2, max: 10000, placeholder: 'none', id: 'score-bootstrap' }))),
  h('div', { class: 'spaced' }, metricBoxes('score', METRICS, ['fid', 'kid'])),
  h('button', { type: 'submit', id: 'start-score' }, 'Start score'));
  const matrix = h('form', {
    id: 'matrix-form',
    onsubmit: (ev) => {
      ev.preventDefault();
      const chosen = [...ev.target.querySelectorAll('input[name=dataset]:checked')].map((i) => i.value);
      const body = { datasets: chosen, metrics: metricsOf(ev.target) };
      if (ev.target.elements.extractor.value) body.extractor = ev.target.elements.extractor.value;
      submit('/v1/matrix', body);
    },
  },
  h('div', { class: 'row' }, ready.map((d) => h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'dataset', value: d.id, 'data-name': d.name }), d.name))),
  h('div', { class: 'row spaced' }, h('label', {}, 'Extractor', extractorSelect('matrix-extractor')), metricBoxes('matrix', SYMMETRIC, ['fid'])),
  h('button', { type: 'submit', id: 'start-matrix' }, 'Start matrix'));
  const names = new Map(datasets.map((d) => [d.id, d.name]));
  main().replaceChildren(
    h('h1', {}, 'Jobs'), msg,
    h('section', {}, h('h2', {}, 'Score a source against a target'), score),
    h('section', {}, h('h2', {}, 'Gap matrix of several datasets'), matrix),
    h('section', {}, h('h2', {}, 'Recent jobs'), h('table', { id: 'jobs' },
      h('thead', {}, h('tr', {}, ['Job', 'Kind', 'Datasets', 'Status', 'Created'].map((t) => h('th', {}, t)))),
      h('tbody', {}, jobs.items.map((j) => h('tr', {},
        h('td', {}, h('a', { href: `#/job/${j.id}`, class: 'mono' }, j.id.slice(0, 8))),
        h('td', {}, j.kind), h('td', {}, j.datasets.map((d) => names.get(d) || d.slice(0, 8)).join(', ')),
        h('td', { class: `status-${j.status}` }, j.status), h('td', {}, new Date(j.created_at).toLocaleString())))))));
}

// Follows a job's Server-Sent Events (fetch, since EventSource cannot send the key) until its
// `end` event; returns the finished job, or null when the stream ended early.
async function followEvents(id, onProgress, signal) {
  const r = await api(`/v1/jobs/${id}/events`, { raw: true, headers: { Accept: 'text/event-stream' }, signal });
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null;
    buf += value.replace(/\r\n/g, '\n');
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = 'message';
      let data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data += line.slice(5).trim();
      }
      let parsed = null;
      try { parsed = JSON.parse(data); } catch { /* not JSON */ }
      if (event === 'end') return parsed;
      if (parsed && parsed.data && typeof parsed.data.done === 'number') onProgress(parsed.data);
    }
  }
}

async function jobView(id) {
  const status = h('span', { id: 'job-status' });
  const phase = h('span', { class: 'muted', id: 'job-phase' });
  const bar = h('progress', { id: 'job-progress', max: 1, value: 0 });
  const cancel = h('button', {
    class: 'danger', type: 'button', id: 'cancel-job',
    onclick: async () => { try { await api(`/v1/jobs/${id}`, { method: 'DELETE' }); } catch (e) { body.prepend(problemBox(e)); } },
  }, 'Cancel');
  const body = h('div', { id: 'job-body' });
  main().replaceChildren(h('h1', {}, 'Job ', h('span', { class: 'mono' }, id.slice(0, 8)), ' ', status),
    h('section', {}, h('div', { class: 'row' }, phase, cancel), bar), body);
  const show = (job) => {
    status.textContent = job.status;
    status.className = `status-${job.status}`;
    const p = job.progress || {};
    phase.textContent = `${p.phase || ''} ${p.total ? `${p.done}/${p.total}` : ''}`;
    bar.value = p.total ? p.done / p.total : (TERMINAL.has(job.status) ? 1 : 0);
    cancel.hidden = TERMINAL.has(job.status);
  };
  const controller = new AbortController();
  window.addEventListener('hashchange', () => controller.abort(), { once: true });
  let job = await api(`/v1/jobs/${id}`);
  show(job);
  while (!TERMINAL.has(job.status)) {
    let ended = null;
    try {
      ended = await followEvents(id, (p) => {
        phase.textContent = `${p.phase || ''} ${p.total ? `${p.done}/${p.total}` : ''}`;
        bar.value = p.total ? p.done / p.total : 0;
      }, controller.signal);
    } catch (e) {
      if (controller.signal.aborted) return;
    }
    job = ended && ended.status ? ended : await api(`/v1/jobs/${id}`);
    show(job);
    if (!TERMINAL.has(job.status)) await new Promise((r) => setTimeout(r, 1000));
  }
  if (job.status !== 'succeeded') {
    body.replaceChildren(h('section', {}, h('h2', {}, 'Failed'), problemBox({ problem: job.error || {}, message: (job.error || {}).detail || job.status })));
    return;
  }
  const names = new Map((await allDatasets()).map((d) => [d.id, d.name]));
  body.replaceChildren(...(job.kind === 'matrix' ? matrixResult(job, names) : scoreResult(job, names)));
}

// --- results -------------------------------------------------------------------------------

function metricRows(metrics) {
  const rows = [];
  for (const [name, m] of Object.entries(metrics)) {
    const shown = m.value !== undefined ? fmt(m.value) : m.mean !== undefined ? `${fmt(m.mean)} ± ${fmt(m.std)}` : '';
    const ci = m.ci ? `[${fmt(m.ci.low)}, ${fmt(m.ci.high)}] (${Math.round(m.ci.level * 100)} %, ${m.ci.method})` : '';
    const details = Object.entries(m).filter(([k]) => !['value', 'mean', 'std', 'ci', 'fit'].includes(k))
      .map(([k, v]) => `${k} = ${typeof v === 'object' ? JSON.stringify(v) : fmt(v)}`).join('; ');
    rows.push(h('tr', { 'data-metric': name }, h('td', {}, name.toUpperCase()), h('td', { class: 'num' }, shown), h('td', {}, ci), h('td', { class: 'muted' }, details)));
  }
  return h('table', { id: 'metrics' }, h('thead', {}, h('tr', {}, ['Metric', 'Value', 'Interval', 'Details'].map((t) => h('th', {}, t)))), h('tbody', {}, rows));
}

function datasetIdOf(set) { return (set.path || '').split('/').pop(); }

function provenance(result, names) {
  const x = result.extractor || {};
  const sets = result.sets || [result.source, result.target].filter(Boolean);
  return h('section', { id: 'provenance' }, h('h2', {}, 'Provenance'),
    h('table', {}, h('tbody', {},
      h('tr', {}, h('th', {}, 'Extractor'), h('td', {}, `${x.id || ''} ${x.trained === false ? '(untrained)' : ''}`, h('div', { class: 'muted mono' }, `weights ${(x.sha256 || x.weights_sha256 || '').slice(0, 16)} · resize ${x.resize || ''} · d = ${x.dim || ''}${x.precision ? ` · ${x.precision}` : ''}`))),
      sets.map((s, i) => h('tr', {}, h('th', {}, result.sets ? `Set ${i + 1}` : (i === 0 ? 'Source' : 'Target')),
        h('td', {}, names.get(datasetIdOf(s)) || s.path, ` · ${s.kind} · ${s.count ?? 'n/a'} samples`, (s.skipped || []).length ? ` · ${s.skipped.length} skipped` : '',
          h('div', { class: 'muted mono' }, s.content_hash)))),
      h('tr', {}, h('th', {}, 'Software'), h('td', {}, JSON.stringify(result.software || {}))))),
    h('details', {}, h('summary', {}, 'Parameters'), h('pre', {}, JSON.stringify(result.parameters || {}, null, 2))));
}

function warnings(result) {
  const w = result.warnings || [];
  return w.length ? h('section', { id: 'warnings' }, h('h2', {}, 'Warnings'), h('ul', {}, w.map((t) => h('li', {}, t)))) : null;
}

function scoreResult(job, names) {
  const r = job.result;
  const m = r.metrics || {};
  // The style gap (distances between early-layer feature covariances) beside the content gap.
  const style = Object.entries(m).filter(([name]) => name.startsWith('style'));
  const headline = (m.fid || m.kid) ? h('div', { class: 'cards', id: 'gaps' },
    h('div', { class: 'card', id: 'content-gap' }, h('div', { class: 'muted' }, m.fid ? 'Content gap (FID)' : 'Content gap (KID)'),
      h('div', { class: 'big' }, m.fid ? fmt(m.fid.value) : fmt(m.kid.mean))),
    style.length ? h('div', { class: 'card', id: 'style-gap' },
      h('div', { class: 'muted' }, `Style gap (${style[0][0].replace(/^style_?/, '').replace(/_/g, ' ') || 'style'})`),
      h('div', { class: 'big' }, fmt(style[0][1].value ?? style[0][1].mean)),
      style.slice(1).map(([name, v]) => h('div', { class: 'muted' }, `${name.replace(/^style_?/, '').replace(/_/g, ' ')}: ${fmt(v.value ?? v.mean)}`)))
      : h('div', { class: 'card muted', id: 'style-gap' }, 'Style gap: add the STYLE metric to see it beside the content gap.')) : null;
  const sourceId = (job.datasets || [])[0];
  return [
    h('section', {}, h('h2', {}, `${names.get(datasetIdOf(r.source)) || 'source'} → ${names.get(datasetIdOf(r.target)) || 'target'}`), headline, h('div', { class: 'spaced' }, metricRows(m))),
    warnings(r),
    r.per_image ? gallery(r.per_image, sourceId) : null,
    provenance(r, names),
  ];
}

function gallery(perImage, datasetId) {
  const grid = h('div', { class: 'gallery', id: 'gallery' });
  for (const img of perImage.images) {
    const el = h('img', { alt: img.path, 'data-path': img.path });
    grid.append(h('figure', {}, el, h('figcaption', {}, h('div', { class: 'mono' }, img.path),
      `witness ${fmt(img.witness, 4)} · k-NN ${fmt(img.knn_distance, 4)}${img.style_distance !== undefined ? ` · style ${fmt(img.style_distance, 4)}` : ''}`)));
    // Thumbnails need the key, so they are fetched and shown as object URLs.
    api(`/v1/datasets/${datasetId}/thumbnail?size=256&path=${encodeURIComponent(img.path)}`, { raw: true })
      .then((r) => r.blob()).then((b) => { el.src = URL.createObjectURL(b); })
      .catch(() => { el.alt = `${img.path} (no thumbnail)`; });
  }
  return h('section', {}, h('h2', {}, `Most out-of-domain source images (ranked by ${perImage.ranked_by})`), grid);
}

function heatmap(metric, values, labels) {
  const n = values.length;
  const cell = 64;
  const pad = 120;
  const off = values.flatMap((row, i) => row.filter((_, j) => i !== j));
  const max = Math.max(...off.map(Math.abs), 1e-12);
  const svg = h('svg', { class: 'heatmap', 'data-metric': metric, width: pad + n * cell, height: pad + n * cell, viewBox: `0 0 ${pad + n * cell} ${pad + n * cell}` });
  labels.forEach((name, i) => {
    svg.append(h('text', { x: pad - 6, y: pad + i * cell + cell / 2 + 4, 'text-anchor': 'end' }, name));
    svg.append(h('text', { x: pad + i * cell + cell / 2, y: pad - 8, 'text-anchor': 'middle' }, name));
  });
  values.forEach((row, i) => row.forEach((v, j) => {
    const t = Math.min(1, Math.abs(v) / max);
    const fill = `rgb(${Math.round(255 - 200 * t)}, ${Math.round(255 - 140 * t)}, ${Math.round(255 - 30 * t)})`;
    svg.append(h('g', { class: 'cell', 'data-row': i, 'data-col': j, 'data-value': v },
      h('title', {}, `${labels[i]} ↔ ${labels[j]}: ${metric.toUpperCase()} ${fmt(v)}`),
      h('rect', { x: pad + j * cell, y: pad + i * cell, width: cell - 2, height: cell - 2, fill }),
      h('text', { x: pad + j * cell + cell / 2, y: pad + i * cell + cell / 2 + 4, 'text-anchor': 'middle' }, fmt(v, 3))));
  }));
  return svg;
}

function matrixResult(job, names) {
  const r = job.result;
  const labels = r.sets.map((s) => names.get(datasetIdOf(s)) || datasetIdOf(s).slice(0, 8));
  return [
    h('section', { id: 'heatmaps' }, h('h2', {}, 'Gap matrix'), Object.entries(r.metrics).map(([metric, values]) => h('div', {}, h('h3', {}, metric.toUpperCase()), heatmap(metric, values, labels)))),
    warnings(r),
    provenance(r, names),
  ];
}

// --- routing -------------------------------------------------------------------------------

async function render() {
  if (!key()) { signIn(); return; }
  document.getElementById('nav').hidden = false;
  const [, view, id] = (location.hash || '#/datasets').split('/');
  try {
    if (view === 'jobs') await jobsView();
    else if (view === 'job' && id) await jobView(id);
    else await datasetsView();
  } catch (e) {
    main().replaceChildren(problemBox(e));
  }
}

window.addEventListener('hashchange', render);
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('sign-out').addEventListener('click', signOut);
  render();
});
