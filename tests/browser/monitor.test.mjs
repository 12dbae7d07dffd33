// The Transaction Lock Monitor (/admin/locks) in headless Chromium against a
// running ledger server. Started by scripts/browser-test.sh, which builds and
// starts the server and passes its address and tokens in the environment:
//
//   MONITOR_URL           the server, e.g. http://127.0.0.1:40123
//   MONITOR_ADMIN_TOKEN   role admin (the monitor's user)
//   MONITOR_WRONG_TOKEN   an admin token signed with another secret
//   MONITOR_SHORT_TOKEN   an admin token that expires a second after minting
//   MONITOR_WORKER_A, MONITOR_WORKER_B   service tokens: two lock owners
//   MONITOR_SCREENSHOTS   where the screenshots go (monitor.png, monitor-phone.png)
//   CHROMIUM              the browser (default /usr/bin/chromium)
//
// The browser reaches the server through a small TCP relay in this process,
// so the test can cut the page's connections as a network failure would.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { chromium } from 'playwright-core';

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run scripts/browser-test.sh`);
  return value;
}

const SERVER = env('MONITOR_URL').replace(/\/$/, '');
const ADMIN = env('MONITOR_ADMIN_TOKEN');
const WRONG = env('MONITOR_WRONG_TOKEN');
const SHORT = env('MONITOR_SHORT_TOKEN');
const WORKER_A = env('MONITOR_WORKER_A');
const WORKER_B = env('MONITOR_WORKER_B');
const SHOTS = env('MONITOR_SCREENSHOTS');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

// Resource names unique to this run.
const run = Date.now().toString(36);

// ---------- the API, called directly (not through the page) ----------

async function call(token, method, route, body) {
  const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method === 'POST') headers['Idempotency-Key'] = `browser-test-${randomUUID()}`;
  const resp = await fetch(`${SERVER}${route}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : null };
}

async function acquire(token, body, expected = 201) {
  const r = await call(token, 'POST', '/api/v1/locks', body);
  assert.equal(r.status, expected, `POST /api/v1/locks answered ${r.status}: ${JSON.stringify(r.body)}`);
  return r.body;
}

async function release(token, lockId, body) {
  const r = await call(token, 'POST', `/api/v1/locks/${lockId}/release`, body);
  assert.equal(r.status, 200, `release answered ${r.status}: ${JSON.stringify(r.body)}`);
  return r.body;
}

// ---------- a relay between the browser and the server ----------

async function startRelay(target) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(port), hostname);
    sockets.add(client);
    sockets.add(upstream);
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    for (const s of [client, upstream]) {
      s.on('error', close);
      s.on('close', close);
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    // Drop every open connection and refuse new ones, as a network failure would.
    cut() {
      refusing = true;
      for (const s of sockets) s.destroy();
    },
    restore() {
      refusing = false;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

// ---------- the browser ----------

let browser;
let page;
let relay;
const pageErrors = [];
const consoleProblems = [];

before(async () => {
  relay = await startRelay(SERVER);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 });
  page = await context.newPage();
  page.setDefaultTimeout(10000);
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    // A refused token and the cut connections show up as failed loads;
    // anything else logged as an error (a script error, a blocked resource,
    // a Content-Security-Policy violation) is a defect of the page.
    if (m.type() === 'error' && !/Failed to load resource|net::ERR_/.test(m.text())) {
      consoleProblems.push(m.text());
    }
  });
});

after(async () => {
  await browser?.close();
  await relay?.close();
});

// The steps build on each other: after one fails, the rest are skipped,
// unless it is a check nothing later depends on.
let broken = null;
function step(name, fn, { checkOnly = false } = {}) {
  test(name, async (t) => {
    if (broken) {
      t.skip(`skipped: "${broken}" failed`);
      return;
    }
    try {
      await fn(t);
    } catch (err) {
      if (!checkOnly) broken = name;
      throw err;
    }
  });
}

const text = async (selector) => (await page.locator(selector).innerText()).trim();
const activeRow = (lockId) => page.locator(`#active-body tr[data-lock-id="${lockId}"]`);
const historyRow = (lockId) => page.locator(`#history-body tr[data-lock-id="${lockId}"]`);
const queueRow = (queueId) => page.locator(`#queue-body tr[data-queue-id="${queueId}"]`);

async function enterToken(token) {
  await page.fill('#token-input', token);
  await page.click('#token-submit');
}

// "1 m 05 s" / "59 s" -> seconds
function seconds(countdown) {
  const m = /^(?:(\d+) m )?(\d+) s$/.exec(countdown);
  assert.ok(m, `not a countdown: ${JSON.stringify(countdown)}`);
  return Number(m[1] || 0) * 60 + Number(m[2]);
}

// ---------- the steps ----------

step('without a token the page says one is missing', async () => {
  const resp = await page.goto(`${relay.url}/admin/locks`);
  assert.equal(resp.status(), 200);
  assert.match(resp.headers()['content-type'], /^text\/html/);
  await page.locator('#auth-message[data-reason="missing"]').waitFor();
  assert.match(await text('#auth-message'), /No admin token yet/);
  assert.equal(await page.locator('#dashboard').isVisible(), false);
  assert.equal(await text('#conn-text'), 'Not connected');
});

step('a token signed with another secret is refused', async () => {
  await enterToken(WRONG);
  await page.locator('#auth-message[data-reason="invalid"]').waitFor();
  assert.match(await text('#auth-message'), /server refused this token/);
  assert.equal(await page.locator('#dashboard').isVisible(), false);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'a refused token is not kept');
});

step('a token without the admin role is refused', async () => {
  await enterToken(WORKER_A);
  await page.locator('#auth-message[data-reason="forbidden"]').waitFor();
  assert.match(await text('#auth-message'), /not an admin’s/);
  assert.match(await text('#auth-message'), /role “service”/);
});

step('an expired token is reported as expired', async () => {
  const exp = JSON.parse(Buffer.from(SHORT.split('.')[1], 'base64url').toString()).exp;
  const wait = exp * 1000 - Date.now() + 300;
  if (wait > 0) await sleep(wait);
  await enterToken(SHORT);
  await page.locator('#auth-message[data-reason="expired"]').waitFor();
  assert.match(await text('#auth-message'), /token has expired/);
});

step('the admin token opens the monitor, live', async () => {
  await enterToken(ADMIN);
  await page.locator('#dashboard').waitFor();
  await page.locator('#conn[data-state="live"]').waitFor();
  assert.equal(await text('#conn-text'), 'Live');
  assert.match(await text('#who'), /root/);
  assert.equal(await page.evaluate(() => sessionStorage.getItem('ledger.lockMonitor.token')), process.env.MONITOR_ADMIN_TOKEN);
  for (const id of ['stat-active', 'stat-queued', 'stat-released', 'stat-expired', 'stat-failed']) {
    assert.match(await text(`#${id}`), /^\d[\d,]*$/, `${id} shows a number`);
  }
  // Kept for the tab: a reload signs in again without asking.
  await page.reload();
  await page.locator('#conn[data-state="live"]').waitFor();
});

let completed;
let failed;
let lapsed;

step('finished locks appear in the history as they finish', async () => {
  completed = await acquire(WORKER_A, {
    resources: [`item:sku-${run}-1`],
    ttl_ms: 30000,
    transaction_type: 'order_open',
    transaction_data: { user_id: 42, symbol: 'BTCUSD' },
  });
  await activeRow(completed.lock_id).waitFor();
  await release(WORKER_A, completed.lock_id, { result: { order_id: 1001, status: 'open' } });
  await historyRow(completed.lock_id).waitFor();
  await activeRow(completed.lock_id).waitFor({ state: 'detached' });
  assert.equal(await historyRow(completed.lock_id).getAttribute('data-outcome'), 'released');
  assert.match(await historyRow(completed.lock_id).innerText(), /order_id/);

  // An error text that looks like markup must stay text.
  failed = await acquire(WORKER_B, {
    resources: [`wallet:${run}-7`],
    ttl_ms: 30000,
    transaction_type: 'withdrawal',
    transaction_data: { amount: '25' },
  });
  const markup = '<img src=x onerror="window.__injected=1">payout declined';
  await release(WORKER_B, failed.lock_id, { error: markup });
  const row = historyRow(failed.lock_id);
  await row.waitFor();
  assert.equal(await row.getAttribute('data-outcome'), 'failed');
  assert.match(await row.innerText(), /<img src=x onerror="window.__injected=1">payout declined/);
  assert.equal(await row.locator('img').count(), 0, 'markup from the server is shown as text');
  assert.equal(await page.evaluate(() => window.__injected), undefined);

  lapsed = await acquire(WORKER_A, {
    resources: [`item:sku-${run}-2`],
    ttl_ms: 1000,
    transaction_type: 'cart_reservation',
  });
  await sleep(1300);
  const cleanup = await call(ADMIN, 'POST', '/api/v1/locks/cleanup', {});
  assert.equal(cleanup.status, 200, JSON.stringify(cleanup.body));
  await historyRow(lapsed.lock_id).waitFor();
  assert.equal(await historyRow(lapsed.lock_id).getAttribute('data-outcome'), 'expired');
});

let held;
const REASON = 'stuck checkout worker, released by the on-call admin';

step('a new lock appears with a live countdown', async () => {
  held = await acquire(WORKER_A, {
    resources: [`item:sku-${run}-3`],
    ttl_ms: 60000,
    priority: 3,
    transaction_type: 'cart_reservation',
    transaction_data: { cart_id: `cart-${run}` },
  });
  const row = activeRow(held.lock_id);
  await row.waitFor();
  const cells = await row.innerText();
  assert.match(cells, /service:worker-a/);
  assert.match(cells, new RegExp(`item:sku-${run}-3`));
  assert.match(cells, /cart_reservation/);
  assert.match(cells, /P3/);
  assert.equal((await row.locator('td[data-label="Token"]').innerText()).trim(), String(held.fencing_token));

  const first = (await row.locator('.timeleft-text').innerText()).trim();
  await sleep(2100);
  const second = (await row.locator('.timeleft-text').innerText()).trim();
  assert.notEqual(first, second, 'the time left counts down');
  assert.ok(seconds(first) <= 60 && seconds(first) > 45, `first reading ${first}`);
  assert.ok(seconds(second) < seconds(first), `${second} after ${first}`);
});

let waiting;
let reservation;
let waitingForReservation;

step('a queued request appears in the queue panel', async () => {
  waiting = await acquire(
    WORKER_B,
    {
      resources: [`item:sku-${run}-3`],
      priority: 2,
      transaction_type: 'cart_reservation',
      wait: 'queue',
      queue_timeout_ms: 120000,
    },
    202,
  );
  const row = queueRow(waiting.queue_id);
  await row.waitFor();
  const cells = await row.innerText();
  assert.match(cells, /service:worker-b/);
  assert.match(cells, new RegExp(`item:sku-${run}-3`));
  assert.equal((await row.locator('td[data-label="Position"]').innerText()).trim(), '1');
  assert.equal((await row.locator('td[data-label="Priority"]').innerText()).trim(), 'P2');

  // A second holder and waiter, still there when the screenshots are taken.
  reservation = await acquire(WORKER_B, {
    resources: [`cart:${run}`, `item:sku-${run}-4`, `item:sku-${run}-5`],
    ttl_ms: 300000,
    priority: 5,
    transaction_type: 'cart_reservation',
    transaction_data: { cart_id: `cart-${run}`, items: 2 },
  });
  waitingForReservation = await acquire(
    WORKER_A,
    {
      resources: [`item:sku-${run}-4`],
      priority: 6,
      transaction_type: 'order_open',
      wait: 'queue',
      queue_timeout_ms: 120000,
    },
    202,
  );
  await activeRow(reservation.lock_id).waitFor();
  await queueRow(waitingForReservation.queue_id).waitFor();
  assert.equal(await text('#queue-count'), '2');
});

step('an admin force-releases a lock with a reason', async () => {
  await activeRow(held.lock_id).locator('button', { hasText: 'Release' }).click();
  const dialog = page.locator('#release-dialog');
  await dialog.waitFor();
  assert.equal(await text('#release-lock'), held.lock_id);

  // No reason, no release.
  await page.click('#release-confirm');
  await page.locator('#release-error').waitFor();
  assert.match(await text('#release-error'), /reason/);
  assert.equal(await dialog.isVisible(), true);

  await page.fill('#release-reason', REASON);
  await page.click('#release-confirm');
  await dialog.waitFor({ state: 'hidden' });

  await activeRow(held.lock_id).waitFor({ state: 'detached' });
  const row = historyRow(held.lock_id);
  await row.waitFor();
  assert.equal(await row.getAttribute('data-outcome'), 'forced');
  assert.match(await row.innerText(), /Forced/);
  assert.match(await row.locator('td[data-label="Released by"]').innerText(), /root/);

  // The server agrees.
  const stored = await call(ADMIN, 'GET', `/api/v1/locks/${held.lock_id}`);
  assert.equal(stored.status, 200);
  assert.equal(stored.body.status, 'released');
  assert.match(stored.body.released_by, /root/);

  // The queue head was granted in the same step: it leaves the queue and
  // holds the resource now.
  await queueRow(waiting.queue_id).waitFor({ state: 'detached' });
  const granted = page.locator('#active-body tr', { hasText: `item:sku-${run}-3` });
  await granted.waitFor();
  assert.match(await granted.innerText(), /service:worker-b/);
});

step(
  'the history says why the lock was forced',
  async () => {
    const row = historyRow(held.lock_id);
    assert.equal((await row.locator('td[data-label="Reason / detail"]').innerText()).trim(), REASON);
    // After a reload too: the reason comes from the server's record.
    await page.reload();
    await page.locator('#conn[data-state="live"]').waitFor();
    await row.waitFor();
    assert.equal((await row.locator('td[data-label="Reason / detail"]').innerText()).trim(), REASON);
  },
  { checkOnly: true },
);

let meanwhile;

step('after a dropped connection it reconnects and catches up', async () => {
  relay.cut();
  await page.locator('#conn[data-state="retrying"]').waitFor();
  assert.match(await text('#conn-text'), /Reconnecting in \d+ s/);
  // A change the page cannot hear about while it is cut off.
  meanwhile = await acquire(WORKER_A, {
    resources: [`wallet:${run}-9`],
    ttl_ms: 120000,
    priority: 1,
    transaction_type: 'withdrawal',
    transaction_data: { amount: '250' },
  });
  await sleep(1500);
  assert.equal(await activeRow(meanwhile.lock_id).count(), 0);
  relay.restore();
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 20000 });
  await activeRow(meanwhile.lock_id).waitFor();
  assert.equal(await page.locator('#banner').isVisible(), false);
});

step('the stats match the server', async () => {
  // One full refresh at most a second after the last change.
  await sleep(1500);
  const stats = await call(ADMIN, 'GET', '/api/v1/locks/stats');
  assert.equal(stats.status, 200);
  assert.equal(await text('#stat-active'), stats.body.active.toLocaleString('en-US'));
  assert.equal(await text('#stat-queued'), stats.body.queued.toLocaleString('en-US'));
  assert.equal(await text('#stat-failed'), stats.body.failed.toLocaleString('en-US'));
  assert.equal(await text('#active-count'), String(stats.body.active));
});

step('screenshots at 1280×800 and at phone width', async () => {
  mkdirSync(SHOTS, { recursive: true });
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.mouse.move(0, 0);
  const cramped = await page.evaluate(() =>
    [...document.querySelectorAll('.table-wrap')].filter((w) => w.scrollWidth > w.clientWidth).map((w) => w.parentElement.id),
  );
  assert.deepEqual(cramped, [], 'every table fits 1280 px without scrolling');
  await page.screenshot({ path: path.join(SHOTS, 'monitor.png'), fullPage: true });

  await page.setViewportSize({ width: 390, height: 844 });
  await sleep(200);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(overflow <= 390, `the page is ${overflow} px wide on a 390 px screen`);
  assert.equal(await page.locator('#active-table thead').isVisible(), false, 'tables stack on a phone');
  await page.screenshot({ path: path.join(SHOTS, 'monitor-phone.png'), fullPage: true });
  await page.setViewportSize({ width: 1280, height: 800 });
});

step('no script errors and no blocked resources', async () => {
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(consoleProblems, []);
});
