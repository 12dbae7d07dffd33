// Smoke: one VU, one pass over every route of the contract (locks aside),
// plus the refusals a client relies on (idempotency replay and misuse,
// insufficient funds, closed order, auth). Run it before any bigger test.
import { group } from 'k6';
import {
  closeOrder, createUser, deposit, getOrder, getPrice, getUser, health, journal,
  listOrders, listWallets, newKey, openOrder, openapiDocument, ready, referralStats,
  setPrice, settleReferrals, transfer, uuidv4, withdraw,
} from './lib/api.js';
import { expectOk, expectProblem, isReplay, units } from './lib/checks.js';
import {
  AMOUNT, LEVERAGE, PRICE, QUANTITY, SERVICE_TOKEN, SYMBOL, thresholdsWith, users,
} from './lib/config.js';

export const options = {
  vus: 1,
  iterations: 1,
  // Every check must pass here; latency bounds are the shared ones.
  thresholds: thresholdsWith({ checks: ['rate==1'] }),
};

const isArray = (b) => Array.isArray(b);
const isPage = (b) => Array.isArray(b.items) && 'next_before_id' in b;

export default function () {
  if (users.length < 2) throw new Error('smoke needs at least two seeded users (transfer)');
  const alice = users[0];
  const bob = users[1];

  group('operations', () => {
    expectOk(health({ keepBody: true }), 'health', 200, (b) => b.status === 'ok');
    expectOk(ready({ keepBody: true }), 'ready', 200, (b) => b.status === 'ready' && b.database === 'ok');
    expectOk(openapiDocument(), 'openapi.json', 200,
      (b) => String(b.openapi).startsWith('3.') && Object.keys(b.paths).length > 0);
  });

  group('users', () => {
    const key = newKey('user');
    const email = `k6-smoke-${uuidv4()}@example.test`;
    const first = createUser(email, key);
    const created = expectOk(first, 'create user', 201,
      (b) => b.email === email && Array.isArray(b.wallets) && b.wallets.length === 2);

    // Same key and body: the stored answer, byte for byte.
    const again = createUser(email, key);
    expectOk(again, 'create user replay', 201, () => isReplay(again) && again.body === first.body);
    // Same key, other body: refused, nothing created.
    expectProblem(createUser(`other-${email}`, key, { expect: [422] }),
      'create user key reused', 422, 'idempotency_key_reused');
    // No key at all.
    expectProblem(createUser(`nokey-${email}`, null, { expect: [400] }),
      'create user without key', 400, 'idempotency_key_missing');

    if (created) {
      expectOk(getUser({ id: created.id }, { token: SERVICE_TOKEN, keepBody: true }),
        'get user (service)', 200, (b) => b.id === created.id);
    }
    expectOk(getUser(alice, { keepBody: true }), 'get user', 200, (b) => b.id === alice.id);
  });

  group('auth', () => {
    expectProblem(listWallets(bob, { token: alice.token, keepBody: true, expect: [403] }),
      'other user wallets', 403, 'forbidden');
    expectProblem(listWallets(alice, { token: null, keepBody: true, expect: [401] }),
      'wallets without token', 401, 'unauthorized');
  });

  group('wallets', () => {
    expectOk(listWallets(alice, { keepBody: true }), 'list wallets', 200,
      (b) => isArray(b) && b.some((w) => w.kind === 'live'));

    const dep = deposit(alice, AMOUNT, newKey('dep'), { reference: 'k6 smoke' });
    expectOk(dep, 'deposit', 200, (b) => b.user_id === alice.id && units(b.amount) === units(AMOUNT)
      && units(b.balance_after) - units(b.balance_before) === units(AMOUNT));

    const wd = withdraw(alice, AMOUNT, newKey('wd'));
    expectOk(wd, 'withdraw', 200, (b) => b.user_id === alice.id
      && units(b.balance_before) - units(b.balance_after) === units(AMOUNT));
    expectProblem(withdraw(alice, '90000000000', newKey('wd-big'), { expect: [422] }),
      'withdraw too much', 422, 'insufficient_funds');

    // There and back, so the seeded balances stay as they were.
    expectOk(transfer(alice, bob, AMOUNT, newKey('tr')), 'transfer', 200,
      (b) => b.from.user_id === alice.id && b.to.user_id === bob.id && units(b.amount) === units(AMOUNT));
    expectOk(transfer(bob, alice, AMOUNT, newKey('tr')), 'transfer back', 200,
      (b) => b.from.user_id === bob.id && b.to.user_id === alice.id);
    expectProblem(transfer(alice, alice, AMOUNT, newKey('tr-self'), { expect: [422] }),
      'transfer to self', 422, 'same_account');

    expectOk(journal(alice, { limit: 10, wallet: 'live' }, { keepBody: true }), 'journal', 200,
      (b) => isPage(b) && b.items.length > 0);
  });

  group('prices', () => {
    // The service token may set prices; re-setting the seeded price keeps
    // every open position's P&L unchanged.
    expectOk(setPrice(SYMBOL, PRICE), 'set price', 200,
      (b) => b.symbol === SYMBOL && units(b.price) === units(PRICE));
    expectOk(getPrice(SYMBOL, alice.token, { keepBody: true }), 'get price', 200,
      (b) => units(b.price) === units(PRICE));
    expectProblem(getPrice('K6NOSUCHSYMBOL', alice.token, { keepBody: true, expect: [404] }),
      'get unknown price', 404, 'not_found');
  });

  group('orders', () => {
    const open = openOrder(alice, { symbol: SYMBOL, side: 'buy', quantity: QUANTITY, leverage: LEVERAGE }, newKey('open'));
    const order = expectOk(open, 'open order', 201,
      (b) => b.user_id === alice.id && b.status === 'open' && b.leverage === LEVERAGE);
    if (!order) return;

    expectOk(getOrder(alice, order.id, { keepBody: true }), 'get order', 200, (b) => b.id === order.id);
    expectOk(listOrders(alice, { status: 'open', limit: 50 }, { keepBody: true }), 'list orders', 200,
      (b) => isPage(b) && b.items.some((o) => o.id === order.id));
    expectOk(closeOrder(alice, order.id, newKey('close')), 'close order', 200,
      (b) => b.id === order.id && b.status === 'closed' && b.close_price !== null);
    expectProblem(closeOrder(alice, order.id, newKey('close-again'), { expect: [409] }),
      'close closed order', 409, 'order_not_open');
  });

  group('referrals', () => {
    expectOk(referralStats(alice, { keepBody: true }), 'referral stats', 200,
      (b) => typeof b.referral_code === 'string' && Array.isArray(b.by_level));
    expectOk(settleReferrals(newKey('settle')), 'settle referrals', 200,
      (b) => typeof b.settled === 'number' && typeof b.amount === 'string');
  });
}
