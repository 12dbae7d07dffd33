// Response checks shared by the scripts. Check names stay few and stable
// (one per route and outcome) so the summary groups them.
import { check } from 'k6';
import { header, json, problemCode } from './api.js';

// At most this many unexpected answers are logged per VU, so a failing run
// explains itself without flooding the console.
const LOG_LIMIT = 5;
let logged = 0;

function report(name, res, wanted) {
  if (logged >= LOG_LIMIT) return;
  logged += 1;
  const code = problemCode(res);
  const detail = code ? ` code=${code}` : (res.error ? ` error=${res.error}` : '');
  console.warn(`${name}: wanted ${wanted}, got ${res.status}${detail} (request ${header(res, 'X-Request-Id') || '-'})`);
}

// Status `status`, and optionally `valid(body)` on the parsed JSON body.
// Returns the parsed body (undefined when discarded or not JSON).
export function expectOk(res, name, status = 200, valid) {
  const body = valid ? json(res) : undefined;
  const checks = { [`${name}: status ${status}`]: (r) => r.status === status };
  if (valid) checks[`${name}: body`] = () => body !== undefined && valid(body) === true;
  if (!check(res, checks)) report(name, res, status);
  return body;
}

// A problem+json refusal with this status and `code`.
export function expectProblem(res, name, status, code) {
  const ok = check(res, {
    [`${name}: status ${status}`]: (r) => r.status === status,
    [`${name}: problem+json`]: (r) => String(header(r, 'Content-Type') || '').startsWith('application/problem+json'),
    [`${name}: code ${code}`]: (r) => problemCode(r) === code,
  });
  if (!ok) report(name, res, `${status} ${code}`);
}

// Whether the answer is a replay of a stored one.
export function isReplay(res) {
  return String(header(res, 'Idempotent-Replayed') || '').toLowerCase() === 'true';
}

// Decimal strings to integer units of 1e-8 (exact up to about 9e7, plenty
// for a load-test wallet); amounts are never compared as floats.
export function units(decimal) {
  const [whole, fraction = ''] = String(decimal).split('.');
  const negative = whole.startsWith('-');
  const value = Math.abs(Number(whole)) * 1e8 + Number((fraction + '00000000').slice(0, 8));
  return negative ? -value : value;
}
