// Shared settings of every k6 script: where the server is, who the users
// are, and the pass/fail bounds. Everything comes from `-e NAME=value`.
import { SharedArray } from 'k6/data';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');

// open() resolves a relative path against the module that calls it, and the
// calls below run in k6/lib, so the default file is k6/users.json (the one
// `ledger seed-load --out k6/users.json` writes). Prefer an absolute path.
export const USERS_FILE = __ENV.USERS_FILE || '../users.json';

// Each SharedArray callback runs once for the whole test, not once per VU:
// 33,000 VUs each parsing a 33,000-user file would need tens of GB.
const seedFile = new SharedArray('seed-file', () => {
  const seed = JSON.parse(open(USERS_FILE));
  for (const field of ['symbol', 'price', 'balance', 'service_token']) {
    if (typeof seed[field] !== 'string' || seed[field] === '') {
      throw new Error(`${USERS_FILE}: "${field}" missing; write it with ledger seed-load`);
    }
  }
  return [{
    symbol: seed.symbol,
    price: seed.price,
    balance: seed.balance,
    service_token: seed.service_token,
  }];
});

export const users = new SharedArray('seed-users', () => {
  const list = JSON.parse(open(USERS_FILE)).users;
  if (!Array.isArray(list) || list.length === 0) {
    throw new Error(`${USERS_FILE}: no users; write it with ledger seed-load --users N`);
  }
  return list.map((u) => ({ id: u.id, token: u.token }));
});

const seed = seedFile[0];
export const SYMBOL = seed.symbol;
export const PRICE = seed.price;
export const BALANCE = seed.balance;
export const SERVICE_TOKEN = seed.service_token;

// The user a VU acts as: VU n (1-based) is users[n-1], wrapping around.
export function userForVu(vu) {
  return users[(vu - 1) % users.length];
}

// Environment helpers: a number or a default.
export function envNumber(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new Error(`-e ${name}=${raw}: not a number`);
  return value;
}

export function envString(name, fallback) {
  const raw = __ENV[name];
  return raw === undefined || raw === '' ? fallback : raw;
}

// The bounds every script shares: fewer than 1 failed request in 1,000,
// checks passing at 99.9 %, and latency percentiles in milliseconds.
export const P95_MS = envNumber('P95_MS', 100);
export const P99_MS = envNumber('P99_MS', 250);

export const thresholds = {
  http_req_failed: ['rate<0.001'],
  checks: ['rate>0.999'],
  http_req_duration: [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`],
};

// The shared bounds plus a script's own (a script's entry wins).
export function thresholdsWith(extra = {}) {
  return Object.assign({}, thresholds, extra);
}

// Think time between a user's actions: THINK_MIN..THINK_MAX seconds.
export const THINK_MIN = envNumber('THINK_MIN', 1);
export const THINK_MAX = envNumber('THINK_MAX', 3);

// The amounts the mixed iteration moves (decimal strings, never numbers).
export const AMOUNT = envString('AMOUNT', '1');
export const QUANTITY = envString('QUANTITY', '0.01');
export const LEVERAGE = envNumber('LEVERAGE', 10);
