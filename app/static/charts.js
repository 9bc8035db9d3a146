// charts.js - small <canvas> charts: line charts (linear or log y) with a hover readout,
// histograms and heatmaps. No libraries. Each canvas carries data-* attributes saying what it
// shows (data-points, data-series, data-count), which the browser tests read.

export const PALETTE = ['#2f5fd0', '#e0663a', '#1f9d6b', '#a347c2', '#c9a227', '#d0417e', '#3aa0c9', '#6b6b6b',
                        '#8c564b', '#17becf', '#7f3b08', '#4d9221'];
/** Line patterns for the layer charts, one per cycle through PALETTE: solid first, then dotted,
 * dash-dot, long dashes... With 12 colours and 6 patterns, up to 72 layers look all different.
 * (The short dash [5, 4] is kept for validation curves, which never share a chart with these.) */
export const LAYER_DASHES = [[], [2, 3], [9, 3, 2, 3], [12, 4], [2, 2, 2, 2, 9, 3], [9, 2, 9, 2, 2, 2]];
export const VALIDATION_DASH = [5, 4];
/** The i-th layer's colour and line pattern. */
export const layerStyle = i => ({color: PALETTE[i % PALETTE.length],
                                 dash: LAYER_DASHES[Math.floor(i / PALETTE.length) % LAYER_DASHES.length]});
const FONT = '12px system-ui, -apple-system, "Segoe UI", sans-serif';
const AXIS = '#6b7280', GRID = '#eceef2', INK = '#1f2937', MARK = '#92400e';

/** Sizes the canvas's backing store to its CSS box and the screen's pixel ratio. */
function fit(canvas, cssHeight) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(canvas.clientWidth || canvas.parentElement.clientWidth || 300, 120);
  const h = cssHeight;
  canvas.style.height = `${h}px`;
  if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
  }
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = FONT;
  return {ctx, w, h};
}

/** About n round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, n = 5) {
  // a range a few float steps wide (losses equal to 1e-16): steps that would not move v
  if (!(hi - lo > Math.max(Math.abs(lo), Math.abs(hi)) * 1e-12)) return [lo];
  const raw = (hi - lo) / n, mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

/** [value, label] pairs whose labels differ: more digits when fmt() would repeat one. */
export function labelled(values) {
  let labels = values.map(fmt);
  for (let digits = 5; digits <= 12 && new Set(labels).size < labels.length; digits++) {
    labels = values.map(v => String(Number(v.toPrecision(digits))));
  }
  return values.map((v, i) => [v, labels[i]]);
}

export function fmt(v) {
  if (v == null || Number.isNaN(v)) return '–';
  if (!Number.isFinite(v)) return v > 0 ? '∞' : '-∞';
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return String(Number(v.toPrecision(4)));
}

/** Line chart of named series over epochs. `logY` plots log10(y); values <= 0 are left out.
 * The canvas is an image for assistive technology: role="img" and an aria-label summarising what
 * it plots (`title`), over which epochs, and each series' latest value. */
export class LineChart {
  constructor(container, {logY = false, height = 240, yLabel = '', title = '', empty = 'Waiting for the first epoch…'} = {}) {
    this.opts = {logY, height, yLabel, title, empty};
    this.series = [];
    this.hoverX = null;
    this.marker = null;
    container.classList.add('chart');
    this.canvas = document.createElement('canvas');
    this.canvas.setAttribute('role', 'img');
    this.legend = document.createElement('div');
    this.legend.className = 'legend';
    container.append(this.canvas, this.legend);
    this.canvas.addEventListener('mousemove', e => { this.hoverX = e.offsetX; this.draw(); });
    this.canvas.addEventListener('mouseleave', () => { this.hoverX = null; this.draw(); });
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(container);
    this.labelAt = 0;
    this.update([]);
  }

  /** series: [{name, xs: [epoch...], ys: [value...], color?, dash?: [on, off...], dashed?}]
   * A series with no recorded value (ys empty) is left out, of the chart and the legend. */
  update(series) {
    this.series = series.filter(s => s.xs.length && s.ys.length);
    this.canvas.dataset.points = this.series.length ? String(this.series[0].xs.length) : '0';
    this.canvas.dataset.series = String(this.series.length);
    this.canvas.dataset.seriesNames = this.series.map(s => s.name).join(',');
    this.renderLegend();
    this.scheduleLabel();
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.draw(); });
  }

  /** The text drawn when there is nothing to plot. */
  setEmpty(text) {
    if (text === this.opts.empty) return;
    this.opts.empty = text;
    this.scheduleLabel();
    this.draw();
  }

  /** A vertical marker at epoch x (null: none), e.g. the best epoch whose weights were kept. */
  setMarker(x, label = '') {
    const key = x == null ? '' : `${x}:${label}`;
    if (key === (this.markerKey || '')) return;
    this.markerKey = key;
    this.marker = x == null ? null : {x, label};
    if (x == null) delete this.canvas.dataset.marker; else this.canvas.dataset.marker = String(x);
    this.scheduleLabel();
    this.draw();
  }

  /** The aria-label, rewritten at most once a second while the chart changes. */
  scheduleLabel() {
    if (this.labelTimer) return;
    const wait = Math.max(0, this.labelAt + 1000 - Date.now());
    this.labelTimer = setTimeout(() => {
      this.labelTimer = 0;
      this.labelAt = Date.now();
      const text = this.summary();
      if (this.canvas.getAttribute('aria-label') !== text) this.canvas.setAttribute('aria-label', text);
    }, wait);
  }

  summary() {
    const what = `${this.opts.title || 'Chart'}${this.opts.logY ? ' (log scale)' : ''}`;
    if (!this.series.length) return `${what}: ${this.opts.empty}`;
    let first = Infinity, last = -Infinity;
    for (const s of this.series) { first = Math.min(first, s.xs[0]); last = Math.max(last, s.xs[s.xs.length - 1]); }
    const latest = this.series.map(s => {
      let k = s.ys.length - 1;
      while (k >= 0 && s.ys[k] == null) k--;
      return k < 0 ? `${s.name}: none` : `${s.name} ${fmt(s.ys[k])}${s.xs[k] !== last ? ` (epoch ${s.xs[k]})` : ''}`;
    });
    const epochs = first === last ? `epoch ${first}` : `epochs ${first} to ${last}`;
    const marker = this.marker ? `; marked: ${this.marker.label || `epoch ${this.marker.x}`}` : '';
    return `${what}, ${epochs}. Latest values at epoch ${last}: ${latest.join('; ')}${marker}.`;
  }

  renderLegend() {
    const keys = this.series.map((s, i) => `${s.name}:${this.color(i)}:${this.dash(i).join(' ')}`).join('|');
    if (keys === this.legendKeys) return;
    this.legendKeys = keys;
    this.legend.replaceChildren(...this.series.map((s, i) => {
      const item = document.createElement('span');
      item.className = 'legend-item';
      item.dataset.color = this.color(i);
      item.dataset.dash = this.dash(i).join(' ');
      item.append(swatch(this.color(i), this.dash(i)), s.name);
      return item;
    }));
  }

  setLogY(on) { this.opts.logY = on; this.scheduleLabel(); this.draw(); }

  color(i) { return this.series[i].color || PALETTE[i % PALETTE.length]; }
  dash(i) { const s = this.series[i]; return s.dash || (s.dashed ? VALIDATION_DASH : []); }

  draw() {
    const {ctx, w, h} = fit(this.canvas, this.opts.height);
    const m = {l: 58, r: 14, t: 12, b: 30};
    const ty = this.opts.logY ? (v => (v > 0 && Number.isFinite(v) ? Math.log10(v) : NaN)) : (v => v);
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (const s of this.series) {
      x0 = Math.min(x0, s.xs[0]); x1 = Math.max(x1, s.xs[s.xs.length - 1]);
      for (const v of s.ys) { const t = ty(v); if (Number.isFinite(t)) { y0 = Math.min(y0, t); y1 = Math.max(y1, t); } }
    }
    if (!Number.isFinite(y0)) {
      this.canvas.dataset.yTicks = '';
      ctx.fillStyle = AXIS; ctx.textAlign = 'center';
      ctx.fillText(this.opts.empty, w / 2, h / 2);
      return;
    }
    if (x1 === x0) { x0 -= 1; x1 += 1; }
    if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
    if (!this.opts.logY && y0 < 0 && y0 + pad >= 0) y0 = 0;  // do not dip below zero for nonnegative data
    const yTicks = this.opts.logY ? logTicks(y0, y1) : labelled(niceTicks(y0, y1, 5));
    // the left margin fits the widest y label
    const labelWidth = Math.max(0, ...yTicks.map(([, label]) => ctx.measureText(label).width));
    m.l = Math.max(36, Math.ceil(labelWidth) + 12);
    this.canvas.dataset.yTicks = yTicks.map(([, label]) => label).join('|');
    this.canvas.dataset.marginLeft = String(m.l);
    this.canvas.dataset.labelWidth = String(Math.ceil(labelWidth));
    const pw = w - m.l - m.r, ph = h - m.t - m.b;
    const X = x => m.l + (x - x0) / (x1 - x0) * pw;
    const Y = t => m.t + (1 - (t - y0) / (y1 - y0)) * ph;

    // grid and axes
    ctx.strokeStyle = GRID; ctx.fillStyle = AXIS; ctx.lineWidth = 1;
    ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
    for (const [t, label] of yTicks) {
      const y = Math.round(Y(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(m.l, y); ctx.lineTo(w - m.r, y); ctx.stroke();
      ctx.fillText(label, m.l - 6, y);
    }
    ctx.textAlign = 'center'; ctx.textBaseline = 'top';
    for (const v of niceTicks(x0, x1, Math.max(2, Math.floor(pw / 80))).filter(v => Number.isInteger(v))) {
      ctx.fillText(String(v), X(v), h - m.b + 6);
    }
    ctx.strokeStyle = AXIS;
    ctx.beginPath(); ctx.moveTo(m.l + 0.5, m.t); ctx.lineTo(m.l + 0.5, h - m.b + 0.5); ctx.lineTo(w - m.r, h - m.b + 0.5);
    ctx.stroke();
    ctx.textAlign = 'right'; ctx.fillText('epoch', w - m.r, h - 13);

    // the marked epoch (e.g. the best one, whose weights were restored)
    if (this.marker && this.marker.x >= x0 && this.marker.x <= x1) {
      const mx = Math.round(X(this.marker.x)) + 0.5;
      ctx.save();
      ctx.strokeStyle = MARK; ctx.lineWidth = 1.5; ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(mx, m.t); ctx.lineTo(mx, h - m.b); ctx.stroke();
      ctx.setLineDash([]);
      if (this.marker.label) {
        ctx.fillStyle = MARK; ctx.textBaseline = 'top';
        const tw = ctx.measureText(this.marker.label).width;
        ctx.textAlign = mx + 4 + tw > w - m.r ? 'right' : 'left';
        ctx.fillText(this.marker.label, ctx.textAlign === 'left' ? mx + 4 : mx - 4, m.t + 1);
      }
      ctx.restore();
    }

    // series
    ctx.save();
    ctx.beginPath(); ctx.rect(m.l, m.t - 2, pw, ph + 4); ctx.clip();
    this.series.forEach((s, i) => {
      ctx.strokeStyle = ctx.fillStyle = this.color(i);
      ctx.lineWidth = 1.8;
      ctx.setLineDash(this.dash(i));
      ctx.beginPath();
      let pen = false, drawn = 0;
      for (let k = 0; k < s.xs.length; k++) {
        const t = ty(s.ys[k]);
        if (!Number.isFinite(t)) { pen = false; continue; }
        const px = X(s.xs[k]), py = Y(t);
        if (pen) ctx.lineTo(px, py); else ctx.moveTo(px, py);
        pen = true; drawn++;
      }
      ctx.stroke();
      if (drawn === 1 || s.xs.length <= 30) {  // few points: mark them
        ctx.setLineDash([]);
        s.xs.forEach((x, k) => {
          const t = ty(s.ys[k]);
          if (Number.isFinite(t)) { ctx.beginPath(); ctx.arc(X(x), Y(t), 2.2, 0, 2 * Math.PI); ctx.fill(); }
        });
      }
    });
    ctx.restore();
    ctx.setLineDash([]);
    if (this.hoverX != null) this.drawHover(ctx, X, x0, x1, m, w, h, pw);
  }

  drawHover(ctx, X, x0, x1, m, w, h, pw) {
    const epoch = Math.round(x0 + (this.hoverX - m.l) / pw * (x1 - x0));
    const rows = [];
    this.series.forEach((s, i) => {
      const k = nearest(s.xs, epoch);
      if (k >= 0) rows.push([this.color(i), `${s.name}: ${fmt(s.ys[k])}`, s.xs[k], this.dash(i)]);
    });
    if (!rows.length) return;
    const at = rows[0][2];
    ctx.strokeStyle = '#9ca3af';
    ctx.beginPath(); ctx.moveTo(X(at) + 0.5, m.t); ctx.lineTo(X(at) + 0.5, h - m.b); ctx.stroke();
    const lines = [[INK, `epoch ${at}`, at, []], ...rows];
    const bw = Math.max(...lines.map(l => ctx.measureText(l[1]).width)) + 22, bh = lines.length * 16 + 8;
    let bx = X(at) + 10;
    if (bx + bw > w - m.r) bx = X(at) - 10 - bw;
    ctx.fillStyle = 'rgba(255,255,255,0.94)'; ctx.strokeStyle = '#d1d5db';
    ctx.fillRect(bx, m.t + 4, bw, bh); ctx.strokeRect(bx + 0.5, m.t + 4.5, bw, bh);
    ctx.textAlign = 'left'; ctx.textBaseline = 'top';
    lines.forEach(([color, text, , dash], i) => {
      if (i) {
        ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.setLineDash(dash.map(d => d / 2));
        ctx.beginPath(); ctx.moveTo(bx + 4, m.t + 13.5 + i * 16); ctx.lineTo(bx + 15, m.t + 13.5 + i * 16); ctx.stroke();
        ctx.setLineDash([]);
      }
      ctx.fillStyle = INK; ctx.fillText(text, bx + 18, m.t + 8 + i * 16);
    });
  }
}

function nearest(xs, x) {
  if (!xs.length) return -1;
  let lo = 0, hi = xs.length - 1;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (xs[mid] < x) lo = mid + 1; else hi = mid; }
  return lo > 0 && Math.abs(xs[lo - 1] - x) <= Math.abs(xs[lo] - x) ? lo - 1 : lo;
}

/** The label of 10^p: "0.01", "1000", "1e+26", "1e-7". */
function powerLabel(p) {
  return p >= -3 && p <= 4 ? fmt(10 ** p) : `1e${p < 0 ? '-' : '+'}${Math.abs(p)}`;
}

/** Ticks [log10 value, label] on a log10 axis from t0 to t1 (log10 units): at most about
 * `most` of them. Over many decades, every k-th power of ten; over a decade or two, 1, 2 and 5
 * times them; over less than that (when those give fewer than 3), round values of the data's
 * own scale, so that a flat curve still gets two or three readable labels. */
export function logTicks(t0, t1, most = 6) {
  if (!(t1 > t0)) return [[t0, fmt(10 ** t0)]];
  const first = Math.ceil(t0 - 1e-9), last = Math.floor(t1 + 1e-9);
  const decades = last - first + 1;
  if (decades >= 2) {  // powers of ten: every k-th
    const k = Math.ceil(decades / most);
    const out = [];
    for (let p = Math.ceil(first / k) * k; p <= last; p += k) out.push([p, powerLabel(p)]);
    if (out.length >= 2) return out;
  }
  const out = [];
  for (let p = Math.floor(t0); p <= Math.ceil(t1); p++) {
    for (const mlt of [1, 2, 5]) {
      const t = p + Math.log10(mlt);
      if (t >= t0 - 1e-9 && t <= t1 + 1e-9) out.push([t, fmt(mlt * 10 ** p)]);
    }
  }
  if (out.length >= 3) return out;
  // under about half a decade: round values of the data's own scale, placed on the log axis
  const lin = niceTicks(10 ** t0, 10 ** t1, 5).filter(v => v > 0 && Math.log10(v) >= t0 - 1e-9 && Math.log10(v) <= t1 + 1e-9);
  if (lin.length >= 2) return labelled(lin).map(([v, label]) => [Math.log10(v), label]);
  return [[t0, fmt(10 ** t0)], [t1, fmt(10 ** t1)]];
}

/** A legend's sample of a line: its colour and dash pattern, as the chart draws it. */
export function swatch(color, dash = []) {
  const c = document.createElement('canvas');
  c.className = 'swatch';
  const dpr = window.devicePixelRatio || 1, w = 26, h = 8;
  c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
  c.style.width = `${w}px`; c.style.height = `${h}px`;
  c.setAttribute('aria-hidden', 'true');
  const ctx = c.getContext('2d');
  ctx.scale(dpr, dpr);
  ctx.strokeStyle = color; ctx.lineWidth = 2.2; ctx.setLineDash(dash);
  ctx.beginPath(); ctx.moveTo(0, h / 2); ctx.lineTo(w, h / 2); ctx.stroke();
  return c;
}

/** Summary numbers of a flat array. */
export function stats(values) {
  let min = Infinity, max = -Infinity, sum = 0, sq = 0;
  for (const v of values) { min = Math.min(min, v); max = Math.max(max, v); sum += v; sq += v * v; }
  const n = values.length, mean = n ? sum / n : NaN;
  return {n, min, max, mean, std: n ? Math.sqrt(Math.max(sq / n - mean * mean, 0)) : NaN};
}

/** Histogram of values in `bins` equal bins, drawn into a new canvas appended to container. */
export function histogram(container, values, {bins = 30, height = 130, color = PALETTE[0]} = {}) {
  const canvas = document.createElement('canvas');
  canvas.className = 'histogram';
  container.append(canvas);
  const {min, max} = stats(values);
  const lo = min === max ? min - 0.5 : min, hi = min === max ? max + 0.5 : max;
  const counts = new Array(bins).fill(0);
  for (const v of values) counts[Math.min(bins - 1, Math.floor((v - lo) / (hi - lo) * bins))]++;
  canvas.dataset.count = String(values.length);
  canvas.dataset.bins = String(bins);
  const draw = () => {
    const {ctx, w, h} = fit(canvas, height);
    const m = {l: 8, r: 8, t: 6, b: 20}, pw = w - m.l - m.r, ph = h - m.t - m.b;
    const top = Math.max(...counts, 1);
    ctx.fillStyle = color;
    counts.forEach((c, i) => {
      const bh = c / top * ph;
      ctx.fillRect(m.l + i * pw / bins + 0.5, m.t + ph - bh, Math.max(pw / bins - 1, 1), bh);
    });
    const X = v => m.l + (v - lo) / (hi - lo) * pw;
    if (lo < 0 && hi > 0) {  // where zero is
      ctx.strokeStyle = INK; ctx.setLineDash([3, 3]);
      ctx.beginPath(); ctx.moveTo(X(0) + 0.5, m.t); ctx.lineTo(X(0) + 0.5, m.t + ph); ctx.stroke(); ctx.setLineDash([]);
    }
    ctx.fillStyle = AXIS; ctx.textBaseline = 'top';
    ctx.textAlign = 'left'; ctx.fillText(fmt(min), m.l, h - m.b + 5);
    ctx.textAlign = 'right'; ctx.fillText(fmt(max), w - m.r, h - m.b + 5);
    if (lo < 0 && hi > 0 && X(0) > m.l + 40 && X(0) < w - m.r - 40) { ctx.textAlign = 'center'; ctx.fillText('0', X(0), h - m.b + 5); }
  };
  requestAnimationFrame(draw);
  return canvas;
}

/** A 2-D array (a list of rows) as coloured cells: blue negative, white zero, red positive,
 * scaled to the largest |value|. Cells fit `maxCss` CSS pixels per side where they can, but are
 * never thinner than `minCell` (nor thicker than `maxCell`) along either axis, so that a
 * [1, 128] kernel is no 3 px strip: what does not fit scrolls inside a box of the card's width. */
export function heatmap(container, rows, {maxCss = 360, minCell = 6, maxCell = 18} = {}) {
  const nr = rows.length, nc = rows[0].length;
  const wrap = document.createElement('div');
  wrap.className = 'heatmap-wrap';
  const canvas = document.createElement('canvas');
  canvas.className = 'heatmap';
  canvas.dataset.rows = String(nr);
  canvas.dataset.cols = String(nc);
  // CSS pixels per cell along each axis; the browser scales the nc x nr image up
  const along = n => Math.min(maxCell, Math.max(minCell, maxCss / n));
  canvas.width = nc; canvas.height = nr;
  canvas.style.width = `${Math.round(nc * along(nc))}px`;
  canvas.style.height = `${Math.round(nr * along(nr))}px`;
  wrap.append(canvas);
  let scale = 0;
  for (const r of rows) for (const v of r) scale = Math.max(scale, Math.abs(v));
  const img = new ImageData(nc, nr);
  rows.forEach((r, i) => r.forEach((v, j) => {
    const t = scale ? Math.max(-1, Math.min(1, v / scale)) : 0;
    const [cr, cg, cb] = t < 0 ? [47, 95, 208] : [214, 69, 54];
    const fade = c => Math.round(255 - (255 - c) * Math.abs(t));
    img.data.set([fade(cr), fade(cg), fade(cb), 255], 4 * (i * nc + j));
  }));
  canvas.getContext('2d').putImageData(img, 0, 0);
  canvas.title = `${nr} × ${nc}; colour scale ±${fmt(scale)}`;
  container.append(wrap);
  return {canvas, scale};
}
