// The ledger's HTTP API as functions. This is the only module that builds
// URLs: every request names its route with route('METHOD', '/path/{param}')
// exactly as the OpenAPI document spells it, and k6/check.mjs verifies each
// such call against the server's spec.
import http from 'k6/http';
import { sleep } from 'k6';
import { randomBytes } from 'k6/crypto';
import { Counter } from 'k6/metrics';
import { BASE_URL, SERVICE_TOKEN } from './config.js';

// Attempts that were repeated with the same Idempotency-Key.
const writeRetries = new Counter('write_retries');

// --- identifiers -----------------------------------------------------------

// A random (version 4) UUID from 16 random bytes.
export function uuidv4() {
  const b = new Uint8Array(randomBytes(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// One key per logical operation; a retry of that operation reuses it.
export function newKey(label = 'k6') {
  return `${label}-${uuidv4()}`;
}

// --- URLs ------------------------------------------------------------------

// A documented route: `{name}` placeholders are filled from `params`.
export function route(method, path, params = {}) {
  const url = path.replace(/\{([A-Za-z_]+)\}/g, (_, name) => {
    const value = params[name];
    if (value === undefined || value === null) {
      throw new Error(`${method} ${path}: no value for {${name}}`);
    }
    return encodeURIComponent(String(value));
  });
  return { method, path, url: BASE_URL + url };
}

// A document the server serves outside its OpenAPI paths (the spec itself,
// Swagger UI, Prometheus metrics); check.mjs keeps a fixed list of these.
export function unlisted(method, path) {
  return { method, path, url: BASE_URL + path };
}

function queryString(query) {
  if (!query) return '';
  const parts = [];
  for (const [name, value] of Object.entries(query)) {
    if (value === undefined || value === null) continue;
    parts.push(`${encodeURIComponent(name)}=${encodeURIComponent(String(value))}`);
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

// --- sending ---------------------------------------------------------------

// k6 counts a response as failed unless its status is listed as expected.
// One callback object per list of statuses, built once per VU.
const callbacks = {};
function expectedStatuses(statuses) {
  const id = statuses.join(',');
  if (!callbacks[id]) callbacks[id] = http.expectedStatuses(...statuses);
  return callbacks[id];
}

// Header lookup that does not depend on how k6 capitalizes names.
export function header(res, name) {
  const wanted = name.toLowerCase();
  for (const [key, value] of Object.entries(res.headers || {})) {
    if (key.toLowerCase() === wanted) return value;
  }
  return undefined;
}

// The problem+json `code` of an error response, or undefined.
export function problemCode(res) {
  if (typeof res.body !== 'string' || res.body === '') return undefined;
  try {
    return JSON.parse(res.body).code;
  } catch (_) {
    return undefined;
  }
}

// Parsed JSON body, or undefined (also when the body was discarded).
export function json(res) {
  if (typeof res.body !== 'string' || res.body === '') return undefined;
  try {
    return JSON.parse(res.body);
  } catch (_) {
    return undefined;
  }
}

// Whether a write may be sent again with the same key: nothing answered
// (status 0), the server was unavailable (503), the first attempt is still
// running (409 idempotency_in_flight), or a limit said "later" (429). None of
// these are stored under the key, so the retry executes at most once.
function retriable(res) {
  if (res.status === 0 || res.status === 503 || res.status === 429) return true;
  return res.status === 409 && problemCode(res) === 'idempotency_in_flight';
}

const RETRY_ATTEMPTS = 5;
const RETRY_BASE_S = 0.2;
const RETRY_CAP_S = 10;

// Seconds to wait before attempt `attempt + 1`: the server's Retry-After
// when it sent one, otherwise exponential backoff with full jitter.
function backoff(res, attempt) {
  const after = Number(header(res, 'Retry-After'));
  if (Number.isFinite(after) && after >= 0) return Math.min(after, RETRY_CAP_S);
  return Math.random() * Math.min(RETRY_CAP_S, RETRY_BASE_S * 2 ** (attempt - 1));
}

// Sends `attempt()` until it gets an answer that is not retriable, or the
// attempts run out. `attempt` must reuse one Idempotency-Key.
export function withRetry(attempt, attempts = RETRY_ATTEMPTS) {
  for (let n = 1; ; n++) {
    const res = attempt();
    if (n >= attempts || !retriable(res)) return res;
    writeRetries.add(1);
    sleep(backoff(res, n));
  }
}

// One request. Options:
//   token   bearer token (none for the operational routes)
//   query   object of query parameters (undefined values are left out)
//   body    object sent as JSON
//   key     Idempotency-Key (null: send none)
//   expect  statuses that are not failures (default [200])
//   keepBody  keep the body even when the script discards bodies
//   retry   resend on status 0/503/429/in-flight with the same key
function send(r, opts = {}) {
  const headers = {};
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  if (opts.key) headers['Idempotency-Key'] = opts.key;
  const params = {
    headers,
    tags: { name: `${r.method} ${r.path}` },
    responseCallback: expectedStatuses(opts.expect || [200]),
  };
  if (opts.keepBody) params.responseType = 'text';
  const url = r.url + queryString(opts.query);
  const payload = opts.body === undefined ? null : JSON.stringify(opts.body);
  const once = () => http.request(r.method, url, payload, params);
  return opts.retry ? withRetry(once) : once();
}

// Writes keep their bodies (ids, problem codes) and retry with their key.
function write(r, opts) {
  return send(r, Object.assign({ keepBody: true, retry: true }, opts));
}

// --- Operations ------------------------------------------------------------

export function health(opts = {}) {
  return send(route('GET', '/health'), opts);
}

export function ready(opts = {}) {
  return send(route('GET', '/health/ready'), opts);
}

export function openapiDocument(opts = {}) {
  return send(unlisted('GET', '/openapi.json'), Object.assign({ keepBody: true }, opts));
}

// --- Users -----------------------------------------------------------------

// Creates a user (service token). `referralCode` is optional.
export function createUser(email, key, opts = {}) {
  const body = { email };
  if (opts.referralCode) body.referral_code = opts.referralCode;
  return write(route('POST', '/api/v1/users'),
    Object.assign({ token: SERVICE_TOKEN, body, key, expect: [201] }, opts));
}

export function getUser(user, opts = {}) {
  return send(route('GET', '/api/v1/users/{id}', { id: user.id }),
    Object.assign({ token: user.token }, opts));
}

// --- Wallets ---------------------------------------------------------------

export function listWallets(user, opts = {}) {
  return send(route('GET', '/api/v1/users/{id}/wallets', { id: user.id }),
    Object.assign({ token: user.token }, opts));
}

// Credits `amount` (a decimal string) to the user's wallet; service token.
export function deposit(user, amount, key, opts = {}) {
  const body = { user_id: user.id, amount, wallet: opts.wallet || 'live' };
  if (opts.reference) body.reference = opts.reference;
  return write(route('POST', '/api/v1/wallets/deposit'),
    Object.assign({ token: SERVICE_TOKEN, body, key }, opts));
}

// Withdraws `amount` from the user's own wallet, with the user's token.
export function withdraw(user, amount, key, opts = {}) {
  const body = { user_id: user.id, amount, wallet: opts.wallet || 'live' };
  return write(route('POST', '/api/v1/wallets/withdraw'),
    Object.assign({ token: user.token, body, key }, opts));
}

// Moves `amount` from one user to another, with the sender's token.
export function transfer(from, to, amount, key, opts = {}) {
  const body = { from_user_id: from.id, to_user_id: to.id, amount, wallet: opts.wallet || 'live' };
  return write(route('POST', '/api/v1/wallets/transfer'),
    Object.assign({ token: from.token, body, key }, opts));
}

// The user's journal, newest first: query { limit, before_id, wallet }.
export function journal(user, query = {}, opts = {}) {
  return send(route('GET', '/api/v1/users/{id}/transactions', { id: user.id }),
    Object.assign({ token: user.token, query }, opts));
}

// --- Prices ----------------------------------------------------------------

// Sets a price; service or admin only. Not keyed: setting it twice is harmless.
export function setPrice(symbol, price, opts = {}) {
  return send(route('PUT', '/api/v1/prices/{symbol}', { symbol }),
    Object.assign({ token: SERVICE_TOKEN, body: { price }, keepBody: true }, opts));
}

export function getPrice(symbol, token, opts = {}) {
  return send(route('GET', '/api/v1/prices/{symbol}', { symbol }),
    Object.assign({ token }, opts));
}

// --- Orders ----------------------------------------------------------------

// Opens a market order for the user: order { symbol, side, quantity, leverage, wallet }.
export function openOrder(user, order, key, opts = {}) {
  const body = {
    user_id: user.id,
    symbol: order.symbol,
    side: order.side,
    quantity: order.quantity,
    leverage: order.leverage,
    wallet: order.wallet || 'live',
  };
  return write(route('POST', '/api/v1/orders'),
    Object.assign({ token: user.token, body, key, expect: [201] }, opts));
}

// Closes an order at the current price (owner, service or admin).
export function closeOrder(user, orderId, key, opts = {}) {
  return write(route('POST', '/api/v1/orders/{id}/close', { id: orderId }),
    Object.assign({ token: user.token, body: {}, key }, opts));
}

export function getOrder(user, orderId, opts = {}) {
  return send(route('GET', '/api/v1/orders/{id}', { id: orderId }),
    Object.assign({ token: user.token }, opts));
}

// The user's orders, newest first: query { status, limit, before_id }.
export function listOrders(user, query = {}, opts = {}) {
  return send(route('GET', '/api/v1/users/{id}/orders', { id: user.id }),
    Object.assign({ token: user.token, query }, opts));
}

// --- Referrals -------------------------------------------------------------

export function referralStats(user, opts = {}) {
  return send(route('GET', '/api/v1/users/{id}/referrals', { id: user.id }),
    Object.assign({ token: user.token }, opts));
}

// Credits pending commissions to referrers (service or admin).
export function settleReferrals(key, opts = {}) {
  return write(route('POST', '/api/v1/referrals/settle'),
    Object.assign({ token: SERVICE_TOKEN, body: {}, key }, opts));
}
