// app.js - the dashboard's pages, routed by the URL's hash: #/jobs, #/jobs/ID, #/datasets, #/models.
// Pages are built with DOM calls and textContent only (API data is never parsed as HTML).

import {api, ApiError, apiKey, enc, epochCurve, followJob, onUnauthorized, TERMINAL} from './api.js';
import {fmt, heatmap, histogram, layerStyle, LineChart, PALETTE, stats} from './charts.js';

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

function metricCell(m, name, prefix = '') {
  if (!m || m[name] == null) return '–';
  const val = m[`val_${name}`];
  return h('span', {}, prefix, fmt(m[name]), val != null ? h('small', {class: 'muted'}, ` (val ${prefix}${fmt(val)})`) : null);
}

/** The "Accuracy / R²" column: a classifier's accuracy, or a regression's R² marked as such. */
const SCORE_HEADER = 'Accuracy / R²';
function scoreCell(m) {
  if (m && m.accuracy != null) return metricCell(m, 'accuracy');
  if (m && m.r2 != null) return h('span', {title: 'coefficient of determination (regression)'}, metricCell(m, 'r2', 'R² '));
  return '–';
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
      h('thead', {}, h('tr', {}, ['Job', 'Status', 'Progress', 'Loss', SCORE_HEADER, 'Model', 'Created'].map(c => h('th', {}, c)))),
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
      h('td', {class: 'num'}, metricCell(job.metrics, 'loss')),
      h('td', {class: 'num score'}, scoreCell(job.metrics)),
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

const REGRESSION_LOSSES = ['mse', 'mean_squared_error', 'mae', 'mean_absolute_error', 'huber'];
const isRegression = model => REGRESSION_LOSSES.includes(String((model && model.loss) || '').toLowerCase());
const setText = (el, text) => { if (el.textContent !== text) el.textContent = text; };

/** What a chart says while it has no epoch to draw, by the job's status. */
function emptyText(job) {
  switch (job.status) {
    case 'queued': return 'Waiting for the job to start…';
    case 'failed': return 'No epochs recorded: the job failed before its first epoch ended — see the error above';
    case 'cancelled': return 'No epochs recorded: the job was cancelled before its first epoch ended';
    case 'cancelling': return 'Cancelling…';
    case 'succeeded': return 'No epochs recorded';
    default: return 'Waiting for the first epoch…';
  }
}

const MODES = {
  stream: 'live (streaming events)',
  poll: 'live (polling every second)',
  paused: 'paused while the tab is hidden',
  reconnecting: 'reconnecting… (the API does not answer; retrying)',
  stopped: 'not following live updates (see the error below)',
};

const CURVE_POINTS = 2000;  // a chart is at most about as many pixels wide

async function jobPage(ctx, root, jobId) {
  const path = `/v1/jobs/${enc(jobId)}`;
  let job = await api(path, {signal: ctx.signal});
  // the curve so far in at most CURVE_POINTS epochs; live epochs are then added one by one
  const curve = await epochCurve(jobId, CURVE_POINTS, ctx.signal);
  const history = curve.epochs;
  if (ctx.signal.aborted) return;

  // epochs as columns: xs and one array per metric / per layer, aligned with xs. A value that
  // is missing or null (an overflow) is a null, which the charts draw as a gap: skipping it
  // would shift the rest of its curve onto earlier epochs. The objects have no prototype, so
  // that a layer named "constructor" or "__proto__" is just a name.
  const xs = [], metric = Object.create(null), grads = Object.create(null), wnorms = Object.create(null);
  const layerIndex = new Map();  // layer name -> its colour and pattern's index, in model order
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
    for (const name of [...Object.keys(rec.weight_norms || {}), ...Object.keys(rec.grad_norms || {})]) {
      if (!layerIndex.has(name)) layerIndex.set(name, layerIndex.size);
    }
  };
  history.forEach(push);
  const lastEpoch = () => (xs.length ? xs[xs.length - 1] : (job.progress || {}).epoch || 0);
  /** The epoch whose numbers job.metrics holds (null or missing: the latest). */
  const metricsEpoch = () => (job.metrics_epoch == null ? lastEpoch() : job.metrics_epoch);
  const restored = () => metricsEpoch() < lastEpoch();
  const restoredWhy = () => (job.stop_reason === 'early_stopping' ? 'the best epoch, whose weights were restored (early stopping)'
    : 'the epoch whose weights were kept');

  const head = h('div', {class: 'job-head'});
  const lossBox = h('div', {id: 'chart-loss'});
  const lrBox = h('div', {id: 'chart-lr'});
  const accBox = h('div', {id: 'chart-accuracy'});
  const accTitle = h('h3', {}, 'Accuracy');
  const gradBox = h('div', {id: 'chart-grads'});
  const wnormBox = h('div', {id: 'chart-weight-norms'});
  const flags = h('div', {id: 'grad-flags'});
  const weights = h('div', {id: 'weights', class: 'weights'}, h('p', {class: 'muted'}, 'Weights are stored when training ends.'));
  const predict = h('div', {id: 'predict'});
  const layerHint = 'Each layer has its own colour; past the 12th layer the colours come round again with a ' +
    'dotted, dash-dot or long-dashed line (the legend shows each one).';
  root.append(
    h('p', {}, h('a', {href: '#/jobs'}, '← All jobs')),
    head,
    h('div', {class: 'grid2'},
      h('section', {class: 'card'},
        h('div', {class: 'title-row'}, h('h3', {}, 'Loss'),
          h('label', {class: 'toggle small'}, h('input', {type: 'checkbox', id: 'loss-log', onchange: ev => charts.loss.setLogY(ev.target.checked)}), ' log scale')),
        h('p', {class: 'hint'}, 'Training loss (solid) and validation loss (dashed, only when the job holds out validation data), per epoch. Validation rising while training falls means overfitting.'), lossBox,
        h('h4', {class: 'sub'}, 'Learning rate'),
        h('p', {class: 'hint'}, 'The learning rate of each epoch (log scale): a schedule (lr_schedule) changes it; a flat line means it stayed the same.'), lrBox),
      h('section', {class: 'card'}, accTitle, h('p', {class: 'hint'}, 'On the training data (solid) and, when the job holds out validation data, on that (dashed).'), accBox)),
    h('div', {class: 'grid2'},
      card('Gradient norm per layer (log scale)',
        h('p', {class: 'hint'}, 'The average size (L2 norm) of each layer\'s gradient per batch. A layer far below the others is barely learning (vanishing gradients); values that grow by orders of magnitude mean unstable updates (exploding gradients). Measured before clip_norm; frozen layers have none. ', layerHint),
        gradBox, flags),
      card('Weight norm per layer', h('p', {class: 'hint'}, 'The size (L2 norm) of each layer\'s weights after each epoch. ', layerHint), wnormBox)),
    card('Weights', weights),
    card('Predict', predict),
    card('Spec', h('pre', {id: 'spec', class: 'spec'}, JSON.stringify({model: job.model, training: job.training,
      dataset_id: job.dataset_id, init_from: job.init_from, freeze: job.freeze}, null, 2))));

  const charts = {
    loss: new LineChart(lossBox, {title: 'Loss per epoch', empty: emptyText(job)}),
    lr: new LineChart(lrBox, {title: 'Learning rate per epoch', logY: true, height: 130, empty: emptyText(job)}),
    acc: new LineChart(accBox, {title: 'Accuracy per epoch', empty: emptyText(job)}),
    grads: new LineChart(gradBox, {logY: true, title: 'Gradient norm per layer per epoch', empty: emptyText(job)}),
    wnorms: new LineChart(wnormBox, {title: 'Weight norm per layer per epoch', empty: emptyText(job)}),
  };
  ctx.onDispose(() => Object.values(charts).forEach(c => c.resize.disconnect()));
  // a validation series only when its metric was recorded (the job has validation data)
  const pair = (name, label, color) => [
    {name: label, xs, ys: metric[name] || [], color},
    ...(metric[`val_${name}`] ? [{name: `validation ${label}`, xs, ys: metric[`val_${name}`], color, dashed: true}] : [])];
  const styleOf = name => layerStyle(layerIndex.has(name) ? layerIndex.get(name) : layerIndex.size);
  const layerSeries = by => Object.entries(by).map(([name, ys]) => ({name, xs, ys, ...styleOf(name)}));
  function redraw() {
    // classification or regression: from what was recorded, else from the model's loss
    const regression = metric.accuracy ? false : metric.mae ? true : isRegression(job.model);
    setText(accTitle, regression ? 'Mean absolute error' : 'Accuracy');
    charts.acc.opts.title = regression ? 'Mean absolute error per epoch' : 'Accuracy per epoch';
    charts.loss.update(pair('loss', 'loss', PALETTE[0]));
    charts.lr.update(metric.lr ? [{name: 'learning rate', xs, ys: metric.lr, color: PALETTE[3]}] : []);
    charts.acc.update(pair(regression ? 'mae' : 'accuracy', regression ? 'MAE' : 'accuracy', PALETTE[2]));
    charts.grads.update(layerSeries(grads));
    charts.wnorms.update(layerSeries(wnorms));
    for (const c of Object.values(charts)) {
      c.setEmpty(emptyText(job));
      c.setMarker(restored() ? metricsEpoch() : null, `epoch ${metricsEpoch()}, ${job.stop_reason === 'early_stopping' ? 'best' : 'kept'}`);
    }
  }

  // the head is built once and then updated in place: a focused button keeps its focus, and
  // only the status line is a live region (announced to screen readers when its words change)
  let mode = '';
  const el = {
    status: h('span', {id: 'job-status'}),
    cancel: h('button', {type: 'button', id: 'cancel', class: 'danger', hidden: true, onclick: cancel}, 'Cancel'),
    retry: h('button', {type: 'button', id: 'retry', hidden: true, onclick: retry}, 'Retry as a new job'),
    bar: h('div', {class: 'bar'}),
    barText: h('span'),
    eta: h('span', {class: 'muted small', id: 'eta'}),
    live: h('span', {class: 'muted small', id: 'live-status', role: 'status', 'aria-live': 'polite'}),
    error: h('div', {class: 'error', id: 'job-error', hidden: true}),
    metricsEpoch: h('p', {class: 'small metrics-epoch', id: 'metrics-epoch', hidden: true}),
    metrics: h('div', {class: 'metrics', id: 'job-metrics'}),
    facts: h('dl', {class: 'facts'}),
    notices: h('div', {class: 'notices'}),
  };
  el.progress = h('div', {class: 'progress'}, el.bar, el.barText);
  put(head,
    h('div', {class: 'title-row'},
      h('h2', {}, 'Job ', h('span', {class: 'mono'}, job.id)), el.status,
      h('div', {class: 'actions'}, el.cancel, el.retry)),
    h('div', {class: 'progress-row'}, el.progress, el.eta, el.live),
    el.error, el.metricsEpoch, el.metrics, el.facts,
    h('p', {class: 'arch'}, h('small', {class: 'muted'}, 'Model: '), `input ${JSON.stringify(job.model.input_shape)} → ${architecture(job.model)} · loss ${job.model.loss}`),
    el.notices);
  if (curve.downsampled) {
    el.notices.append(h('p', {class: 'muted small', id: 'curve-note'}, `The curves show ${history.length} of the ` +
      `${curve.total} epochs recorded when the page opened, evenly spread, the first and the last included (GET ` +
      '/epochs?max_points); the epochs after those are added one by one. Every epoch: GET /v1/jobs/ID/epochs.'));
  }
  const metricValues = new Map();
  const factValues = new Map();

  function renderHead() {
    const active = !TERMINAL.includes(job.status);
    if (el.status.dataset.status !== job.status) { el.status.dataset.status = job.status; put(el.status, badge(job.status)); }
    el.cancel.hidden = !(active && job.status !== 'cancelling');
    el.retry.hidden = !['failed', 'cancelled'].includes(job.status);

    const {epoch, total_epochs: total} = job.progress;
    const pct = total ? Math.min(100, (100 * epoch) / total) : 0;
    el.bar.className = `bar status-${job.status}`;
    el.bar.style.width = `${pct.toFixed(1)}%`;
    el.progress.title = `${epoch} of ${total} epochs`;
    setText(el.barText, `${epoch} / ${total}`);
    setText(el.eta, active && mode !== 'reconnecting' && job.eta_seconds != null ? `about ${duration(job.eta_seconds)} left ·` : '');
    setText(el.live, active ? MODES[mode] || '' : `${job.status}${job.stop_reason && job.stop_reason !== job.status ? ` (${job.stop_reason.replace(/_/g, ' ')})` : ''}`);
    el.live.classList.toggle('reconnecting', active && mode === 'reconnecting');
    el.error.hidden = !job.error;
    setText(el.error, job.error || '');

    // the latest metrics (or those of the epoch whose weights were kept), the learning rate last
    const m = job.metrics || {};
    const shown = Object.entries(m).filter(([k]) => k !== 'lr').map(([k, v]) => [k, fmt(v)]);
    if (m.lr != null) shown.push(['learning rate', fmt(m.lr)]);
    const keys = shown.map(([k]) => k).join('\n');
    if (el.metrics.dataset.keys !== keys) {
      el.metrics.dataset.keys = keys;
      metricValues.clear();
      put(el.metrics, shown.map(([k]) => {
        const value = h('span', {class: 'value'});
        metricValues.set(k, value);
        return h('span', {class: 'metric', dataset: {metric: k}}, h('small', {}, k), value);
      }));
    }
    for (const [k, v] of shown) setText(metricValues.get(k), v);
    el.metrics.hidden = !shown.length;
    const last = lastEpoch(), at = metricsEpoch();
    el.metricsEpoch.hidden = !shown.length || !last;
    el.metricsEpoch.classList.toggle('restored', restored());
    setText(el.metricsEpoch, restored()
      ? `Metrics of epoch ${at} of ${last} — ${restoredWhy()}; the curves below go on to epoch ${last}.`
      : `Metrics of epoch ${at}${active ? ' (the latest)' : ''}.`);

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
    for (const [k, v] of facts) {
      let dd = factValues.get(k);
      if (!dd) { dd = h('dd'); factValues.set(k, dd); el.facts.append(h('div', {}, h('dt', {}, k), dd)); }
      const node = nodes([v])[0];
      if (dd.textContent !== node.textContent || !dd.firstChild) dd.replaceChildren(node);
    }
  }
  async function cancel() {
    try { job = await api(`${path}/cancel`, {method: 'POST'}); renderHead(); } catch (err) { el.notices.append(errorBox(err)); }
  }
  async function retry() {
    try { const j = await api(`${path}/retry`, {method: 'POST'}); location.hash = `#/jobs/${enc(j.id)}`; } catch (err) { el.notices.append(errorBox(err)); }
  }

  async function loadFlags() {
    if (!xs.length) return;
    const d = await api(`${path}/diagnostics?max_points=2`, {signal: ctx.signal});  // the flags only
    put(flags, d.flags.length
      ? h('ul', {class: 'flags'}, d.flags.map(f => h('li', {class: `flag ${f.kind}`}, f.message)))
      : h('p', {class: 'ok small'}, '✓ No vanishing, missing or exploding gradients.'));
  }

  /** Which epoch's weights the Weights card shows. */
  function weightsNote() {
    if (!xs.length) return '';
    const last = lastEpoch();
    if (restored()) return `These are the weights of epoch ${metricsEpoch()} — ${restoredWhy()} — not those of the last epoch, ${last}.`;
    return job.status === 'succeeded' ? `These are the weights after the last epoch, ${last}.`
      : `These are the weights as they were when the job stopped, after epoch ${last}.`;
  }

  let finishedOnce = false;
  function finished() {
    if (finishedOnce) return;
    finishedOnce = true;
    redraw();
    loadFlags().catch(err => put(flags, errorBox(err)));
    // predictions use the weights a finished job kept: a cancelled one's too, none for a job that kept none
    loadWeights(ctx, path, weights, {note: weightsNote(), styleOf, model: job.model})
      .then(kept => renderPredict(job, path, predict, kept))
      .catch(err => put(weights, errorBox(err)));
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
      // progress and the latest metrics: the server sends the job itself only when its status
      // changes, so the head is brought up to date from the epochs, at most once a second
      recent.push(rec.duration || 0);
      if (recent.length > 20) recent.shift();
      const total = (job.progress || {}).total_epochs || rec.epoch;
      job = {...job, progress: {...(job.progress || {}), epoch: rec.epoch},
             eta_seconds: (total - rec.epoch) * recent.reduce((a, b) => a + b, 0) / recent.length,
             metrics: Object.fromEntries(metricsOf(rec)), metrics_epoch: rec.epoch};
      redraw();
      if (Date.now() - lastHead > 1000) { lastHead = Date.now(); renderHead(); }
      if (Date.now() - lastFlags > 3000) { lastFlags = Date.now(); loadFlags().catch(() => {}); }
    },
    onStatus(j) {
      if (j.status === 'deleted') {  // nothing left to follow, now or when the tab is shown again
        gone = true;
        stopFollowing();
        mode = 'stopped';
        renderHead();
        el.notices.append(h('div', {class: 'error'}, 'This job was deleted.'));
        return;
      }
      job = j;
      renderHead();
      redraw();
      if (TERMINAL.includes(job.status)) { stopFollowing(); finished(); }
    },
    onMode(m) { if (m !== mode) { mode = m; renderHead(); } },
    onError(err) { mode = 'stopped'; renderHead(); el.notices.append(errorBox(err)); },
  };
  // follow only while the tab is visible: an open stream holds one of the API's threads
  let stop = null, gone = false;
  const stopFollowing = () => { const s = stop; stop = null; if (s) s(); };
  const follow = () => {
    if (stop || gone || document.hidden || TERMINAL.includes(job.status)) return;
    const mine = followJob(jobId, xs.length ? xs[xs.length - 1] : 0, {
      ...handlers,
      // following ended for good (a 401 or 404): a later visibility change may follow again
      onEnd() { if (stop === mine) stop = null; },
    });
    stop = mine;
  };
  const onVisibility = () => {
    if (gone || TERMINAL.includes(job.status)) return;
    if (document.hidden) { stopFollowing(); mode = 'paused'; renderHead(); } else follow();
  };
  document.addEventListener('visibilitychange', onVisibility);
  ctx.onDispose(() => { document.removeEventListener('visibilitychange', onVisibility); stopFollowing(); });
  follow();
}

/** How a layer's kernels are laid out in the heatmaps, by its type. */
function heatmapHint(type) {
  const gates = {lstm: '4 gates (input, forget, cell candidate, output)', gru: '3 gates (update, reset, candidate)'}[type];
  if (gates) {
    return `The ${type} layer's kernel and recurrent_kernel have one row per gate and unit: ${gates} × units rows, ` +
      'a block of rows per gate, each holding that gate-unit\'s weights from every input (kernel) or from every unit\'s ' +
      'previous state (recurrent_kernel).';
  }
  if (type === 'simple_rnn') return 'A simple_rnn layer\'s kernel has one row per unit (weights from each input); its recurrent_kernel one row per unit (weights from each unit\'s previous state).';
  return null;
}

/** Layer name -> type, named as the server names them: a spec's name, else type_N per type. */
function layerTypes(model) {
  const out = new Map(), counts = {};
  const names = new Set(((model && model.layers) || []).map(l => l.name).filter(Boolean));
  for (const l of (model && model.layers) || []) {
    let name = l.name;
    if (!name) {
      let n = counts[l.type] || 0;
      while (names.has(`${l.type}_${n}`)) n++;
      name = `${l.type}_${n}`;
      counts[l.type] = n + 1;
      names.add(name);
    }
    out.set(name, l.type);
  }
  return out;
}

async function loadWeights(ctx, path, box, {note = '', styleOf = () => ({color: PALETTE[0]}), model = null} = {}) {
  let doc;
  try {
    doc = await api(`${path}/weights`, {signal: ctx.signal});
  } catch (err) {
    if (err.status === 409) { put(box, h('p', {class: 'muted'}, 'This job stored no weights.')); return false; }
    throw err;
  }
  const types = layerTypes(model);
  const layers = new Map();
  for (const w of doc.weights) (layers.get(w.layer) || layers.set(w.layer, []).get(w.layer)).push(w);
  const recurrent = [...layers.keys()].filter(name => heatmapHint(types.get(name) || w0(layers.get(name))));
  put(box,
    note ? h('p', {id: 'weights-epoch', class: 'weights-epoch'}, note) : null,
    h('p', {class: 'hint'}, 'Histograms show how the learned values are spread (the dashed line is zero). ',
      'Heatmaps show every value: a dense kernel has one row per unit of the layer, holding that unit\'s weights from each input',
      recurrent.length ? ' (recurrent layers differ: see the note on each)' : '',
      '; blue is negative, red positive, white near zero. A large heatmap scrolls.'),
    h('div', {class: 'layer-grid'}, [...layers].map(([layer, params]) => {
      const hint = heatmapHint(types.get(layer) || w0(params));
      return h('div', {class: 'layer', dataset: {layer}},
        h('h4', {}, layer),
        hint ? h('p', {class: 'hint layer-hint'}, hint) : null,
        params.map(p => {
          const flat = Array.isArray(p.values) ? p.values.flat(Infinity) : [p.values];
          const s = stats(flat);
          const cell = h('div', {class: 'param', dataset: {param: p.name}},
            h('div', {class: 'param-head'}, h('b', {}, p.param), ` ${JSON.stringify(p.shape)}`,
              h('small', {class: 'muted'}, ` mean ${fmt(s.mean)} · std ${fmt(s.std)} · min ${fmt(s.min)} · max ${fmt(s.max)}`)));
          if (flat.length >= 2) histogram(cell, flat, {bins: Math.min(40, Math.max(10, Math.round(Math.sqrt(flat.length)))), color: styleOf(layer).color});
          // one row per unit (the last axis; a recurrent layer's: gates x units), holding its weights from every input
          const units = p.shape.length ? p.shape[p.shape.length - 1] : 1;
          const rows = Array.from({length: units}, () => new Array(flat.length / units));
          flat.forEach((v, i) => { rows[i % units][Math.floor(i / units)] = v; });
          if (flat.length && flat.length <= 512 * 512) heatmap(cell, p.shape.length > 1 ? rows : [flat]);
          return cell;
        }));
    })));
  return true;
}

/** A layer's type from its default name ("lstm_0" -> "lstm"), when the spec does not say. */
function w0(params) {
  const name = (params[0] && params[0].layer) || '';
  const m = name.match(/^(lstm|gru|simple_rnn)_\d+$/);
  return m ? m[1] : '';
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

/** `kept`: whether the finished job stored weights (unknown, undefined, until they are loaded). */
function renderPredict(job, path, box, kept) {
  if (!TERMINAL.includes(job.status) || kept === undefined) {
    put(box, h('p', {class: 'muted'}, TERMINAL.includes(job.status) ? 'Loading the weights…'
      : 'Predictions are available once the job has finished.'));
    return;
  }
  if (!kept) {
    put(box, h('p', {class: 'muted'}, 'This job kept no weights to predict with.'));
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
        h('td', {class: 'prediction wrap'}, typeof p === 'number' ? fmt(p) : JSON.stringify(p)),
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
      h('td', {class: 'wrap'}, d.name || h('span', {class: 'muted'}, '(unnamed)')),
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
      h('thead', {}, h('tr', {}, ['Version', 'Job', 'Status', 'Loss', SCORE_HEADER, 'Aliases', 'Registered'].map(c => h('th', {}, c)))),
      h('tbody', {}, m.versions.slice().reverse().map(v => h('tr', {},
        h('td', {}, `v${v.version}`), h('td', {}, jobLink(v.job_id)), h('td', {}, badge(v.job_status)),
        h('td', {class: 'num'}, metricCell(v.metrics, 'loss')), h('td', {class: 'num score'}, scoreCell(v.metrics)),
        h('td', {class: 'wrap'}, v.aliases.map(a => h('span', {class: 'chip'}, a))), h('td', {}, when(v.created_at)))))))));
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
