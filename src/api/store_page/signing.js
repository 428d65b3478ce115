// The Store servlet's request signature (SPEC §4.1), made in the browser with WebCrypto so that
// the secret never travels: HMAC-SHA256 over the method, the host as the proxy sees it, the raw
// path and the sorted, percent-encoded parameters; Base64 of the MAC is `Signature`.

export const SIGNATURE_METHOD = "HmacSHA256";
export const SIGNATURE_VERSION = "2";
export const API_VERSION = "2009-10-01";
/** How long a signature lives, as the servlet signs: now + 30 s. */
export const TTL_SECONDS = 30;

const utf8 = new TextEncoder();

/** Every UTF-8 byte but A-Z a-z 0-9 - _ . ~ as %XX, upper-case hex (a space is %20). */
export function encode(text) {
  let out = "";
  for (const byte of utf8.encode(String(text))) {
    const unreserved =
      (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a) ||
      (byte >= 0x30 && byte <= 0x39) || byte === 0x2d || byte === 0x5f ||
      byte === 0x2e || byte === 0x7e;
    out += unreserved
      ? String.fromCharCode(byte)
      : "%" + byte.toString(16).toUpperCase().padStart(2, "0");
  }
  return out;
}

/** Java String order (UTF-16 code units), which the servlet's TreeMap uses: JS compares so too. */
function javaCompare(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The fourth line: every parameter but Signature, sorted by name then value, encoded, joined. */
export function canonicalParameters(params) {
  return params
    .filter(([name]) => name !== "Signature")
    .slice()
    .sort((a, b) => javaCompare(a[0], b[0]) || javaCompare(a[1], b[1]))
    .map(([name, value]) => `${encode(name)}=${encode(value)}`)
    .join("&");
}

/**
 * The host as the proxy signs it from the Host header the browser sends: lower case, with
 * `:port` unless the port is 80. A URL's `port` is empty when it is the scheme's default, and
 * then the browser's Host header carries no port either.
 */
export function signingHost(url) {
  const host = url.hostname.toLowerCase();
  return url.port === "" || url.port === "80" ? host : `${host}:${url.port}`;
}

export function stringToSign(method, host, path, params) {
  return [method.toUpperCase(), host, path, canonicalParameters(params)].join("\n");
}

function base64(bytes) {
  let binary = "";
  for (const byte of new Uint8Array(bytes)) binary += String.fromCharCode(byte);
  return btoa(binary);
}

/** Base64 (padded) of HMAC-SHA256(secret, text). */
export async function hmac(secret, text) {
  const key = await crypto.subtle.importKey(
    "raw", utf8.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return base64(await crypto.subtle.sign("HMAC", key, utf8.encode(text)));
}

/** An opaque decimal nonce from 64 random bits (the servlet sends System.nanoTime()). */
export function freshNonce() {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return ((BigInt(words[0]) << 32n) | BigInt(words[1])).toString();
}

/**
 * Returns `params` plus the servlet's signing parameters and `Signature` last, for `method` on
 * `url` (a URL object). `stamp` is {clientId, expires, nonce}.
 */
export async function sign(secret, method, url, params, stamp) {
  const all = [
    ...params,
    ["SignatureMethod", SIGNATURE_METHOD],
    ["SignatureVersion", SIGNATURE_VERSION],
    ["Version", API_VERSION],
    ["ClientId", stamp.clientId],
    ["Expires", String(stamp.expires)],
    ["Nonce", String(stamp.nonce)],
  ];
  const text = stringToSign(method, signingHost(url), url.pathname, all);
  all.push(["Signature", await hmac(secret, text)]);
  return all;
}

/** `name=value&...`, encoded as for signing: the form body of a POST, the query of a GET. */
export function formEncode(params) {
  return params.map(([name, value]) => `${encode(name)}=${encode(value)}`).join("&");
}
