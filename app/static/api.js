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

/** A job's whole curve in at most `maxPoints` epochs (first and last kept): {epochs, total,
 * downsampled}. A long run's every epoch would be tens of MB for the page to draw. */
export async function epochCurve(jobId, maxPoints, signal) {
  return api(`/v1/jobs/${enc(jobId)}/epochs?max_points=${maxPoints}`, {signal});
}

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

/** A pause that an abort ends early; its abort listener goes when the pause ends, so that a
 * page polling every second for hours does not pile them up on the signal. */
const sleep = (ms, signal) => new Promise(resolve => {
  const done = () => { clearTimeout(t); signal.removeEventListener('abort', done); resolve(); };
  const t = setTimeout(done, ms);
  signal.addEventListener('abort', done, {once: true});
});

/** Reads /v1/jobs/{id}/events with fetch() - EventSource cannot send the key - and calls
 * onEvent(name, data) per Server-Sent Event, onOpen() once the server has accepted the stream.
 * Resolves when the server ends the stream. */
async function readEvents(jobId, after, signal, onEvent, onOpen = () => {}) {
  const resp = await fetch(`/v1/jobs/${enc(jobId)}/events?after=${after}`,
                           {signal, headers: headers({Accept: 'text/event-stream'})});
  if (!resp.ok) throw await failure(resp);
  if (!resp.body) throw new StreamUnsupported('this browser cannot stream responses');
  onOpen();
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

class StreamUnsupported extends Error {}

/** Whether following should give up on this error: the job is gone (404) or the key is wanted
 * or refused (401). Anything else - fetch's TypeError when the API cannot be reached, a 5xx, 429
 * or 503, a stream cut short - is a moment's outage, and is retried. */
const fatal = err => err instanceof ApiError && (err.status === 401 || err.status === 404);

/** Pauses between attempts while the API does not answer: 1, 2, 4, then every 8 s. */
export const RETRY_DELAYS = [1000, 2000, 4000, 8000];

/** Live updates of one job from epoch `after` on: onEpoch(record) for each new epoch,
 * onStatus(job) when the job changes, onMode(mode, detail) to say how: 'stream', 'poll', or
 * 'reconnecting' (with the pause before the next try, in ms) while the API does not answer.
 * Streams the SSE endpoint; if streaming is not possible (or turned off) while the API itself
 * answers, polls /epochs?after=N and the job every second. An outage - the stream or a poll
 * failing on the network, or a 5xx, 429 or 503 - is ridden out with pauses of 1, 2, 4 and 8 s
 * (then 8 s on), after which it streams (or polls) again from the last epoch it saw.
 * Stops by itself at a terminal status, or for good on a 401 or 404 (onError(err) is called);
 * onEnd() is called whenever it stops by itself. Returns a function that stops it sooner. */
export function followJob(jobId, after, {onEpoch, onStatus, onMode = () => {}, onError = () => {}, onEnd = () => {}}) {
  const ctl = new AbortController();
  const signal = ctl.signal;
  let last = after, finished = false;
  const epoch = rec => { if (rec.epoch > last) { last = rec.epoch; onEpoch(rec); } };
  const status = job => {
    onStatus(job);
    if (TERMINAL.includes(job.status) || job.status === 'deleted') finished = true;
  };
  const onEvent = (name, data) => { if (name === 'epoch') epoch(data); else if (name === 'status') status(data); };

  async function pollOnce() {
    (await epochsAfter(jobId, last, signal)).forEach(epoch);
    status(await api(`/v1/jobs/${enc(jobId)}`, {signal}));
  }

  (async () => {
    // localStorage 'backprop.live' = 'poll' skips streaming (e.g. behind a proxy that buffers)
    let streaming = true;
    try { streaming = localStorage.getItem('backprop.live') !== 'poll'; } catch { /* no storage */ }
    let failures = 0, earlyEnds = 0;
    const answered = () => { failures = 0; };
    try {
      while (!finished && !signal.aborted) {
        try {
          if (streaming) {
            let opened = false;
            const since = Date.now(), before = last;
            try {
              await readEvents(jobId, last, signal, onEvent, () => { opened = true; answered(); onMode('stream'); });
            } catch (err) {
              if (signal.aborted || fatal(err)) throw err;
              if (opened) throw err;  // the stream broke: an outage, retried as one
              // the stream was refused or cannot be read: if the API answers otherwise, poll
              await pollOnce();
              answered();
              streaming = false;
              onMode('poll');
              if (!finished) await sleep(1000, signal);
              continue;
            }
            // the server ended the stream before the job ended: reconnect after a pause. The API
            // ends every stream after a few minutes; one that keeps ending within seconds having
            // sent nothing (a proxy cutting streams short) is polled instead
            if (!finished) {
              const early = Date.now() - since < 10000 && last === before;
              earlyEnds = early ? earlyEnds + 1 : 0;
              if (earlyEnds >= 5) { streaming = false; onMode('poll'); }
              await sleep(1000, signal);
            }
          } else {
            await pollOnce();
            answered();
            onMode('poll');
            if (!finished) await sleep(1000, signal);
          }
        } catch (err) {
          if (signal.aborted) return;
          if (fatal(err)) throw err;
          const pause = RETRY_DELAYS[Math.min(failures, RETRY_DELAYS.length - 1)];
          failures++;
          console.warn(`live updates: ${err.message || err}; retrying in ${pause / 1000} s`);
          onMode('reconnecting', pause);
          await sleep(pause, signal);
        }
      }
    } catch (err) {
      if (!signal.aborted) onError(err);
    } finally {
      if (!signal.aborted) onEnd();
    }
  })();
  return () => ctl.abort();
}
