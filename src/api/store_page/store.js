// The Store page: the catalog with each image's state, Install / Cancel / Clear-error, live
// progress while installs run. It speaks the UI API exactly as the Eucalyptus Store tab does
// (SPEC §4): signed requests (signing.js), `{images, states, sections}` replies, actions POSTed to
// the URIs the proxy hands out. The secret is typed in once and kept in this tab's session
// storage; the server never sends it. For screen readers only status changes are announced (one
// small live region), and a re-drawn button keeps the keyboard focus; every request has a timeout.

import { sign, formEncode, freshNonce, TTL_SECONDS } from "./signing.js";

const SECRET_KEY = "image-store-proxy.secret";
const CLIENT_ID = "store-page";
/** How often states are polled while an install runs, in milliseconds. */
const POLL_MS = 1000;
const BAD_SIGNATURE = "Bad request signature";
/** How long a poll, an action or the clock probe may go unanswered before it counts as lost
 *  contact (a hung request must not silently stop the updates). */
const REQUEST_TIMEOUT_MS = 10_000;
/** The dashboard and search may wait while the proxy refreshes the upstream catalog (several
 *  documents, each allowed 20 s by the proxy's limits), so they get longer. */
const CATALOG_TIMEOUT_MS = 60_000;

const $ = (id) => document.getElementById(id);

const page = {
  secret: null,
  /** Server time minus local time, in seconds, from the Date header: signatures expire by the
   *  proxy's clock, not this computer's. */
  clockOffset: 0,
  images: new Map(),
  states: new Map(),
  sections: [],
  cards: new Map(),
  /** Each image's last status seen, so that only a change is announced. */
  announced: new Map(),
  pollTimer: null,
  searching: false,
};

class SignatureRefused extends Error {}

/** A fetch and its body within `timeoutMs`; past it the request is aborted and the error says so. */
async function timedFetch(url, init, timeoutMs) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    const response = await fetch(url, { ...init, signal: abort.signal });
    return { response, text: await response.text() };
  } catch (error) {
    if (abort.signal.aborted) throw new Error(`no answer within ${timeoutMs / 1000} s`);
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** One signature and one request; resolves to the parsed JSON reply. */
async function signedCall(method, target, params, timeoutMs) {
  const url = new URL(target, location.href);
  const signed = await sign(page.secret, method, url, params, {
    clientId: CLIENT_ID,
    expires: Math.floor(Date.now() / 1000) + page.clockOffset + TTL_SECONDS,
    nonce: freshNonce(),
  });
  const body = formEncode(signed);
  let init;
  if (method === "GET") {
    url.search = body;
    init = { method, cache: "no-store" };
  } else {
    init = {
      method,
      cache: "no-store",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body,
    };
  }
  const { response, text } = await timedFetch(url, init, timeoutMs);
  learnClock(response);
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${url.pathname}: HTTP ${response.status}, not JSON: ${text.slice(0, 120)}`);
  }
}

/** One signed call. Resolves to the reply's JSON object (errors included: the API always sends
 *  one); rejects when the proxy cannot be reached in time or the reply is not JSON, and with
 *  SignatureRefused only when the secret itself is refused. */
async function call(method, target, params = [], timeoutMs = REQUEST_TIMEOUT_MS) {
  let reply = await signedCall(method, target, params, timeoutMs);
  if (reply["error-message"] === BAD_SIGNATURE) {
    // The proxy says the same for a wrong secret and for a signature that expired on the way (a
    // slow network, a clock that jumped): re-learn its clock and sign once more before blaming
    // the secret. A refused request did nothing, so sending it again is safe.
    await syncClock();
    reply = await signedCall(method, target, params, timeoutMs);
    if (reply["error-message"] === BAD_SIGNATURE) throw new SignatureRefused(BAD_SIGNATURE);
  }
  showContactLost(null);
  return reply;
}

function learnClock(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) page.clockOffset = Math.round((date - Date.now()) / 1000);
}

/** Unsigned `/healthz`: the proxy's clock, before the first signature and after a refused one. */
async function syncClock() {
  const { response } = await timedFetch(new URL("/healthz", location.href), { cache: "no-store" }, REQUEST_TIMEOUT_MS);
  learnClock(response);
}

/** The one-line notice while polls go unanswered (`null` hides it once one is answered). */
function showContactLost(cause) {
  const notice = $("contact");
  notice.textContent = cause ? `Lost contact with the proxy, retrying (${cause}).` : "";
  notice.hidden = !cause;
}

/** Says `text` once to a screen reader, through the page's one live region. */
function announce(text) {
  $("announce").textContent = text;
}

function showMessage(text, kind = "error") {
  const message = $("message");
  message.textContent = text;
  message.className = `message ${kind}`;
  message.hidden = !text;
}

/** Back to the secret form. `keepSecret` after a transient failure: the secret may well be
 *  right, so it stays in the field and in this tab for the next try. */
function showLogin(reason, { keepSecret = false } = {}) {
  stopPolling();
  if (!keepSecret) {
    page.secret = null;
    sessionStorage.removeItem(SECRET_KEY);
    $("secret").value = "";
  } else if (!$("secret").value && page.secret) {
    $("secret").value = page.secret; // remembered from this tab: Enter tries again
  }
  $("login").hidden = false;
  $("session").hidden = true;
  $("search").hidden = true;
  $("stale").hidden = true;
  showContactLost(null);
  const catalog = $("catalog");
  catalog.removeAttribute("aria-busy");
  catalog.replaceChildren();
  page.cards.clear();
  page.announced.clear();
  if (reason) showMessage(reason);
  $("secret").focus();
}

/** Shown at once while the first dashboard is on its way (the proxy may be refreshing upstream). */
function showLoading() {
  const catalog = $("catalog");
  catalog.setAttribute("aria-busy", "true");
  catalog.replaceChildren(element("p", { class: "empty catalog-loading", text: "Loading the catalog\u2026" }));
}

function refusedText() {
  return "The proxy refused the request signature: the secret is wrong. " +
    "Enter the secret the proxy was started with (--fake-eucalyptus SECRET, or the cloud " +
    "administrator's EC2_SECRET_KEY).";
}

/** Any failure of a call, shown where a person looks: a refused signature returns to the login. */
function failed(error) {
  if (error instanceof SignatureRefused) {
    showLogin(refusedText());
  } else {
    showMessage(`Cannot talk to the proxy: ${error.message}`);
  }
}

async function connect(secret) {
  page.secret = secret;
  showMessage("");
  $("login").hidden = true;
  showLoading();
  try {
    await syncClock();
    const reply = await call("GET", "/api/dashboard", [], CATALOG_TIMEOUT_MS);
    sessionStorage.setItem(SECRET_KEY, secret);
    $("session").hidden = false;
    $("search").hidden = false;
    showEnvelope(reply);
    // The form that had the focus is gone: start the keyboard at the search field.
    if (!document.activeElement || document.activeElement === document.body) $("query").focus();
  } catch (error) {
    if (error instanceof SignatureRefused) showLogin(refusedText());
    else showLogin(`Cannot reach the proxy at ${location.host}: ${error.message}`, { keepSecret: true });
  }
}

async function loadDashboard() {
  try {
    page.searching = false;
    $("show-all").hidden = true;
    showEnvelope(await call("GET", "/api/dashboard", [], CATALOG_TIMEOUT_MS));
  } catch (error) {
    failed(error);
  }
}

async function search(query) {
  try {
    page.searching = true;
    $("show-all").hidden = false;
    showEnvelope(await call("GET", "/api/search", [["q", query]], CATALOG_TIMEOUT_MS));
  } catch (error) {
    failed(error);
  }
}

/** A dashboard or search reply: the catalog is redrawn; `error-message` is the stale banner. */
function showEnvelope(reply) {
  const stale = $("stale");
  const problem = reply["error-message"];
  stale.hidden = !problem;
  stale.textContent = problem
    ? `The image store could not be refreshed; showing the last catalog the proxy verified. ${problem}`
    : "";
  merge(reply);
  page.sections = reply.sections || [];
  drawCatalog();
  schedulePoll();
}

function merge(reply) {
  for (const image of reply.images || []) page.images.set(image.uri, image);
  for (const state of [...(reply.states || []), ...(reply.state ? [reply.state] : [])]) {
    page.states.set(state["image-uri"], state);
    noteStatus(state);
  }
}

/** Announces an image's status when it changes ("Ubuntu 9.10 Server: installed"), never at the
 *  first sight of an image nor at a poll that brings the same status. */
function noteStatus(state) {
  const uri = state["image-uri"];
  const before = page.announced.get(uri);
  page.announced.set(uri, state.status);
  if (before === undefined || before === state.status) return;
  const image = page.images.get(uri);
  const label = (STATUS_LABELS[state.status] || state.status).toLowerCase();
  const error = state["error-message"];
  announce(`${image ? image.title : uri}: ${label}${error ? ` (${error})` : ""}`);
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (value !== undefined && value !== null) node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

/** Which image's action button has the focus, so that a redraw can give it back. */
function focusedAction() {
  const active = document.activeElement;
  const card = active && active.closest ? active.closest("article.image") : null;
  if (!card) return null;
  const buttons = [...card.querySelectorAll(".actions button")];
  return { uri: card.dataset.uri, index: buttons.indexOf(active) };
}

/** Focus on the same image's action button (its index, else the first), or the card itself. */
function restoreFocus(where) {
  const card = where && page.cards.get(where.uri);
  if (!card || card.root.contains(document.activeElement)) return;
  const buttons = card.actions.querySelectorAll("button");
  (buttons[Math.min(Math.max(where.index, 0), buttons.length - 1)] || card.root).focus();
}

function drawCatalog() {
  const catalog = $("catalog");
  const focused = focusedAction();
  page.cards.clear();
  const sections = page.sections.map((section) => {
    const list = element("div", { class: "images" });
    for (const uri of section["image-uris"] || []) {
      const image = page.images.get(uri);
      if (!image) continue;
      const card = makeCard(image);
      page.cards.set(uri, card);
      list.append(card.root);
      updateCard(uri);
    }
    if (!list.children.length) {
      list.append(element("p", { class: "empty", text: page.searching ? "No image matches." : "No images." }));
    }
    return element("section", { class: "section" },
      element("h2", { text: section.title }),
      section.summary ? element("p", { class: "summary", text: section.summary }) : null,
      list);
  });
  if (!sections.length) {
    sections.push(element("p", { class: "empty", text: "The catalog is empty: no image store catalog has been verified yet." }));
  }
  catalog.replaceChildren(...sections);
  catalog.removeAttribute("aria-busy");
  restoreFocus(focused);
}

function iconFor(image) {
  const fallback = element("div", { class: "icon placeholder", "aria-hidden": "true", text: (image.title || "?").trim().charAt(0).toUpperCase() });
  if (!image["icon-uri"]) return fallback;
  const icon = element("img", { class: "icon", alt: "", src: image["icon-uri"], width: 64, height: 64, referrerpolicy: "no-referrer" });
  icon.addEventListener("error", () => icon.replaceWith(fallback), { once: true });
  return icon;
}

function makeCard(image) {
  const title = image.title;
  const status = element("span", { class: "status" });
  const upgrade = element("span", { class: "badge", text: "Upgrade", hidden: "" });
  const progress = element("progress", { max: 100, value: 0 });
  const percent = element("span", { class: "percent" });
  const progressRow = element("div", { class: "progress" }, progress, percent);
  const detail = element("p", { class: "detail" });
  // Not an alert: a failure is announced once, with its status change (noteStatus).
  const error = element("p", { class: "error-line" });
  const ids = element("p", { class: "ids" });
  const actions = element("div", { class: "actions" });
  const provider = image.provider
    ? image.provider.uri
      ? element("a", { href: image.provider.uri, target: "_blank", rel: "noopener noreferrer", text: image.provider.title })
      : element("span", { text: image.provider.title })
    : element("span", { text: "unknown provider" });
  const facts = element("p", { class: "facts" },
    element("span", { class: "version", text: `Version ${image.version}` }), " \u00b7 ",
    element("span", { class: "size", text: `${image["size-in-mb"]} MB` }), " \u00b7 ",
    element("span", { class: "provider" }, "by ", provider));
  let description = null;
  if (image["description-html"]) {
    // Signed upstream text, sanitised by the proxy (SPEC §4.3); the page's CSP runs no script.
    const body = element("div", { class: "description" });
    const template = document.createElement("template");
    template.innerHTML = image["description-html"];
    body.append(template.content);
    description = element("details", {}, element("summary", { text: "Details" }), body);
  }
  // Focusable by script only: where the focus goes when the last action button goes away.
  const root = element("article", { class: "image", "data-uri": image.uri, "data-title": image.title, tabindex: "-1" },
    iconFor(image),
    element("div", { class: "body" },
      element("h3", {}, element("span", { class: "title", text: image.title }), " ", upgrade, " ", status),
      element("p", { class: "summary", text: image.summary }),
      facts, progressRow, detail, error, ids, description),
    actions);
  return { root, title, status, upgrade, progress, percent, progressRow, detail, error, ids, actions };
}

const ACTION_LABELS = { install: "Install", cancel: "Cancel", "clear-error": "Clear error" };
const STATUS_LABELS = { uninstalled: "Not installed", downloading: "Downloading", installing: "Installing", installed: "Installed" };

function updateCard(uri) {
  const card = page.cards.get(uri);
  const state = page.states.get(uri);
  if (!card || !state) return;
  const status = state.status;
  const running = status === "downloading" || status === "installing";
  card.root.dataset.status = status;
  card.status.textContent = STATUS_LABELS[status] || status;
  card.status.className = `status ${status}`;
  card.upgrade.hidden = !state["is-upgrade"];
  card.progressRow.hidden = !running;
  if (running) {
    const value = state["progress-percentage"] ?? 0;
    card.progress.value = value;
    card.percent.textContent = `${value}%`;
    card.progress.setAttribute("aria-label", `${STATUS_LABELS[status]}: ${value}%`);
  }
  const detail = running ? state["status-detail"] : null;
  card.detail.textContent = detail || "";
  card.detail.hidden = !detail;
  card.error.textContent = state["error-message"] || "";
  card.error.hidden = !state["error-message"];
  const idText = [["machine image", state.emi], ["kernel", state.eki], ["ramdisk", state.eri]]
    .filter(([, id]) => id).map(([what, id]) => `${what} ${id}`).join(", ");
  card.ids.textContent = status === "installed" && idText ? `Registered: ${idText}` : "";
  card.ids.hidden = !card.ids.textContent;
  // Touched only when the actions change, and then updated in place: Install becomes Cancel on
  // the same button, so it neither vanishes under the pointer nor drops the keyboard focus.
  const actionsKey = JSON.stringify(state.actions || {});
  if (card.actionsKey === actionsKey) return;
  card.actionsKey = actionsKey;
  const hadFocus = card.root.contains(document.activeElement);
  const wanted = Object.entries(state.actions || {})
    .filter(([name]) => ACTION_LABELS[name])
    .sort(([a], [b]) => Object.keys(ACTION_LABELS).indexOf(a) - Object.keys(ACTION_LABELS).indexOf(b));
  const buttons = [...card.actions.children];
  wanted.forEach(([name, target], index) => {
    let button = buttons[index];
    if (!button) {
      button = element("button", { type: "button" });
      button.addEventListener("click", () => act(uri, button));
      card.actions.append(button);
    }
    button.dataset.action = name;
    button.dataset.target = target;
    button.className = name === "install" ? "primary" : "";
    button.textContent = ACTION_LABELS[name];
    // The visible word first (what speech control users say), then the image it acts on.
    button.setAttribute("aria-label", `${ACTION_LABELS[name]} ${card.title}`);
    button.removeAttribute("aria-disabled");
  });
  for (const extra of buttons.slice(wanted.length)) extra.remove();
  if (hadFocus && !card.root.contains(document.activeElement)) {
    (card.actions.querySelector("button") || card.root).focus();
  }
}

/** POSTs an action URI the proxy handed out, as the Store tab does; the reply is the new state.
 *  While it runs the button is aria-disabled, not disabled: a disabled button loses the focus. */
async function act(uri, button) {
  if (button.getAttribute("aria-disabled") === "true") return;
  const name = button.dataset.action;
  const target = button.dataset.target;
  button.setAttribute("aria-disabled", "true");
  try {
    const reply = await call("POST", target);
    if (reply.state) {
      merge(reply);
      showMessage("");
    } else if (reply["error-message"]) {
      showMessage(`${ACTION_LABELS[name]} failed: ${reply["error-message"]}`);
    }
    updateCard(uri);
    schedulePoll();
  } catch (error) {
    failed(error);
  } finally {
    button.removeAttribute("aria-disabled");
  }
}

function running() {
  return [...page.states.values()].filter((s) => s.status === "downloading" || s.status === "installing");
}

function stopPolling() {
  clearTimeout(page.pollTimer);
  page.pollTimer = null;
}

/** While anything runs, ask for its state every second; the poll also brings every other install
 *  under way or failed (SPEC §4.2), so installs started elsewhere show up too. */
function schedulePoll() {
  stopPolling();
  if (!page.secret || !running().length) return;
  page.pollTimer = setTimeout(poll, POLL_MS);
}

async function poll() {
  const asked = running().map((state) => ["image-uri", state["image-uri"]]);
  try {
    const reply = await call("POST", "/api/states", asked);
    if (reply["error-message"]) throw new Error(reply["error-message"]);
    const before = new Set(page.cards.keys());
    merge(reply);
    for (const state of reply.states || []) updateCard(state["image-uri"]);
    // An install started elsewhere for an image not on screen: redraw to show it.
    if ((reply.states || []).some((s) => !before.has(s["image-uri"]) && !page.searching)) {
      await loadDashboard();
      return;
    }
  } catch (error) {
    if (error instanceof SignatureRefused) return failed(error);
    showContactLost(error.message);
  }
  schedulePoll();
}

function start() {
  if (!window.isSecureContext || !window.crypto || !crypto.subtle) {
    $("insecure").hidden = false;
    return;
  }
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const secret = $("secret").value;
    if (secret) connect(secret);
  });
  $("forget").addEventListener("click", () => {
    showLogin();
    showMessage("The secret is forgotten in this tab.", "info");
  });
  $("refresh").addEventListener("click", () => loadDashboard());
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = $("query").value.trim();
    if (query) search(query);
    else loadDashboard();
  });
  $("show-all").addEventListener("click", () => {
    $("query").value = "";
    loadDashboard();
  });
  const remembered = sessionStorage.getItem(SECRET_KEY);
  if (remembered) connect(remembered);
  else showLogin();
}

start();
