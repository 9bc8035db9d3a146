// app.js - the dashboard's pages, routed by the URL's hash: #/jobs, #/jobs/ID, #/datasets, #/models.
// Pages are built with DOM calls and textContent only (API data is never parsed as HTML).

import {api, ApiError, apiKey, enc, epochsAfter, followJob, onUnauthorized, TERMINAL} from './api.js';
import {fmt, heatmap, histogram, LineChart, PALETTE, stats} from './charts.js';

// ---------- DOM helpers ----------

/** h('a', {href: '#/jobs', class: 'x', onclick: fn, dataset: {...}}, 'text', child...) */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') Object.assign(el.style, v);  // CSSOM: the page's CSP forbids style attributes
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  el.append(...nodes(children));
  return el;
}
/** Children as nodes: nested lists flattened, null and false left out, the rest as text. */
const nodes = children => children.flat(Infinity).filter(c => c != null && c !== false)
  .map(c => (c instanceof Node ? c : String(c)));
/** Replace el's children. */
const put = (el, ...children) => el.replaceChildren(...nodes(children));
const $ = id => document.getElementById(id);
const card = (title, ...body) => h('section', {class: 'card'}, h('h3', {}, title), ...body);
const badge = status => h('span', {class: `badge status-${status}`}, status);
const shortId = id => id.slice(0, 8);
const jobLink = id => h('a', {href: `#/jobs/${enc(id)}`, class: 'mono', title: id}, shortId(id));

function ago(iso) {
  if (!iso) return '–';
  const s = (Date.now() - Date.parse(iso)) / 1000;
  if (s < 5) return 'just now';
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}
const when = iso => h('span', {title: iso ? new Date(iso).toLocaleString() : ''}, ago(iso));

function duration(seconds) {
  if (seconds == null) return '–';
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m} min ${Math.round(seconds % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function progressBar(job) {
  const {epoch, total_epochs: total} = job.progress;
  const pct = total ? Math.min(100, (100 * epoch) / total) : 0;
  return h('div', {class: 'progress', title: `${epoch} of ${total} epochs`},
    h('div', {class: `bar status-${job.status}`, style: {width: `${pct.toFixed(1)}%`}}),
    h('span', {}, `${epoch} / ${total}`));
}

/** "dense(16, relu) → dense(3, softmax)" */
function architecture(model) {
  const layers = (model && model.layers) || [];
  return layers.map(l => {
    const args = [l.units ?? l.filters ?? l.rate, l.activation].filter(a => a != null);
    return args.length ? `${l.type}(${args.join(', ')})` : l.type;
  }).join(' → ');
}

function errorBox(err) {
  if (err instanceof ApiError && err.status === 401) {
    return h('div', {class: 'notice'}, 'This server needs an API key. ',
      h('button', {type: 'button', onclick: () => openKeyDialog()}, 'Enter API key'));
  }
  const fields = (err.problem && err.problem.errors) || [];
  return h('div', {class: 'error'}, err.message || String(err),
    fields.length ? h('ul', {}, fields.map(e => h('li', {}, h('code', {}, e.path), ': ', e.message))) : null);
}

// ---------- pages and routing ----------

const view = $('view');
let current = null;

/** Per-page context: timers and streams stop when the page is left. */
function pageContext() {
  const ctl = new AbortController();
  const disposers = [];
  return {
    signal: ctl.signal,
    onDispose: fn => disposers.push(fn),
    dispose() { ctl.abort(); disposers.forEach(fn => fn()); },
    /** Run fn now (its failure is the page's), then every ms, one run at a time; a later
     * failure is logged and retried, except a 401, which stops it (the key dialog opens). */
    async every(fn, ms) {
      let timer = 0;
      disposers.push(() => clearTimeout(timer));
      const tick = async () => {
        if (ctl.signal.aborted) return;
        try {
          if (!document.hidden) await fn();
        } catch (err) {
          if (ctl.signal.aborted || err.status === 401) return;
          console.warn('refresh failed:', err.message);
        }
        if (!ctl.signal.aborted) timer = setTimeout(tick, ms);
      };
      await fn();
      if (!ctl.signal.aborted) timer = setTimeout(tick, ms);
    },
  };
}

const routes = [
  [/^#\/jobs\/([^/?]+)$/, jobPage],
  [/^#\/jobs(?:\?(.*))?$/, jobsPage],
  [/^#\/datasets$/, datasetsPage],
  [/^#\/models$/, modelsPage],
];

function route() {
  if (current) current.dispose();
  const hash = location.hash || '#/jobs';
  const section = hash.split(/[/?]/)[1];
  document.querySelectorAll('[data-nav]').forEach(a => a.classList.toggle('active', a.dataset.nav === section));
  for (const [re, page] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    const ctx = (current = pageContext());
    const root = h('div', {class: 'page', dataset: {page: section}});
    put(view, root);
    // a page is async, so that anything it throws, a malformed %-escape in the link included,
    // ends in its error box rather than in a blank page
    (async () => page(ctx, root, ...m.slice(1).map(p => (p == null ? p : decodeURIComponent(p)))))().catch(err => {
      if (!ctx.signal.aborted) put(root, errorBox(err));
    });
    return;
  }
  put(view, h('div', {class: 'page'}, h('h2', {}, 'Not found'), h('p', {}, h('a', {href: '#/jobs'}, 'Back to jobs'))));
}

// ---------- jobs ----------

const EXAMPLE_JOB = {
  model: {input_shape: [2], layers: [{type: 'dense', units: 8, activation: 'tanh'},
                                      {type: 'dense', units: 1, activation: 'sigmoid'}],
          loss: 'binary_crossentropy'},
  training: {optimizer: {type: 'adam', learning_rate: 0.05}, epochs: 300, batch_size: 4, seed: 0},
  dataset: {features: [[0, 0], [0, 1], [1, 0], [1, 1]], targets: [0, 1, 1, 0]},
};

function metricCell(m, name) {
  if (!m || m[name] == null) return '–';
  const val = m[`val_${name}`];
  return h('span', {}, fmt(m[name]), val != null ? h('small', {class: 'muted'}, ` (val ${fmt(val)})`) : null);
}

async function jobsPage(ctx, root, query) {
  const params = new URLSearchParams(query || '');
  const dataset = params.get('dataset');
  let shown = 50, lastSeen = '';
  const tbody = h('tbody');
  const more = h('button', {type: 'button', class: 'ghost', hidden: true, onclick: () => { shown = Math.min(shown + 50, 200); refresh(); }},
    'Show older jobs');
  const status = h('p', {class: 'muted small'});
  root.append(
    h('div', {class: 'title-row'}, h('h2', {}, 'Jobs'),
      dataset ? h('span', {class: 'chip'}, `dataset ${shortId(dataset)} `, h('a', {href: '#/jobs', title: 'show all jobs'}, '×')) : null),
    submitForm(),
    h('div', {class: 'table-wrap'}, h('table', {id: 'jobs-table'},
      h('thead', {}, h('tr', {}, ['Job', 'Status', 'Progress', 'Loss', 'Accuracy', 'Model', 'Created'].map(c => h('th', {}, c)))),
      tbody)),
    more, status);

  async function refresh() {
    const q = new URLSearchParams({limit: String(shown)});
    if (dataset) q.set('dataset_id', dataset);
    const page = await api(`/v1/jobs?${q}`, {signal: ctx.signal});
    const seen = JSON.stringify(page);
    if (seen === lastSeen) return;  // unchanged: leave the rows (and any text selection) alone
    lastSeen = seen;
    put(tbody, ...page.jobs.map(job => h('tr', {dataset: {jobId: job.id, status: job.status}},
      h('td', {}, jobLink(job.id)),
      h('td', {}, badge(job.status)),
      h('td', {}, progressBar(job)),
      h('td', {}, metricCell(job.metrics, 'loss')),
      h('td', {}, metricCell(job.metrics, 'accuracy') !== '–' ? metricCell(job.metrics, 'accuracy') : metricCell(job.metrics, 'r2')),
      h('td', {class: 'arch'}, architecture(job.model)),
      h('td', {}, when(job.created_at)))));
    if (!page.jobs.length) {
      put(tbody, h('tr', {}, h('td', {colspan: 7, class: 'empty'},
        'No jobs yet. Submit one above, or with POST /v1/jobs (see the API docs).')));
    }
    more.hidden = !page.next || shown >= 200;
    const active = page.jobs.filter(j => !TERMINAL.includes(j.status)).length;
    status.textContent = `${page.jobs.length} job${page.jobs.length === 1 ? '' : 's'}` +
      (active ? ` · ${active} active` : '') + ` · updated ${new Date().toLocaleTimeString()}, refreshes every 2 s`;
  }
  await ctx.every(refresh, 2000);
}

function submitForm() {
  const text = h('textarea', {id: 'submit-spec', rows: 14, spellcheck: 'false'}, JSON.stringify(EXAMPLE_JOB, null, 2));
  const out = h('div');
  const submit = async ev => {
    ev.preventDefault();
    put(out);
    let body;
    try { body = JSON.parse(text.value); } catch (err) { put(out, h('div', {class: 'error'}, `Not valid JSON: ${err.message}`)); return; }
    try {
      const job = await api('/v1/jobs', {method: 'POST', body});
      location.hash = `#/jobs/${enc(job.id)}`;
    } catch (err) { put(out, errorBox(err)); }
  };
  return h('details', {class: 'card submit'}, h('summary', {}, 'Submit a job'),
    h('p', {class: 'muted small'}, 'The body of POST /v1/jobs: a model, training settings and a dataset (inline, or dataset_id). ',
      'This example learns XOR, which needs the hidden layer.'),
    h('form', {onsubmit: submit}, text, h('div', {class: 'row'}, h('button', {type: 'submit'}, 'Submit')), out));
}

// ---------- one job ----------

async function jobPage(ctx, root, jobId) {
  const path = `/v1/jobs/${enc(jobId)}`;
  let job = await api(path, {signal: ctx.signal});
  const history = await epochsAfter(jobId, 0, ctx.signal);
  if (ctx.signal.aborted) return;

  // epochs as columns: xs and one array per metric / per layer, aligned with xs. A value that
  // is missing or null (an overflow) is a null, which the charts draw as a gap: skipping it
  // would shift the rest of its curve onto earlier epochs. The objects have no prototype, so
  // that a layer named "constructor" or "__proto__" is just a name.
  const xs = [], metric = Object.create(null), grads = Object.create(null), wnorms = Object.create(null);
  const add = (cols, entries) => {
    for (const [k, v] of entries) {
      const col = cols[k] ||= new Array(xs.length - 1).fill(null);
      col.push(typeof v === 'number' ? v : null);
    }
    for (const col of Object.values(cols)) if (col.length < xs.length) col.push(null);
  };
  // an epoch's metrics: its numbers (null: an overflow), but not its number or duration
  const metricsOf = rec => Object.entries(rec).filter(([k, v]) =>
    !['epoch', 'duration'].includes(k) && (typeof v === 'number' || v === null));
  const push = rec => {
    xs.push(rec.epoch);
    add(metric, metricsOf(rec));
    add(grads, Object.entries(rec.grad_norms || {}));
    add(wnorms, Object.entries(rec.weight_norms || {}));
  };
  history.forEach(push);

  const head = h('div', {class: 'job-head'});
  const lossBox = h('div', {id: 'chart-loss'});
  const accBox = h('div', {id: 'chart-accuracy'});
  const accTitle = h('h3', {}, 'Accuracy');
  const gradBox = h('div', {id: 'chart-grads'});
  const wnormBox = h('div', {id: 'chart-weight-norms'});
  const flags = h('div', {id: 'grad-flags'});
  const weights = h('div', {id: 'weights', class: 'weights'}, h('p', {class: 'muted'}, 'Weights are stored when training ends.'));
  const predict = h('div', {id: 'predict'});
  root.append(
    h('p', {}, h('a', {href: '#/jobs'}, '← All jobs')),
    head,
    h('div', {class: 'grid2'},
      h('section', {class: 'card'},
        h('div', {class: 'title-row'}, h('h3', {}, 'Loss'),
          h('label', {class: 'toggle small'}, h('input', {type: 'checkbox', id: 'loss-log', onchange: ev => charts.loss.setLogY(ev.target.checked)}), ' log scale')),
        h('p', {class: 'hint'}, 'Training loss (solid) and validation loss (dashed), per epoch. Validation rising while training falls means overfitting.'), lossBox),
      h('section', {class: 'card'}, accTitle, h('p', {class: 'hint'}, 'On the training data (solid) and the held-out validation data (dashed).'), accBox)),
    h('div', {class: 'grid2'},
      card('Gradient norm per layer (log scale)',
        h('p', {class: 'hint'}, 'The average size (L2 norm) of each layer\'s gradient per batch. A layer far below the others is barely learning (vanishing gradients); values that grow by orders of magnitude mean unstable updates (exploding gradients). Measured before clip_norm; frozen layers have none.'),
        gradBox, flags),
      card('Weight norm per layer', h('p', {class: 'hint'}, 'The size (L2 norm) of each layer\'s weights after each epoch.'), wnormBox)),
    card('Weights', weights),
    card('Predict', predict),
    card('Spec', h('pre', {id: 'spec', class: 'spec'}, JSON.stringify({model: job.model, training: job.training,
      dataset_id: job.dataset_id, init_from: job.init_from, freeze: job.freeze}, null, 2))));

  const charts = {
    loss: new LineChart(lossBox),
    acc: new LineChart(accBox),
    grads: new LineChart(gradBox, {logY: true}),
    wnorms: new LineChart(wnormBox),
  };
  ctx.onDispose(() => Object.values(charts).forEach(c => c.resize.disconnect()));
  const pair = (name, label, color) => [
    {name: label, xs, ys: metric[name] || [], color},
    {name: `validation ${label}`, xs, ys: metric[`val_${name}`] || [], color, dashed: true}];
  const layerSeries = by => Object.entries(by).map(([name, ys], i) => ({name, xs, ys, color: PALETTE[i % PALETTE.length]}));
  function redraw() {
    charts.loss.update(pair('loss', 'loss', PALETTE[0]));
    const classes = metric.accuracy || !metric.mae;
    accTitle.textContent = classes ? 'Accuracy' : 'Mean absolute error';
    charts.acc.update(pair(classes ? 'accuracy' : 'mae', classes ? 'accuracy' : 'MAE', PALETTE[2]));
    charts.grads.update(layerSeries(grads));
    charts.wnorms.update(layerSeries(wnorms));
  }

  let mode = '';
  function renderHead() {
    const active = !TERMINAL.includes(job.status);
    const facts = [
      ['Dataset', h('a', {href: `#/jobs?dataset=${enc(job.dataset_id)}`, class: 'mono', title: 'jobs on this dataset'}, shortId(job.dataset_id))],
      ['Created', when(job.created_at)],
      ['Started', when(job.started_at)],
      ['Finished', job.finished_at ? when(job.finished_at) : '–'],
      ['Stop reason', job.stop_reason || '–'],
      ['Attempts', job.attempts],
      ...(job.init_from ? [['Fine-tuned from', jobLink(job.init_from)]] : []),
      ...(job.retry_of ? [['Retry of', jobLink(job.retry_of)]] : []),
    ];
    const m = job.metrics || {};
    const latest = Object.entries(m).filter(([k]) => k !== 'lr').map(([k, v]) => h('span', {class: 'metric'}, h('small', {}, k), fmt(v)));
    put(head,
      h('div', {class: 'title-row'},
        h('h2', {}, 'Job ', h('span', {class: 'mono'}, job.id)), h('span', {id: 'job-status'}, badge(job.status)),
        h('div', {class: 'actions'},
          active && job.status !== 'cancelling' ? h('button', {type: 'button', id: 'cancel', class: 'danger', onclick: cancel}, 'Cancel') : null,
          ['failed', 'cancelled'].includes(job.status) ? h('button', {type: 'button', onclick: retry}, 'Retry as a new job') : null)),
      h('div', {class: 'progress-row'}, progressBar(job),
        h('span', {class: 'muted small'}, active
          ? [job.eta_seconds != null ? `about ${duration(job.eta_seconds)} left · ` : '', {stream: 'live (streaming events)', poll: 'live (polling every second)', paused: 'paused while the tab is hidden'}[mode] || '']
          : `${job.status}${job.stop_reason && job.stop_reason !== job.status ? ` (${job.stop_reason.replace(/_/g, ' ')})` : ''}`)),
      job.error ? h('div', {class: 'error'}, job.error) : null,
      latest.length ? h('div', {class: 'metrics'}, latest) : null,
      h('dl', {class: 'facts'}, facts.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v)))),
      h('p', {class: 'arch'}, h('small', {class: 'muted'}, 'Model: '), `input ${JSON.stringify(job.model.input_shape)} → ${architecture(job.model)} · loss ${job.model.loss}`));
  }
  async function cancel() {
    try { job = await api(`${path}/cancel`, {method: 'POST'}); renderHead(); } catch (err) { head.append(errorBox(err)); }
  }
  async function retry() {
    try { const j = await api(`${path}/retry`, {method: 'POST'}); location.hash = `#/jobs/${enc(j.id)}`; } catch (err) { head.append(errorBox(err)); }
  }

  async function loadFlags() {
    if (!xs.length) return;
    const d = await api(`${path}/diagnostics`, {signal: ctx.signal});
    put(flags, d.flags.length
      ? h('ul', {class: 'flags'}, d.flags.map(f => h('li', {class: `flag ${f.kind}`}, f.message)))
      : h('p', {class: 'ok small'}, '✓ No vanishing, missing or exploding gradients.'));
  }

  let finishedOnce = false;
  function finished() {
    if (finishedOnce) return;
    finishedOnce = true;
    loadFlags().catch(err => put(flags, errorBox(err)));
    loadWeights(ctx, path, weights).catch(err => put(weights, errorBox(err)));
    renderPredict(job, path, predict);
  }

  renderHead();
  redraw();
  renderPredict(job, path, predict);
  if (TERMINAL.includes(job.status)) { finished(); return; }
  loadFlags().catch(() => {});
  let lastFlags = Date.now(), lastHead = 0;
  const recent = [];  // the latest epochs' durations, for the time left
  const handlers = {
    onEpoch(rec) {
      push(rec);
      redraw();
      // progress and the latest metrics: the server sends the job itself only when its status
      // changes, so the head is brought up to date from the epochs, at most once a second
      recent.push(rec.duration || 0);
      if (recent.length > 20) recent.shift();
      const total = (job.progress || {}).total_epochs || rec.epoch;
      job = {...job, progress: {...(job.progress || {}), epoch: rec.epoch},
             eta_seconds: (total - rec.epoch) * recent.reduce((a, b) => a + b, 0) / recent.length,
             metrics: Object.fromEntries(metricsOf(rec))};
      if (Date.now() - lastHead > 1000) { lastHead = Date.now(); renderHead(); }
      if (Date.now() - lastFlags > 3000) { lastFlags = Date.now(); loadFlags().catch(() => {}); }
    },
    onStatus(j) {
      if (j.status === 'deleted') { head.append(h('div', {class: 'error'}, 'This job was deleted.')); return; }
      job = j;
      renderHead();
      if (TERMINAL.includes(job.status)) { stopFollowing(); finished(); }
    },
    onMode(m) { mode = m; renderHead(); },
    onError(err) { head.append(errorBox(err)); },
  };
  // follow only while the tab is visible: an open stream holds one of the API's threads
  let stop = null;
  const stopFollowing = () => { if (stop) stop(); stop = null; };
  const follow = () => {
    if (!stop && !document.hidden && !TERMINAL.includes(job.status)) {
      stop = followJob(jobId, xs.length ? xs[xs.length - 1] : 0, handlers);
    }
  };
  const onVisibility = () => { if (document.hidden) { stopFollowing(); mode = 'paused'; renderHead(); } else follow(); };
  document.addEventListener('visibilitychange', onVisibility);
  ctx.onDispose(() => { document.removeEventListener('visibilitychange', onVisibility); stopFollowing(); });
  follow();
}

async function loadWeights(ctx, path, box) {
  let doc;
  try {
    doc = await api(`${path}/weights`, {signal: ctx.signal});
  } catch (err) {
    if (err.status === 409) { put(box, h('p', {class: 'muted'}, 'This job stored no weights.')); return; }
    throw err;
  }
  const layers = new Map();
  for (const w of doc.weights) (layers.get(w.layer) || layers.set(w.layer, []).get(w.layer)).push(w);
  put(box,
    h('p', {class: 'hint'}, 'Histograms show how the learned values are spread (the dashed line is zero). ',
      'Heatmaps show every value: a kernel has one row per unit of the layer, holding that unit\'s weights from each input; blue is negative, red positive, white near zero.'),
    h('div', {class: 'layer-grid'}, [...layers].map(([layer, params], li) => h('div', {class: 'layer', dataset: {layer}},
      h('h4', {}, layer),
      params.map(p => {
        const flat = Array.isArray(p.values) ? p.values.flat(Infinity) : [p.values];
        const s = stats(flat);
        const cell = h('div', {class: 'param', dataset: {param: p.name}},
          h('div', {class: 'param-head'}, h('b', {}, p.param), ` ${JSON.stringify(p.shape)}`,
            h('small', {class: 'muted'}, ` mean ${fmt(s.mean)} · std ${fmt(s.std)} · min ${fmt(s.min)} · max ${fmt(s.max)}`)));
        if (flat.length >= 2) histogram(cell, flat, {bins: Math.min(40, Math.max(10, Math.round(Math.sqrt(flat.length)))), color: PALETTE[li % PALETTE.length]});
        // one row per unit (the last axis), holding its weights from every input
        const units = p.shape.length ? p.shape[p.shape.length - 1] : 1;
        const rows = Array.from({length: units}, () => new Array(flat.length / units));
        flat.forEach((v, i) => { rows[i % units][Math.floor(i / units)] = v; });
        if (flat.length && flat.length <= 512 * 512) heatmap(cell, p.shape.length > 1 ? rows : [flat]);
        return cell;
      })))));
}

/** "[[1,2],[3,4]]", "{"inputs": [...]}" or CSV lines (an optional header line is skipped). */
export function parseRows(text) {
  const t = text.trim();
  if (!t) throw new Error('paste one or more rows first');
  if (t[0] === '[' || t[0] === '{') {
    let v = JSON.parse(t);
    if (v && !Array.isArray(v)) v = v.inputs || v.instances;
    if (!Array.isArray(v) || !v.length) throw new Error('expected a JSON list of rows');
    return Array.isArray(v[0]) ? v : [v];
  }
  const rows = t.split(/\r?\n/).map(l => l.trim()).filter(Boolean).map(l => l.split(/[,;\t]/).map(c => c.trim()));
  const numeric = c => c !== '' && Number.isFinite(Number(c));
  if (rows.length > 1 && !rows[0].every(numeric)) rows.shift();  // a header
  rows.forEach((r, i) => r.forEach(c => { if (!numeric(c)) throw new Error(`row ${i + 1}: "${c}" is not a number`); }));
  return rows.map(r => r.map(Number));
}

function renderPredict(job, path, box) {
  if (job.status !== 'succeeded') {
    put(box, h('p', {class: 'muted'}, 'Predictions are available once the job has succeeded.'));
    return;
  }
  const width = job.model.input_shape.reduce((a, b) => a * b, 1);
  const example = job.model.input_shape.length === 1
    ? Array.from({length: 2}, () => Array.from({length: width}, () => 0).join(', ')).join('\n') : '';
  const input = h('textarea', {id: 'predict-input', rows: 5, spellcheck: 'false', placeholder: example || '[[...], [...]]'});
  const out = h('div', {id: 'predict-output'});
  const run = async ev => {
    ev.preventDefault();
    put(out);
    let rows;
    try { rows = parseRows(input.value); } catch (err) { put(out, h('div', {class: 'error'}, err.message)); return; }
    try {
      const res = await api(`${path}/predict`, {method: 'POST', body: {inputs: rows}});
      put(out, predictionTable(rows, res));
    } catch (err) { put(out, errorBox(err)); }
  };
  put(box,
    h('p', {class: 'hint'}, `Paste rows of ${JSON.stringify(job.model.input_shape)} features, as CSV (one row per line) or as JSON ([[...], [...]]).`),
    h('form', {id: 'predict-form', onsubmit: run}, input, h('div', {class: 'row'}, h('button', {type: 'submit'}, 'Predict'))), out);
}

/** The probability of what was predicted: a class row's largest; for a binary output (it is
 * thresholded at 0.5) P(1) or 1 - P(1); for several outputs or steps, the weakest of them. */
function confidence(pred, prob) {
  if (!Array.isArray(prob)) return Math.max(prob, 1 - prob);
  const perItem = Array.isArray(pred) || prob.every(Array.isArray);  // outputs or steps
  if (!perItem) return Math.max(...prob);  // one class row
  return Math.min(...prob.map((q, j) => confidence(Array.isArray(pred) ? pred[j] : pred, q)));
}

function predictionTable(rows, res) {
  const probs = res.probabilities;
  return h('table', {class: 'predictions'},
    h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', {}, 'Input'), h('th', {}, 'Prediction'), probs ? h('th', {}, 'Confidence') : null)),
    h('tbody', {}, res.predictions.map((p, i) => {
      const conf = probs ? confidence(p, probs[i]) : null;
      const inputText = JSON.stringify(rows[i]);
      return h('tr', {},
        h('td', {}, i + 1),
        h('td', {class: 'mono small'}, inputText.length > 60 ? `${inputText.slice(0, 57)}…` : inputText),
        h('td', {class: 'prediction'}, typeof p === 'number' ? fmt(p) : JSON.stringify(p)),
        probs ? h('td', {}, typeof conf === 'number' ? `${(100 * conf).toFixed(1)}%` : '–') : null);
    })));
}

// ---------- datasets ----------

async function datasetsPage(ctx, root) {
  const tbody = h('tbody');
  const more = h('button', {type: 'button', class: 'ghost', hidden: true}, 'Load more');
  root.append(h('h2', {}, 'Datasets'),
    h('p', {class: 'muted small'}, 'Upload with POST /v1/datasets (JSON, CSV or NumPy); data sent inline with a job is listed too.'),
    h('div', {class: 'table-wrap'}, h('table', {id: 'datasets-table'},
      h('thead', {}, h('tr', {}, ['Name', 'ID', 'Source', 'Shape', 'Targets', 'Classes', 'Created', ''].map(c => h('th', {}, c)))), tbody)),
    more);
  let cursor = null;
  async function load() {
    const page = await api(`/v1/datasets?limit=50${cursor ? `&next=${enc(cursor)}` : ''}`, {signal: ctx.signal});
    tbody.append(...page.datasets.map(d => h('tr', {dataset: {datasetId: d.id}},
      h('td', {}, d.name || h('span', {class: 'muted'}, '(unnamed)')),
      h('td', {class: 'mono', title: d.id}, shortId(d.id)),
      h('td', {}, d.source),
      h('td', {class: 'mono'}, JSON.stringify(d.shape)),
      h('td', {}, d.target_kind, d.target_shape.length ? h('small', {class: 'muted'}, ` ${JSON.stringify(d.target_shape)}`) : null),
      h('td', {}, classCounts(d.class_counts)),
      h('td', {}, when(d.created_at)),
      h('td', {}, h('a', {href: `#/jobs?dataset=${enc(d.id)}`}, 'jobs')))));
    if (!tbody.children.length) tbody.append(h('tr', {}, h('td', {colspan: 8, class: 'empty'}, 'No datasets yet.')));
    cursor = page.next;
    more.hidden = !cursor;
  }
  more.addEventListener('click', () => load().catch(err => root.append(errorBox(err))));
  await load();
}

function classCounts(counts) {
  if (!counts) return '–';
  const entries = Object.entries(counts);
  const top = Math.max(...entries.map(([, n]) => n), 1);
  return h('div', {class: 'classes'}, entries.slice(0, 12).map(([label, n]) => h('div', {class: 'class-row', title: `${label}: ${n}`},
    h('span', {class: 'class-label'}, label), h('span', {class: 'class-bar', style: {width: `${Math.max(2, 60 * n / top)}px`}}), h('small', {}, n))),
  entries.length > 12 ? h('small', {class: 'muted'}, `… ${entries.length - 12} more`) : null);
}

// ---------- models ----------

async function modelsPage(ctx, root) {
  const list = h('div', {id: 'models'});
  root.append(h('h2', {}, 'Models'),
    h('p', {class: 'muted small'}, 'A model is a name for succeeded jobs: each registration is a new version; aliases (like production) point at a version.'),
    registerForm(), list);
  const page = await api('/v1/models?limit=200', {signal: ctx.signal});
  if (!page.models.length) { list.append(h('p', {class: 'empty'}, 'No models yet. Register a succeeded job above or with POST /v1/models.')); return; }
  const details = await Promise.all(page.models.map(m => api(`/v1/models/${enc(m.name)}`, {signal: ctx.signal})));
  list.append(...details.map(m => h('section', {class: 'card model', dataset: {model: m.name}},
    h('div', {class: 'title-row'}, h('h3', {}, m.name),
      Object.entries(m.aliases).map(([a, v]) => h('span', {class: 'chip'}, `${a} → v${v}`)),
      h('small', {class: 'muted'}, 'created ', when(m.created_at))),
    h('table', {class: 'versions'},
      h('thead', {}, h('tr', {}, ['Version', 'Job', 'Status', 'Loss', 'Accuracy', 'Aliases', 'Registered'].map(c => h('th', {}, c)))),
      h('tbody', {}, m.versions.slice().reverse().map(v => h('tr', {},
        h('td', {}, `v${v.version}`), h('td', {}, jobLink(v.job_id)), h('td', {}, badge(v.job_status)),
        h('td', {}, metricCell(v.metrics, 'loss')), h('td', {}, metricCell(v.metrics, 'accuracy')),
        h('td', {}, v.aliases.map(a => h('span', {class: 'chip'}, a))), h('td', {}, when(v.created_at)))))))));
}

function registerForm() {
  const name = h('input', {name: 'name', placeholder: 'model name, e.g. iris-classifier', required: true});
  const job = h('input', {name: 'job_id', placeholder: 'id of a succeeded job', required: true, class: 'mono'});
  const out = h('div');
  const submit = async ev => {
    ev.preventDefault();
    try {
      await api('/v1/models', {method: 'POST', body: {name: name.value.trim(), job_id: job.value.trim()}});
      route();
    } catch (err) { put(out, errorBox(err)); }
  };
  return h('details', {class: 'card submit'}, h('summary', {}, 'Register a job as a model version'),
    h('form', {class: 'inline', onsubmit: submit}, name, job, h('button', {type: 'submit'}, 'Register')), out);
}

// ---------- API key ----------

const dialog = $('key-dialog');

function openKeyDialog(reason) {
  $('key-reason').textContent = reason || 'This server needs an API key. It is kept in this browser only (localStorage) and sent as "Authorization: Bearer …" with every request.';
  $('key-error').hidden = true;
  $('key-input').value = '';
  $('key-forget').hidden = !apiKey.get();
  if (!dialog.open) dialog.showModal();
  $('key-input').focus();
}

function renderKeyButton() {
  $('key-button').textContent = apiKey.get() ? 'API key ✓' : 'API key';
}

onUnauthorized(() => {
  if (dialog.open) return;
  openKeyDialog(apiKey.get() ? 'The saved API key was refused. Enter a valid key.' : undefined);
});

$('key-form').addEventListener('submit', async ev => {
  ev.preventDefault();
  const key = $('key-input').value.trim();
  if (!key) return;
  const old = apiKey.get();
  apiKey.set(key);
  try {
    await api('/v1/jobs?limit=1');
  } catch (err) {
    if (err.status === 401) {
      if (old) apiKey.set(old); else apiKey.forget();
      $('key-error').textContent = 'That key was refused.';
      $('key-error').hidden = false;
      return;
    }
  }
  dialog.close();
  renderKeyButton();
  route();
});
$('key-forget').addEventListener('click', () => { apiKey.forget(); dialog.close(); renderKeyButton(); route(); });
$('key-cancel').addEventListener('click', () => dialog.close());
$('key-button').addEventListener('click', () => openKeyDialog(apiKey.get() ? 'A key is saved in this browser. Enter another to replace it.' : 'Enter an API key if this server asks for one.'));

window.addEventListener('hashchange', route);
renderKeyButton();
route();
