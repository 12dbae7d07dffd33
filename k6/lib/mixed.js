// One user's session, shared by load, arrival, spike and soak: look around,
// deposit, trade, close, withdraw what was deposited. 13 requests, 4 of them
// writes (~70 % read / 30 % write). Balance drifts only by the two trading
// fees (0.002 at the defaults), so a seeded user lasts for hours.
import { group, sleep } from 'k6';
import {
  closeOrder, deposit, getOrder, getPrice, getUser, journal, listOrders,
  listWallets, newKey, openOrder, referralStats, withdraw,
} from './api.js';
import { expectOk, units } from './checks.js';
import {
  AMOUNT, LEVERAGE, QUANTITY, SYMBOL, THINK_MAX, THINK_MIN, thresholdsWith, userForVu,
} from './config.js';

// Pause like a person between actions: THINK_MIN..THINK_MAX seconds.
export function think() {
  sleep(THINK_MIN + Math.random() * (THINK_MAX - THINK_MIN));
}

// Pages stay short: a trading screen shows the latest few items.
const PAGE = { limit: 5 };

const sameAmount = (body, user) => body.user_id === user.id && units(body.amount) === units(AMOUNT);

// `pause` runs between the groups: think() for user-paced scripts, nothing
// for the arrival-rate one.
export function mixedIteration(user, pause = think) {
  group('browse', () => {
    expectOk(listWallets(user), 'list wallets');
    expectOk(listOrders(user, PAGE), 'list orders');
    expectOk(getPrice(SYMBOL, user.token), 'get price');
  });
  pause();

  group('deposit', () => {
    const res = deposit(user, AMOUNT, newKey('dep'), { reference: 'k6' });
    expectOk(res, 'deposit', 200, (b) => sameAmount(b, user));
    expectOk(listWallets(user), 'list wallets');
  });
  pause();

  let orderId;
  group('trade', () => {
    const side = Math.random() < 0.5 ? 'buy' : 'sell';
    const res = openOrder(user, { symbol: SYMBOL, side, quantity: QUANTITY, leverage: LEVERAGE }, newKey('open'));
    const order = expectOk(res, 'open order', 201, (b) => b.status === 'open' && b.side === side);
    orderId = order && order.id;
    if (orderId !== undefined) expectOk(getOrder(user, orderId), 'get order');
    expectOk(listOrders(user, { status: 'open', limit: 5 }), 'list open orders');
  });
  pause();

  group('close', () => {
    if (orderId !== undefined) {
      const res = closeOrder(user, orderId, newKey('close'));
      expectOk(res, 'close order', 200, (b) => b.id === orderId && b.status === 'closed');
    }
    expectOk(journal(user, PAGE), 'journal');
  });
  pause();

  group('withdraw', () => {
    const res = withdraw(user, AMOUNT, newKey('wd'));
    expectOk(res, 'withdraw', 200, (b) => sameAmount(b, user));
    expectOk(getUser(user), 'get user');
    expectOk(referralStats(user), 'referral stats');
  });
  pause();
}

// No pause at all (arrival-rate scripts pace by iterations, not by users).
export function noPause() {}

// One session as the VU's own seeded user: the default function of the
// user-paced scripts (load, spike, soak).
export function ownUserSession() {
  mixedIteration(userForVu(__VU));
}

// The options of a script whose VUs run this session: its one scenario
// under `name`, the shared bounds plus `extraThresholds`, and reads' bodies
// not kept (writes keep theirs: see api.js).
export function sessionOptions(name, scenario, extraThresholds = {}) {
  return {
    scenarios: { [name]: scenario },
    discardResponseBodies: true,
    thresholds: thresholdsWith(extraThresholds),
  };
}

// VUs from `startVUs` through `stages`; a VU let go finishes its session
// within 30 s.
export function rampingVus(startVUs, stages) {
  return { executor: 'ramping-vus', startVUs, stages, gracefulRampDown: '30s' };
}
