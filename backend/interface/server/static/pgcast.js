// pgcast.js: a dependency-free browser client for pgcast, as an ES module.
//
//   import { subscribe, publish, consume } from "/static/pgcast.js";
//
// subscribe() follows topics over Server-Sent Events (native EventSource, the default) or
// over the WebSocket protocol `pgcast.v1`, remembers the id of the last event it handed
// out and resumes after it when the connection comes back, so no event is lost or
// repeated. publish() posts one event over HTTP. consume() leases queue messages over
// WebSocket. See docs/javascript.md.

const PROTOCOL = "pgcast.v1";
const ID = /^[0-9]+$/;
const MAX_BACKOFF_MS = 10000;
const RECENT_IDS = 4096;
// WebSocket error codes a retry cannot fix; any other error is retried with backoff.
const FATAL_CODES = new Set([
  "invalid_topic",
  "invalid_filter",
  "invalid_cursor",
  "invalid_frame",
  "invalid_json",
  "unknown_op",
  "duplicate_id",
  "too_many_subscriptions",
  "unauthorized",
  "forbidden",
]);

/** An error reported by the server: `code` is its stable error code, `status` the HTTP status. */
export class PgcastError extends Error {
  constructor(code, message, status = 0, body = undefined) {
    super(message);
    this.name = "PgcastError";
    this.code = code;
    this.status = status;
    this.body = body;
  }
}

// ---------------------------------------------------------------------------------------
// Helpers

function baseOf(baseUrl) {
  const here = globalThis.location ? globalThis.location.href : undefined;
  const url = new URL(baseUrl ? String(baseUrl) : "/", here);
  url.search = "";
  url.hash = "";
  return url.href.replace(/\/+$/, "");
}

function endpoint(base, path, params = []) {
  const url = new URL(base + path);
  for (const [name, value] of params) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.append(name, value);
  }
  return url.href;
}

function socketUrl(base) {
  const url = new URL(base + "/ws");
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

function patternList(patterns) {
  const list = (Array.isArray(patterns) ? patterns : [patterns]).map((p) => String(p).trim());
  if (!list.length || list.some((p) => !p)) throw new TypeError("pgcast: give at least one topic pattern");
  return list;
}

function checkAfter(after) {
  if (after === undefined || after === null || after === "latest" || after === "earliest") return;
  if (!ID.test(String(after))) throw new TypeError("pgcast: after must be 'latest', 'earliest' or an event id");
}

/** Ids are fixed-width digit strings, so this is "a comes later in the log than b". */
function isAfter(a, b) {
  return b === null || a.length > b.length || (a.length === b.length && a > b);
}

function idBefore(id) {
  const n = BigInt(id);
  return n === 0n ? id : (n - 1n).toString().padStart(id.length, "0");
}

/** Delay before retry number `attempt` (0, 1, ...): exponential with jitter, capped. */
function backoff(attempt) {
  const ceiling = Math.min(MAX_BACKOFF_MS, 250 * 2 ** Math.min(attempt, 10));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

async function failure(response) {
  let body;
  try {
    body = await response.json();
  } catch {
    body = undefined;
  }
  const code = (body && body.error) || `http_${response.status}`;
  const message = (body && body.message) || `HTTP ${response.status} ${response.statusText}`.trim();
  return new PgcastError(code, message, response.status, body);
}

/** A retry cannot fix a 4xx (other than 408, 410 and 429) nor a protocol error. */
function isFatal(error) {
  if (!(error instanceof PgcastError)) return false;
  if (error.status) return error.status >= 400 && error.status < 500 && ![408, 410, 429].includes(error.status);
  return FATAL_CODES.has(error.code);
}

function call(callback, ...args) {
  if (typeof callback !== "function") return undefined;
  try {
    return callback(...args);
  } catch (error) {
    report(error);
    return undefined;
  }
}

function report(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else console.error(error);
}

/**
 * Validate the patterns and filter, and turn "latest" into a concrete id: the id just
 * before the first event a subscription from "latest" would deliver now. Resuming from a
 * concrete id means a reconnect before the first event still misses nothing.
 */
async function startingPoint(base, patterns, filter, signal) {
  const params = [...patterns.map((p) => ["topic", p]), ["after", "latest"], ["limit", "1"], ["filter", filter]];
  const response = await fetch(endpoint(base, "/events", params), {
    headers: { Accept: "application/json" },
    cache: "no-store",
    signal,
  });
  if (!response.ok) throw await failure(response);
  const page = await response.json();
  return page.events.length ? idBefore(page.events[0].id) : page.next;
}

class RecentIds {
  constructor(size) {
    this.size = size;
    this.ids = new Set();
  }
  add(id) {
    if (this.ids.has(id)) return false;
    this.ids.add(id);
    if (this.ids.size > this.size) this.ids.delete(this.ids.values().next().value);
    return true;
  }
  clear() {
    this.ids.clear();
  }
}

// ---------------------------------------------------------------------------------------
// subscribe

/**
 * Follow events on one or more topic patterns.
 *
 * options: after ("latest" by default, "earliest" or an event id), filter, transport
 * ("sse" by default, or "ws"), types (SSE only: event types to listen for besides the
 * untyped ones), withCredentials (SSE), and the callbacks onEvent(envelope),
 * onReset({oldest, reason, message}), onStatus(status, detail) and onError(error).
 * Statuses: "connecting", "live", "reconnecting", "closed".
 *
 * Returns a Subscription: close(), listen(type), and the properties lastId and status.
 */
export function subscribe(baseUrl, patterns, options = {}) {
  const transport = options.transport || "sse";
  if (transport !== "sse" && transport !== "ws") throw new TypeError("pgcast: transport must be 'sse' or 'ws'");
  checkAfter(options.after);
  const subscription = new Subscription(baseOf(baseUrl), patternList(patterns), options);
  if (transport === "sse") runEventSource(subscription);
  else runWebSocket(subscription);
  return subscription;
}

class Subscription {
  constructor(base, patterns, options) {
    this.base = base;
    this.patterns = patterns;
    this.options = options;
    this.transport = options.transport || "sse";
    this.lastId = null;
    this.status = "connecting";
    this.closed = false;
    this.stop = () => {};
    this.listenFor = () => {};
  }

  /** Stop for good; no callback runs afterwards. */
  close() {
    if (this.closed) return;
    this.closed = true;
    this.stop();
    this.setStatus("closed", {});
  }

  /** SSE: also deliver events of this type from now on (WebSocket delivers every type). */
  listen(type) {
    this.listenFor(String(type));
  }

  setStatus(status, detail) {
    if (this.closed && status !== "closed") return;
    this.status = status;
    call(this.options.onStatus, status, detail);
  }

  deliver(envelope) {
    if (this.closed) return;
    if (isAfter(envelope.id, this.lastId)) this.lastId = envelope.id;
    call(this.options.onEvent, envelope);
  }

  resetTo(payload) {
    if (this.closed) return;
    // The log restarts at `oldest`, which may be lower than the last id seen.
    this.lastId = null;
    call(this.options.onReset, payload);
  }

  fail(error) {
    if (this.closed) return;
    call(this.options.onError, error);
    this.closed = true;
    this.stop();
    this.setStatus("closed", { error });
  }

  warn(error) {
    if (!this.closed) call(this.options.onError, error);
  }
}

function runEventSource(sub) {
  const wanted = sub.options.types || [];
  const named = typeof wanted === "string" ? wanted.split(/[\s,]+/) : Array.from(wanted, String);
  const types = new Set(["message", ...named.filter(Boolean)]);
  const aborter = new AbortController();
  let source = null;
  let timer = 0;
  let attempt = 0;
  let wasLive = false;
  // Where to start when no event has been seen yet; "latest" is made concrete on start.
  let startAfter = sub.options.after ? String(sub.options.after) : "latest";

  const onEvent = (message) => {
    let envelope;
    try {
      envelope = JSON.parse(message.data);
    } catch (error) {
      report(error);
      return;
    }
    // A replay can only come from a reopened source; the id check keeps delivery exactly-once.
    if (!isAfter(envelope.id, sub.lastId)) return;
    sub.deliver(envelope);
  };

  const onReset = (message) => {
    // The server goes on from the oldest event; a reopen before the next event does too.
    startAfter = "earliest";
    try {
      sub.resetTo(JSON.parse(message.data));
    } catch (error) {
      report(error);
    }
  };

  const retry = () => {
    const delay = backoff(attempt++);
    sub.setStatus(wasLive ? "reconnecting" : "connecting", { attempt, delay });
    timer = setTimeout(start, delay);
  };

  const open = (after) => {
    const params = [...sub.patterns.map((p) => ["topic", p]), ["after", after], ["filter", sub.options.filter]];
    const es = new EventSource(endpoint(sub.base, "/events", params), {
      withCredentials: Boolean(sub.options.withCredentials),
    });
    source = es;
    for (const type of types) es.addEventListener(type, onEvent);
    es.addEventListener("pgcast.reset", onReset);
    es.onopen = () => {
      if (es !== source) return;
      attempt = 0;
      wasLive = true;
      sub.setStatus("live", {});
    };
    es.onerror = () => {
      if (es !== source || sub.closed) return;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error, say): reopen ourselves, after the last id.
        es.close();
        source = null;
        retry();
      } else {
        // The browser reconnects by itself and sends Last-Event-ID.
        sub.setStatus(wasLive ? "reconnecting" : "connecting", {});
      }
    };
  };

  const start = async () => {
    timer = 0;
    if (sub.closed) return;
    sub.setStatus(wasLive ? "reconnecting" : "connecting", { attempt });
    try {
      // Also checks the patterns and filter: EventSource cannot tell a 400 from an outage.
      const latest = await startingPoint(sub.base, sub.patterns, sub.options.filter, aborter.signal);
      if (startAfter === "latest") startAfter = latest;
    } catch (error) {
      if (sub.closed) return;
      if (isFatal(error)) {
        sub.fail(error);
        return;
      }
      sub.warn(error);
      retry();
      return;
    }
    if (!sub.closed) open(sub.lastId || startAfter);
  };

  sub.listenFor = (type) => {
    if (types.has(type)) return;
    types.add(type);
    if (source) source.addEventListener(type, onEvent);
  };
  sub.stop = () => {
    aborter.abort();
    clearTimeout(timer);
    if (source) source.close();
    source = null;
  };
  start();
}

function runWebSocket(sub) {
  // One server-side subscription per pattern (a `subscribe` frame takes one topic pattern).
  const parts = sub.patterns.map((topic, index) => ({
    id: index + 1,
    topic,
    lastId: null,
    after: null,
    ready: false,
    attempt: 0,
    timer: 0,
  }));
  const seen = new RecentIds(RECENT_IDS);
  const aborter = new AbortController();
  let socket = null;
  let timer = 0;
  let attempt = 0;
  let wasLive = false;
  let startAfter = sub.options.after ? String(sub.options.after) : "latest";

  const send = (frame) => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  };

  const subscribePart = (part) => {
    part.timer = 0;
    part.ready = false;
    const frame = { op: "subscribe", id: part.id, topic: part.topic, after: part.lastId || part.after || startAfter };
    if (sub.options.filter) frame.filter = sub.options.filter;
    send(frame);
  };

  const retry = () => {
    const delay = backoff(attempt++);
    sub.setStatus(wasLive ? "reconnecting" : "connecting", { attempt, delay });
    timer = setTimeout(connect, delay);
  };

  const handle = (ws, frame) => {
    const part = parts.find((p) => p.id === (frame.sub ?? frame.id));
    switch (frame.op) {
      case "subscribed":
        if (!part) return;
        part.ready = true;
        part.attempt = 0;
        if (parts.every((p) => p.ready)) {
          attempt = 0;
          wasLive = true;
          sub.setStatus("live", {});
        }
        return;
      case "event": {
        if (!part) return;
        const { op: _op, sub: _sub, ...envelope } = frame;
        if (!isAfter(envelope.id, part.lastId)) return;
        part.lastId = envelope.id;
        // An event matching several patterns arrives once per pattern; hand it out once.
        if (parts.length > 1 && !seen.add(envelope.id)) return;
        sub.deliver(envelope);
        return;
      }
      case "reset": {
        if (part) {
          // The server goes on from the oldest event; a resubscribe before the next does too.
          part.lastId = null;
          part.after = "earliest";
        }
        seen.clear();
        const { oldest, reason, message } = frame;
        sub.resetTo({ oldest, reason, message });
        return;
      }
      case "error": {
        const error = new PgcastError(frame.code, frame.message);
        if (!part) {
          sub.warn(error);
          return;
        }
        if (isFatal(error)) {
          sub.fail(error);
          return;
        }
        // This subscription ended (the database went away, say): subscribe it again.
        sub.warn(error);
        part.ready = false;
        sub.setStatus("reconnecting", { error });
        part.timer = setTimeout(() => ws === socket && subscribePart(part), backoff(part.attempt++));
        return;
      }
      default:
        return;
    }
  };

  const connect = async () => {
    timer = 0;
    if (sub.closed) return;
    sub.setStatus(wasLive ? "reconnecting" : "connecting", { attempt });
    if (startAfter === "latest") {
      try {
        startAfter = await startingPoint(sub.base, sub.patterns, sub.options.filter, aborter.signal);
      } catch (error) {
        if (sub.closed) return;
        if (isFatal(error)) sub.fail(error);
        else {
          sub.warn(error);
          retry();
        }
        return;
      }
      if (sub.closed) return;
    }
    const ws = new WebSocket(socketUrl(sub.base), PROTOCOL);
    socket = ws;
    ws.onopen = () => parts.forEach(subscribePart);
    ws.onmessage = (message) => {
      if (ws !== socket) return;
      let frame;
      try {
        frame = JSON.parse(message.data);
      } catch (error) {
        report(error);
        return;
      }
      handle(ws, frame);
    };
    ws.onclose = () => {
      if (ws !== socket) return;
      socket = null;
      for (const part of parts) {
        clearTimeout(part.timer);
        part.ready = false;
      }
      if (!sub.closed) retry();
    };
  };

  sub.stop = () => {
    aborter.abort();
    clearTimeout(timer);
    for (const part of parts) clearTimeout(part.timer);
    const ws = socket;
    socket = null;
    if (ws) ws.close(1000);
  };
  connect();
}

// ---------------------------------------------------------------------------------------
// publish

/**
 * Publish one event: POST /topics/{topic}/events. Resolves with the stored envelope
 * ({id, topic, type, key, data, time}) once committed; rejects with a PgcastError.
 * options: type, key, idempotencyKey (a retry with the same key publishes only once),
 * signal (an AbortSignal).
 */
export async function publish(baseUrl, topic, data, options = {}) {
  const body = { data };
  if (options.type !== undefined && options.type !== null && options.type !== "") body.type = options.type;
  if (options.key !== undefined && options.key !== null && options.key !== "") body.key = options.key;
  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (options.idempotencyKey) headers["Idempotency-Key"] = options.idempotencyKey;
  const response = await fetch(`${baseOf(baseUrl)}/topics/${encodeURIComponent(topic)}/events`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
    signal: options.signal,
  });
  if (!response.ok) throw await failure(response);
  const result = await response.json();
  return result.events[0];
}

// ---------------------------------------------------------------------------------------
// consume

/**
 * Lease messages from a queue over WebSocket and hand each to
 * onMessage(message, {ack, nack, extend}). Settle every message: ack() resolves once it
 * is deleted, nack({delay_seconds, error}) with its new state, extend(seconds) with
 * {lease_until}. A message whose handler throws or rejects is nacked with the error,
 * which also goes to onError (or to reportError when there is no onError).
 * options: prefetch (1), lease (seconds, 30), onMessage, onStatus, onError.
 * Returns {close(), status}; closing hands unsettled messages back to the queue.
 */
export function consume(baseUrl, queue, options = {}) {
  if (typeof options.onMessage !== "function") throw new TypeError("pgcast: consume needs onMessage");
  const base = baseOf(baseUrl);
  const consumerId = 1;
  let socket = null;
  let timer = 0;
  let attempt = 0;
  let wasLive = false;
  // Message id -> replies awaited for it, in the order the ops were sent.
  let waiting = new Map();

  const consumer = {
    status: "connecting",
    closed: false,
    close() {
      if (consumer.closed) return;
      consumer.closed = true;
      clearTimeout(timer);
      const ws = socket;
      socket = null;
      if (ws) ws.close(1000);
      abandon(waiting, "the consumer was closed");
      setStatus("closed", {});
    },
  };

  const setStatus = (status, detail) => {
    if (consumer.closed && status !== "closed") return;
    consumer.status = status;
    call(options.onStatus, status, detail);
  };

  const abandon = (pending, why) => {
    for (const list of pending.values()) {
      for (const entry of list) {
        entry.reject(new PgcastError("connection_lost", `${why}; the message went back to the queue`));
      }
    }
    pending.clear();
  };

  const retry = () => {
    const delay = backoff(attempt++);
    setStatus(wasLive ? "reconnecting" : "connecting", { attempt, delay });
    timer = setTimeout(connect, delay);
  };

  const settle = (ws, pending, message) => {
    let settled = false;
    const request = (op, fields, reply) => {
      if (ws !== socket || ws.readyState !== WebSocket.OPEN) {
        return Promise.reject(new PgcastError("connection_lost", "the connection that leased this message is gone"));
      }
      return new Promise((resolve, reject) => {
        const list = pending.get(message.id) || [];
        list.push({ reply, resolve, reject });
        pending.set(message.id, list);
        ws.send(JSON.stringify({ op, message: message.id, ...fields }));
      });
    };
    return {
      get settled() {
        return settled;
      },
      ack() {
        settled = true;
        return request("ack", {}, "acked").then(() => undefined);
      },
      nack({ delay_seconds, delay, error } = {}) {
        settled = true;
        const fields = {};
        if (delay_seconds !== undefined) fields.delay_seconds = delay_seconds;
        // `delay` is the deprecated name: sent as `delay_seconds`, or beside it for the
        // server to check that both agree.
        if (delay !== undefined) fields[delay_seconds === undefined ? "delay_seconds" : "delay"] = delay;
        if (error !== undefined) fields.error = String(error);
        return request("nack", fields, "nacked").then((frame) => ({ state: frame.state }));
      },
      extend(seconds) {
        return request("extend", { seconds }, "extended").then((frame) => ({ lease_until: frame.lease_until }));
      },
    };
  };

  const answer = (pending, id, frame, error) => {
    const list = pending.get(id);
    if (!list || !list.length) return false;
    const index = error ? 0 : list.findIndex((entry) => entry.reply === frame.op);
    if (index < 0) return false;
    const [entry] = list.splice(index, 1);
    if (!list.length) pending.delete(id);
    if (error) entry.reject(error);
    else entry.resolve(frame);
    return true;
  };

  const deliver = (ws, pending, frame) => {
    const { op: _op, sub: _sub, ...message } = frame;
    const handle = settle(ws, pending, message);
    const nackWith = (error) => {
      if (typeof options.onError === "function") call(options.onError, error);
      else report(error);
      if (!handle.settled) handle.nack({ error: String((error && error.message) || error) }).catch(report);
    };
    try {
      const result = options.onMessage(message, handle);
      if (result && typeof result.then === "function") result.then(undefined, nackWith);
    } catch (error) {
      nackWith(error);
    }
  };

  const connect = () => {
    timer = 0;
    if (consumer.closed) return;
    setStatus(wasLive ? "reconnecting" : "connecting", { attempt });
    const ws = new WebSocket(socketUrl(base), PROTOCOL);
    const pending = (waiting = new Map());
    socket = ws;
    const start = () => {
      const frame = { op: "consume", id: consumerId, queue, prefetch: options.prefetch ?? 1, lease: options.lease ?? 30 };
      ws.send(JSON.stringify(frame));
    };
    ws.onopen = start;
    ws.onmessage = (event) => {
      if (ws !== socket) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (error) {
        report(error);
        return;
      }
      switch (frame.op) {
        case "subscribed":
          attempt = 0;
          wasLive = true;
          setStatus("live", {});
          return;
        case "message":
          deliver(ws, pending, frame);
          return;
        case "acked":
        case "nacked":
        case "extended":
          answer(pending, frame.message, frame, null);
          return;
        case "error": {
          const error = new PgcastError(frame.code, frame.message);
          if (frame.message_id !== undefined && answer(pending, String(frame.message_id), frame, error)) return;
          call(options.onError, error);
          if (frame.id === consumerId) {
            if (isFatal(error)) consumer.close();
            else {
              // The consumer ended on the server (the database went away): start it again.
              setStatus("reconnecting", { error });
              timer = setTimeout(() => ws === socket && ws.readyState === WebSocket.OPEN && start(), backoff(attempt++));
            }
          }
          return;
        }
        default:
          return;
      }
    };
    ws.onclose = () => {
      if (ws !== socket) return;
      socket = null;
      abandon(pending, "the connection closed");
      if (!consumer.closed) retry();
    };
  };

  connect();
  return consumer;
}
