// The live view page: subscribe form, live event list, publish form and queue figures.
// Everything goes through pgcast.js, the same client other pages can import.

import { publish, subscribe } from "./pgcast.js";

const MAX_ROWS = 500;
const MAX_NOTICES = 5;
const PREVIEW_CHARS = 160;
const QUEUE_POLL_MS = 2000;
// Where pgcast is served: the folder above static/, so the page also works when pgcast is
// mounted under a prefix of another application.
const BASE = new URL("..", import.meta.url).href;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  statusText: $("status-text"),
  subscribeForm: $("subscribe-form"),
  topic: $("sub-topic"),
  filter: $("sub-filter"),
  types: $("sub-types"),
  transport: $("sub-transport"),
  stop: $("stop"),
  clear: $("clear"),
  subscribeError: $("subscribe-error"),
  notices: $("notices"),
  count: $("count"),
  lastId: $("last-id"),
  maxRows: $("max-rows"),
  events: $("events"),
  empty: $("empty"),
  publishForm: $("publish-form"),
  pubTopic: $("pub-topic"),
  pubData: $("pub-data"),
  pubType: $("pub-type"),
  pubKey: $("pub-key"),
  publishButton: $("publish"),
  publishResult: $("publish-result"),
  queuesBody: $("queues-body"),
  queuesEmpty: $("queues-empty"),
  queuesUpdated: $("queues-updated"),
};

// The subscription on screen: `key` names its patterns, so that subscribing again to the
// same patterns resumes after the last event shown instead of starting over.
let current = null;
let received = 0;

const STATUS_TEXT = {
  idle: "Not subscribed",
  connecting: "Connecting…",
  live: "Live",
  reconnecting: "Reconnecting…",
  closed: "Stopped",
};

function element(tag, props = {}, text = undefined) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  if (text !== undefined) node.textContent = text;
  return node;
}

function listOf(text) {
  return text.split(/[\s,]+/).filter(Boolean);
}

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.statusText.textContent = text || STATUS_TEXT[state] || state;
}

function showSubscribeError(message) {
  ui.subscribeError.textContent = message;
  ui.subscribeError.hidden = !message;
}

function notice(text, kind = "") {
  const box = element("div", { className: `notice ${kind}`.trim() });
  const dismiss = element("button", { type: "button", className: "link" }, "Dismiss");
  dismiss.setAttribute("aria-label", "Dismiss notice");
  dismiss.addEventListener("click", () => box.remove());
  box.append(element("p", {}, text), dismiss);
  ui.notices.prepend(box);
  while (ui.notices.children.length > MAX_NOTICES) ui.notices.lastElementChild.remove();
}

function shortId(id) {
  return id.replace(/^0+(?=\d)/, "");
}

function clock(time) {
  const moment = new Date(time);
  if (Number.isNaN(moment.getTime())) return time;
  const ms = String(moment.getMilliseconds()).padStart(3, "0");
  return `${moment.toLocaleTimeString([], { hour12: false })}.${ms}`;
}

function preview(data) {
  const text = JSON.stringify(data);
  return text.length > PREVIEW_CHARS ? `${text.slice(0, PREVIEW_CHARS - 1)}…` : text;
}

function updateMeta() {
  ui.count.textContent = `${received} event${received === 1 ? "" : "s"}`;
  const lastId = current && current.subscription && current.subscription.lastId;
  ui.lastId.textContent = lastId || "none";
  ui.empty.hidden = ui.events.children.length > 0;
}

function addRow(envelope) {
  const row = element("li", { className: "event fresh" });
  row.dataset.id = envelope.id;
  const details = element("details");
  const summary = element("summary");
  summary.append(
    element("code", { className: "id", title: `id ${envelope.id}` }, shortId(envelope.id)),
    element("time", { dateTime: envelope.time, title: envelope.time }, clock(envelope.time)),
    element("span", { className: "topic" }, envelope.topic),
    envelope.type ? element("span", { className: "type", title: "type" }, envelope.type) : element("span"),
    envelope.key ? element("span", { className: "key", title: "key" }, `key ${envelope.key}`) : element("span"),
    element("span", { className: "preview mono" }, preview(envelope.data)),
  );
  const body = element("pre");
  // Pretty JSON is built when a row is first opened, not for every event.
  details.addEventListener("toggle", () => {
    if (details.open && !body.textContent) body.textContent = JSON.stringify(envelope, null, 2);
  });
  details.append(summary, body);
  row.append(details);
  ui.events.prepend(row);
  while (ui.events.children.length > MAX_ROWS) ui.events.lastElementChild.remove();
  received += 1;
  updateMeta();
}

function clearRows() {
  ui.events.replaceChildren();
  received = 0;
  updateMeta();
}

function showReset(reset) {
  const reason = reset.reason ? ` (${reset.reason})` : "";
  notice(
    `Stream reset${reason}: ${reset.message || "the resume point is gone"}. ` +
      `Continuing from the oldest event still kept, ${reset.oldest}; some events were skipped.`,
  );
}

function stopSubscription() {
  if (current) current.subscription.close();
  ui.stop.disabled = true;
}

function startSubscription({ topic, filter, types, transport, after }) {
  showSubscribeError("");
  const patterns = listOf(topic);
  if (!patterns.length) {
    ui.topic.setAttribute("aria-invalid", "true");
    showSubscribeError("Enter a topic or pattern.");
    ui.topic.focus();
    return;
  }
  ui.topic.removeAttribute("aria-invalid");
  const key = patterns.join(" ");
  let start = after || undefined;
  if (current) {
    const previous = current;
    previous.subscription.close();
    if (previous.key === key && previous.subscription.lastId) {
      // Same topic: carry on right after the last event shown, nothing lost or repeated.
      start = previous.subscription.lastId;
    } else if (previous.key !== key) {
      clearRows();
    }
  }
  // Registered before subscribing: the client reports "connecting" straight away.
  const entry = { key, subscription: null };
  current = entry;
  try {
    entry.subscription = subscribe(BASE, patterns, {
      after: start,
      filter: filter || undefined,
      types: listOf(types),
      transport,
      onEvent: addRow,
      onReset: showReset,
      onStatus: (status, detail) => {
        if (current !== entry) return;
        if (status === "closed" && detail && detail.error) {
          setStatus("error", `Error: ${detail.error.code}`);
          showSubscribeError(`${detail.error.code}: ${detail.error.message}`);
          ui.stop.disabled = true;
        } else {
          setStatus(status);
          if (status === "closed") ui.stop.disabled = true;
        }
      },
    });
  } catch (error) {
    current = null;
    setStatus("idle");
    showSubscribeError(error.message);
    return;
  }
  ui.stop.disabled = false;
  if (!ui.pubTopic.value && patterns.length === 1 && !/[*>]/.test(patterns[0])) ui.pubTopic.value = patterns[0];
  const params = new URLSearchParams({ topic });
  if (filter) params.set("filter", filter);
  if (types) params.set("types", types);
  if (transport !== "sse") params.set("transport", transport);
  history.replaceState(null, "", `?${params}`);
  updateMeta();
}

function formValues() {
  return {
    topic: ui.topic.value.trim(),
    filter: ui.filter.value.trim(),
    types: ui.types.value.trim(),
    transport: ui.transport.value,
  };
}

async function onPublish(event) {
  event.preventDefault();
  ui.publishResult.classList.remove("error");
  const topic = ui.pubTopic.value.trim();
  if (!topic) {
    ui.pubTopic.setAttribute("aria-invalid", "true");
    ui.publishResult.classList.add("error");
    ui.publishResult.textContent = "Enter a topic to publish to.";
    ui.pubTopic.focus();
    return;
  }
  ui.pubTopic.removeAttribute("aria-invalid");
  let data;
  try {
    data = JSON.parse(ui.pubData.value);
  } catch (error) {
    ui.pubData.setAttribute("aria-invalid", "true");
    ui.publishResult.classList.add("error");
    ui.publishResult.textContent = `The data is not valid JSON: ${error.message}`;
    ui.pubData.focus();
    return;
  }
  ui.pubData.removeAttribute("aria-invalid");
  const type = ui.pubType.value.trim();
  // EventSource only delivers the types it listens for: make sure this one shows.
  if (type && current) current.subscription.listen(type);
  ui.publishButton.disabled = true;
  try {
    const published = await publish(BASE, topic, data, { type, key: ui.pubKey.value.trim() });
    ui.publishResult.textContent = `Published ${shortId(published.id)} to ${published.topic}.`;
  } catch (error) {
    ui.publishResult.classList.add("error");
    ui.publishResult.textContent = `Not published: ${error.code ? `${error.code}: ` : ""}${error.message}`;
  } finally {
    ui.publishButton.disabled = false;
  }
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function renderQueues(queues) {
  const rows = queues.map((q) => {
    const row = element("tr");
    row.dataset.queue = q.queue;
    row.append(element("th", { scope: "row", className: "mono" }, q.queue));
    for (const name of ["ready", "leased", "delayed", "dead"]) {
      const cell = element("td", { className: `num ${name}` }, String(q[name]));
      if (name === "dead" && q.dead > 0) cell.classList.add("dead-some");
      row.append(cell);
    }
    row.append(element("td", { className: "num oldest" }, age(q.oldest_ready_age_seconds)));
    return row;
  });
  ui.queuesBody.replaceChildren(...rows);
  ui.queuesEmpty.hidden = queues.length > 0;
}

async function pollQueues() {
  if (!document.hidden) {
    try {
      const response = await fetch(new URL("queues", BASE), {
        headers: { Accept: "application/json" },
        cache: "no-store",
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const body = await response.json();
      renderQueues(body.queues);
      ui.queuesUpdated.textContent = `Updated ${new Date().toLocaleTimeString([], { hour12: false })}, every 2 s`;
    } catch {
      ui.queuesUpdated.textContent = "Queue figures unavailable; retrying every 2 s";
    }
  }
  setTimeout(pollQueues, QUEUE_POLL_MS);
}

function init() {
  ui.maxRows.textContent = String(MAX_ROWS);
  ui.subscribeForm.addEventListener("submit", (event) => {
    event.preventDefault();
    startSubscription(formValues());
  });
  ui.stop.addEventListener("click", stopSubscription);
  ui.clear.addEventListener("click", clearRows);
  ui.publishForm.addEventListener("submit", onPublish);

  const params = new URLSearchParams(location.search);
  ui.topic.value = params.get("topic") || "";
  ui.filter.value = params.get("filter") || "";
  ui.types.value = params.get("types") || "";
  ui.transport.value = params.get("transport") === "ws" ? "ws" : "sse";
  updateMeta();
  if (ui.topic.value) startSubscription({ ...formValues(), after: params.get("after") || undefined });
  else ui.topic.focus();
  pollQueues();
}

init();
