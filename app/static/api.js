// api.js - every request the dashboard makes goes through here. It uses only the public /v1
// API and sends the stored API key as `Authorization: Bearer KEY` on each call.

const KEY_STORAGE = 'backprop.apiKey';
export const TERMINAL = ['succeeded', 'failed', 'cancelled'];

export const apiKey = {
  get() { try { return localStorage.getItem(KEY_STORAGE) || ''; } catch { return ''; } },
  set(key) { localStorage.setItem(KEY_STORAGE, key.trim()); },
  forget() { localStorage.removeItem(KEY_STORAGE); },
};

/** A non-2xx answer; `problem` is the API's RFC 9457 body (detail, code, errors[{path, message}]). */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

const unauthorizedListeners = [];
/** Called with the error whenever the API answers 401 (no key, or a wrong one). */
export function onUnauthorized(fn) { unauthorizedListeners.push(fn); }

function headers(extra = {}) {
  const out = {Accept: 'application/json', ...extra};
  const key = apiKey.get();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function failure(resp) {
  const text = await resp.text().catch(() => '');
  let problem;
  try { problem = JSON.parse(text); } catch { problem = {detail: text.slice(0, 300) || resp.statusText}; }
  const err = new ApiError(resp.status, problem);
  if (resp.status === 401) unauthorizedListeners.forEach(fn => fn(err));
  return err;
}

/** JSON request; resolves to the parsed body, rejects with ApiError. */
export async function api(path, {method = 'GET', body, signal} = {}) {
  const init = {method, signal, headers: headers(body === undefined ? {} : {'Content-Type': 'application/json'})};
  if (body !== undefined) init.body = JSON.stringify(body);
  const resp = await fetch(path, init);
  if (!resp.ok) throw await failure(resp);
  return resp.status === 204 ? null : resp.json();
}

export const enc = encodeURIComponent;

/** Every recorded epoch of a job after `after`, following the API's pages. */
export async function epochsAfter(jobId, after = 0, signal) {
  const out = [];
  for (;;) {
    const page = await api(`/v1/jobs/${enc(jobId)}/epochs?after=${after}&limit=10000`, {signal});
    out.push(...page.epochs);
    if (page.next_after == null) return out;
    after = page.next_after;
  }
}

const sleep = (ms, signal) => new Promise(resolve => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, {once: true});
});

/** Reads /v1/jobs/{id}/events with fetch() - EventSource cannot send the key - and calls
 * onEvent(name, data) per Server-Sent Event. Resolves when the server ends the stream. */
async function readEvents(jobId, after, signal, onEvent) {
  const resp = await fetch(`/v1/jobs/${enc(jobId)}/events?after=${after}`,
                           {signal, headers: headers({Accept: 'text/event-stream'})});
  if (!resp.ok) throw await failure(resp);
  if (!resp.body) throw new Error('this browser cannot stream responses');
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message', data = '';
      for (const line of frame.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data += line.slice(5).replace(/^ /, '');
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}

/** Live updates of one job from epoch `after` on: onEpoch(record) for each new epoch,
 * onStatus(job) when the job changes, onMode('stream' | 'poll') to say how. Streams the
 * SSE endpoint; if streaming fails (or is turned off), polls /epochs?after=N and the job
 * every second.
 * Stops by itself at a terminal status; returns a function that stops it sooner. */
export function followJob(jobId, after, {onEpoch, onStatus, onMode = () => {}, onError = () => {}}) {
  const ctl = new AbortController();
  const signal = ctl.signal;
  let last = after, finished = false;
  const epoch = rec => { if (rec.epoch > last) { last = rec.epoch; onEpoch(rec); } };
  const status = job => {
    onStatus(job);
    if (TERMINAL.includes(job.status) || job.status === 'deleted') finished = true;
  };

  async function stream() {
    onMode('stream');
    for (let tries = 0; !finished && !signal.aborted && tries < 5; tries++) {
      await readEvents(jobId, last, signal, (name, data) => {
        if (name === 'epoch') epoch(data); else if (name === 'status') status(data);
      });
      if (!finished) await sleep(1000, signal);  // the server closed early: reconnect
    }
  }

  async function poll() {
    onMode('poll');
    while (!finished && !signal.aborted) {
      (await epochsAfter(jobId, last, signal)).forEach(epoch);
      status(await api(`/v1/jobs/${enc(jobId)}`, {signal}));
      if (!finished) await sleep(1000, signal);
    }
  }

  (async () => {
    try {
      // localStorage 'backprop.live' = 'poll' skips streaming (e.g. behind a proxy that buffers)
      if (localStorage.getItem('backprop.live') === 'poll') throw new Error('streaming turned off');
      await stream();
    } catch (err) {
      if (signal.aborted || err.status === 401 || err.status === 404) { if (!signal.aborted) onError(err); return; }
      try { await poll(); } catch (err2) { if (!signal.aborted) onError(err2); }
      return;
    }
    if (!finished && !signal.aborted) {
      try { await poll(); } catch (err) { if (!signal.aborted) onError(err); }
    }
  })();
  return () => ctl.abort();
}
