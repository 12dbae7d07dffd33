// Contention: correctness under concurrency on ONE wallet.
//
//  distinct  HOT_VUS VUs make HOT_DEPOSITS deposits of AMOUNT to the hot
//            user's live wallet (users[HOT_USER]), each with its own key.
//  same_key  SAME_KEY_VUS VUs fire the SAME Idempotency-Key and body at a
//            deposit to that wallet, all at once, while `distinct` keeps
//            the row busy. Every answer must be 200 with one identical
//            body, or 409 idempotency_in_flight (then retried until 200),
//            and exactly one of them may be an execution (no
//            `idempotent-replayed` header).
//
// Books: each successful distinct deposit and the one shared-key execution
// add +1 to `hot_balance_unexplained`; teardown subtracts the observed
// balance change in AMOUNTs. Anything but 0 means money moved without a
// success, or a success without money: the threshold fails the run.
//
// Run it alone: other scripts' traffic on the hot user would move its
// balance too (or point HOT_USER at a user no other run uses).
import { check, sleep } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import { deposit, header, listWallets, newKey } from './lib/api.js';
import { expectOk, expectProblem, isReplay, units } from './lib/checks.js';
import { AMOUNT, envNumber, thresholdsWith, users } from './lib/config.js';

const HOT_USER = envNumber('HOT_USER', 0);
const HOT_VUS = envNumber('HOT_VUS', 100);
const HOT_DEPOSITS = envNumber('HOT_DEPOSITS', 5000);
const SAME_KEY_VUS = envNumber('SAME_KEY_VUS', 200);
// Every write to one row waits for the one before it, so latency here is a
// queue length, not a service time: its own, looser bounds.
const HOT_P95_MS = envNumber('HOT_P95_MS', 1000);
const HOT_P99_MS = envNumber('HOT_P99_MS', 2500);

const hotDepositsOk = new Counter('hot_deposits_ok');
const sameKeyExecutions = new Counter('same_key_executions');
const sameKeyInFlight = new Counter('same_key_in_flight');
const sameKeyIdentical = new Rate('same_key_identical');
const unexplained = new Counter('hot_balance_unexplained');

export const options = {
  scenarios: {
    distinct: {
      executor: 'shared-iterations',
      exec: 'distinctDeposits',
      vus: HOT_VUS,
      iterations: HOT_DEPOSITS,
      maxDuration: '10m',
    },
    same_key: {
      executor: 'per-vu-iterations',
      exec: 'sameKeyDeposit',
      vus: SAME_KEY_VUS,
      iterations: 1,
      // Once `distinct` has the row busy, so the first execution is slow
      // and the others arrive while it is in flight.
      startTime: '2s',
      maxDuration: '2m',
    },
  },
  thresholds: thresholdsWith({
    http_req_duration: [`p(95)<${HOT_P95_MS}`, `p(99)<${HOT_P99_MS}`],
    hot_deposits_ok: [`count==${HOT_DEPOSITS}`],
    same_key_executions: ['count==1'],
    same_key_identical: ['rate==1'],
    hot_balance_unexplained: ['count==0'],
  }),
};

function liveBalance(user) {
  const res = listWallets(user, { keepBody: true });
  const wallets = expectOk(res, 'hot wallets', 200, (b) => Array.isArray(b) && b.some((w) => w.kind === 'live'));
  const live = wallets && wallets.find((w) => w.kind === 'live');
  return live ? units(live.balance) : undefined;
}

export function setup() {
  if (HOT_USER >= users.length) throw new Error(`HOT_USER=${HOT_USER}: the file has ${users.length} users`);
  const hot = users[HOT_USER];
  const before = liveBalance(hot);
  if (before === undefined) throw new Error(`cannot read user ${hot.id}'s live balance`);
  return { hot: { id: hot.id, token: hot.token }, before, sharedKey: newKey('shared') };
}

export function distinctDeposits(data) {
  const res = deposit(data.hot, AMOUNT, newKey('hot'), { reference: 'k6 contention' });
  expectOk(res, 'hot deposit', 200, (b) => b.user_id === data.hot.id && units(b.amount) === units(AMOUNT));
  if (res.status === 200) {
    hotDepositsOk.add(1);
    unexplained.add(1);
  }
}

export function sameKeyDeposit(data) {
  // Identical body on every VU: the key's fingerprint must match.
  const send = () => deposit(data.hot, AMOUNT, data.sharedKey,
    { reference: 'k6 shared key', retry: false, expect: [200, 409] });

  let res = send();
  // In flight: wait as told, ask again with the same key. A lost answer
  // (status 0) or 503 is retried the same way, and counts as a failure.
  for (let n = 0; n < 30 && (res.status === 409 || res.status === 503 || res.status === 0); n++) {
    if (res.status === 409) {
      expectProblem(res, 'same key in flight', 409, 'idempotency_in_flight');
      sameKeyInFlight.add(1);
    }
    const after = Number(header(res, 'Retry-After'));
    sleep(Number.isFinite(after) && after > 0 ? Math.min(after, 2) : 0.05 + Math.random() * 0.1);
    res = send();
  }

  expectOk(res, 'same key deposit', 200, (b) => b.user_id === data.hot.id && units(b.amount) === units(AMOUNT));
  if (res.status !== 200) return;
  if (!isReplay(res)) {
    sameKeyExecutions.add(1);
    unexplained.add(1);
  }

  // The key has finished now, so this is a replay of the one stored
  // answer; every VU comparing with it means all VUs saw the same body.
  const replay = send();
  const same = check(replay, {
    'same key replay: status 200': (r) => r.status === 200,
    'same key replay: idempotent-replayed': (r) => isReplay(r),
    'same key replay: identical body': (r) => r.body === res.body,
  });
  sameKeyIdentical.add(same);
}

export function teardown(data) {
  const after = liveBalance(data.hot);
  if (after === undefined) return; // hot_balance_unexplained stays > 0: the run fails
  const moved = (after - data.before) / units(AMOUNT);
  check(moved, { 'hot balance moved by whole AMOUNTs': (m) => Number.isInteger(m) });
  unexplained.add(-moved);
  console.log(`hot user ${data.hot.id}: live balance moved by ${moved} x ${AMOUNT} `
    + '(expected: hot_deposits_ok + same_key_executions)');
}
