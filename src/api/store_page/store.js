// The Store page: the catalog with each image's state, Install / Cancel / Clear-error, live
// progress while installs run. It speaks the UI API exactly as the Eucalyptus Store tab does
// (SPEC §4): signed requests (signing.js), `{images, states, sections}` replies, actions POSTed to
// the URIs the proxy hands out. The secret is typed in once and kept in this tab's session
// storage; the server never sends it.

import { sign, formEncode, freshNonce, TTL_SECONDS } from "./signing.js";

const SECRET_KEY = "image-store-proxy.secret";
const CLIENT_ID = "store-page";
/** How often states are polled while an install runs, in milliseconds. */
const POLL_MS = 1000;
const BAD_SIGNATURE = "Bad request signature";

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
  pollTimer: null,
  searching: false,
};

class SignatureRefused extends Error {}

/** One signed call. Resolves to the reply's JSON object (errors included: the API always sends
 *  one); rejects when the proxy cannot be reached or the reply is not JSON. */
async function call(method, target, params = []) {
  const url = new URL(target, location.href);
  const signed = await sign(page.secret, method, url, params, {
    clientId: CLIENT_ID,
    expires: Math.floor(Date.now() / 1000) + page.clockOffset + TTL_SECONDS,
    nonce: freshNonce(),
  });
  const body = formEncode(signed);
  let response;
  if (method === "GET") {
    url.search = body;
    response = await fetch(url, { method, cache: "no-store" });
  } else {
    response = await fetch(url, {
      method,
      cache: "no-store",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body,
    });
  }
  learnClock(response);
  const text = await response.text();
  let reply;
  try {
    reply = JSON.parse(text);
  } catch {
    throw new Error(`${url.pathname}: HTTP ${response.status}, not JSON: ${text.slice(0, 120)}`);
  }
  if (reply["error-message"] === BAD_SIGNATURE) throw new SignatureRefused(BAD_SIGNATURE);
  return reply;
}

function learnClock(response) {
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) page.clockOffset = Math.round((date - Date.now()) / 1000);
}

function showMessage(text, kind = "error") {
  const message = $("message");
  message.textContent = text;
  message.className = `message ${kind}`;
  message.hidden = !text;
}

function showLogin(reason) {
  stopPolling();
  page.secret = null;
  sessionStorage.removeItem(SECRET_KEY);
  $("login").hidden = false;
  $("session").hidden = true;
  $("search").hidden = true;
  $("stale").hidden = true;
  $("catalog").replaceChildren();
  page.cards.clear();
  if (reason) showMessage(reason);
  $("secret").value = "";
  $("secret").focus();
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
  try {
    // Unsigned: learns the proxy's clock before the first signature.
    learnClock(await fetch(new URL("/healthz", location.href), { cache: "no-store" }));
    const reply = await call("GET", "/api/dashboard");
    sessionStorage.setItem(SECRET_KEY, secret);
    $("login").hidden = true;
    $("session").hidden = false;
    $("search").hidden = false;
    showEnvelope(reply);
  } catch (error) {
    if (error instanceof SignatureRefused) showLogin(refusedText());
    else {
      showLogin();
      showMessage(`Cannot reach the proxy at ${location.host}: ${error.message}`);
    }
  }
}

async function loadDashboard() {
  try {
    page.searching = false;
    $("show-all").hidden = true;
    showEnvelope(await call("GET", "/api/dashboard"));
  } catch (error) {
    failed(error);
  }
}

async function search(query) {
  try {
    page.searching = true;
    $("show-all").hidden = false;
    showEnvelope(await call("GET", "/api/search", [["q", query]]));
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
  for (const state of reply.states || []) page.states.set(state["image-uri"], state);
  if (reply.state) page.states.set(reply.state["image-uri"], reply.state);
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

function drawCatalog() {
  const catalog = $("catalog");
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
}

function iconFor(image) {
  const fallback = element("div", { class: "icon placeholder", "aria-hidden": "true", text: (image.title || "?").trim().charAt(0).toUpperCase() });
  if (!image["icon-uri"]) return fallback;
  const icon = element("img", { class: "icon", alt: "", src: image["icon-uri"], width: 64, height: 64, referrerpolicy: "no-referrer" });
  icon.addEventListener("error", () => icon.replaceWith(fallback), { once: true });
  return icon;
}

function makeCard(image) {
  const status = element("span", { class: "status" });
  const upgrade = element("span", { class: "badge", text: "Upgrade", hidden: "" });
  const progress = element("progress", { max: 100, value: 0 });
  const percent = element("span", { class: "percent" });
  const progressRow = element("div", { class: "progress" }, progress, percent);
  const detail = element("p", { class: "detail" });
  const error = element("p", { class: "error-line", role: "alert" });
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
  const root = element("article", { class: "image", "data-uri": image.uri, "data-title": image.title },
    iconFor(image),
    element("div", { class: "body" },
      element("h3", {}, element("span", { class: "title", text: image.title }), " ", upgrade, " ", status),
      element("p", { class: "summary", text: image.summary }),
      facts, progressRow, detail, error, ids, description),
    actions);
  return { root, status, upgrade, progress, percent, progressRow, detail, error, ids, actions };
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
  // Rebuilt only when the actions change: a button must not vanish under the pointer at a poll.
  const actionsKey = JSON.stringify(state.actions || {});
  if (card.actionsKey === actionsKey) return;
  card.actionsKey = actionsKey;
  const buttons = Object.entries(state.actions || {})
    .filter(([name]) => ACTION_LABELS[name])
    .sort(([a], [b]) => Object.keys(ACTION_LABELS).indexOf(a) - Object.keys(ACTION_LABELS).indexOf(b))
    .map(([name, target]) => {
      const button = element("button", { type: "button", "data-action": name, class: name === "install" ? "primary" : "", text: ACTION_LABELS[name] });
      button.addEventListener("click", () => act(uri, name, target, button));
      return button;
    });
  card.actions.replaceChildren(...buttons);
}

/** POSTs an action URI the proxy handed out, as the Store tab does; the reply is the new state. */
async function act(uri, name, target, button) {
  button.disabled = true;
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
    button.disabled = false;
    failed(error);
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
    showMessage(`Lost contact with the proxy (retrying): ${error.message}`, "warning");
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
