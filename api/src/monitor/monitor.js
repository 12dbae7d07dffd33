// Transaction Lock Monitor: reads the lock admin API with an admin token and
// follows its event stream. Every value from the server reaches the page
// through textContent or an attribute, never through innerHTML.
'use strict';

(() => {
  const TOKEN_KEY = 'ledger.lockMonitor.token';
  const LOCKS = '/api/v1/locks';
  const HISTORY_LIMIT = 200;
  const MAX_CHIPS = 3;
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 30000;
  // A stream that stayed up this long was healthy: the next drop starts the
  // back-off from the beginning again.
  const HEALTHY_STREAM_MS = 10000;
  // Events come in bursts (a release grants the queue head): one full
  // refresh per this interval keeps positions, estimates and stats exact.
  const REFRESH_EVERY_MS = 1000;
  // The server writes a keep-alive comment every 15 s: a stream silent for
  // this long is dead without having been closed (a half-open connection).
  const STALL_MS = 45000;

  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    claims: null,
    active: new Map(), // lock_id -> Lock (status active)
    history: new Map(), // lock_id -> Lock (finished)
    queue: new Map(), // queue_id -> QueueItem (pending)
    stats: null,
    loaded: false, // a full state has been read with this token
    skewMs: 0, // server clock minus this browser's clock
    filter: 'all',
    stream: null, // AbortController of the open event stream
    lastByteAt: 0, // when the open stream last delivered anything
    attempt: 0,
    retryAt: 0,
    retryTimer: 0,
    refreshTimer: 0,
    refreshing: null,
    lastRefresh: 0,
    lastEventId: null,
    expiryTimer: 0,
    releasing: null, // the lock the release dialog is about
    updatedAt: 0,
  };

  // ---------- small helpers ----------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') node.className = v;
        else if (k === 'text') node.textContent = String(v);
        else node.setAttribute(k, String(v));
      }
    }
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }

  function td(label, attrs, ...children) {
    return el('td', { 'data-label': label, ...attrs }, ...children);
  }

  const now = () => Date.now() + state.skewMs;
  const ms = (iso) => (iso ? Date.parse(iso) : NaN);

  function fmtDuration(value) {
    if (value === null || value === undefined || !Number.isFinite(Number(value))) return '–';
    const v = Math.max(0, Number(value));
    if (v < 1000) return `${Math.round(v)} ms`;
    if (v < 10000) return `${(v / 1000).toFixed(1)} s`;
    const s = Math.round(v / 1000);
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${String(s % 60).padStart(2, '0')} s`;
    const h = Math.floor(m / 60);
    return `${h} h ${String(m % 60).padStart(2, '0')} m`;
  }

  // Seconds-precision countdown: "4 m 05 s", "59 s".
  function fmtCountdown(left) {
    const s = Math.max(0, Math.ceil(left / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${String(s % 60).padStart(2, '0')} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} m`;
  }

  function fmtTime(iso) {
    const t = ms(iso);
    if (!Number.isFinite(t)) return '–';
    const d = new Date(t);
    const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
    if (new Date().toDateString() === d.toDateString()) return time;
    return `${d.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
  }

  function clip(s, max) {
    return s.length > max ? `${s.slice(0, max - 1)}…` : s;
  }

  function compactJson(value, max = 160) {
    if (value === null || value === undefined) return '';
    const s = typeof value === 'string' ? value : JSON.stringify(value);
    return s === '{}' || s === '[]' ? '' : clip(s, max);
  }

  // A result object for people: "order_id: 1001, status: open".
  function summary(value, max = 160) {
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      const parts = Object.entries(value).map(
        ([k, v]) => `${k}: ${v !== null && typeof v === 'object' ? JSON.stringify(v) : v}`,
      );
      return clip(parts.join(', '), max);
    }
    return compactJson(value, max);
  }

  // The token's claims, read without verifying (the server verifies): for
  // showing who is signed in and noticing expiry.
  function readClaims(token) {
    const parts = token.split('.');
    if (parts.length !== 3) return null;
    try {
      const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
      const json = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
      const claims = JSON.parse(json);
      return claims && typeof claims === 'object' ? claims : null;
    } catch {
      return null;
    }
  }

  function tokenExpired(claims) {
    return Boolean(claims && Number.isFinite(claims.exp) && claims.exp * 1000 <= Date.now());
  }

  // ---------- the API ----------

  class ApiError extends Error {
    constructor(status, problem) {
      const detail = problem && (problem.detail || problem.title);
      super(detail ? String(detail) : `HTTP ${status}`);
      this.status = status;
      this.problem = problem || {};
    }
  }

  function noteServerTime(resp) {
    const date = Date.parse(resp.headers.get('date') || '');
    if (!Number.isFinite(date)) return;
    // The Date header has whole seconds: only a skew clearly beyond that is
    // a wrong clock worth correcting the countdowns for.
    const skew = date - Date.now();
    state.skewMs = Math.abs(skew) > 2000 ? skew : 0;
  }

  async function api(path, { method = 'GET', body } = {}) {
    const headers = { Accept: 'application/json', Authorization: `Bearer ${state.token}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
    noteServerTime(resp);
    const text = await resp.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  const isAuthError = (err) => err instanceof ApiError && (err.status === 401 || err.status === 403);

  // ---------- token and sign-in ----------

  // Nothing of what one token showed stays on screen for the next.
  function forgetData() {
    state.active.clear();
    state.history.clear();
    state.queue.clear();
    state.stats = null;
    state.loaded = false;
    state.updatedAt = 0;
    renderStats();
    for (const t of ['active', 'queue', 'history']) {
      $(`${t}-body`).replaceChildren();
      $(`${t}-table`).hidden = true;
      $(`${t}-empty`).textContent = 'Loading…';
      $(`${t}-empty`).hidden = false;
    }
    $('updated').textContent = '';
  }

  function showAuth(reason, detail) {
    stopStream();
    clearTimeout(state.expiryTimer);
    state.token = null;
    state.claims = null;
    forgetData();
    $('dashboard').hidden = true;
    $('auth').hidden = false;
    $('who').hidden = true;
    $('change-token').hidden = true;
    $('reconnect').hidden = true;
    setConn('off', 'Not connected');

    const msg = $('auth-message');
    msg.dataset.reason = reason;
    msg.replaceChildren();
    const lead = {
      missing: 'No admin token yet.',
      'signed-out': 'Signed out.',
      invalid: 'The server refused this token.',
      forbidden: 'This token is not an admin’s.',
      expired: 'The token has expired.',
    }[reason];
    const rest = {
      missing: 'Enter an admin token to open the monitor.',
      'signed-out': 'Enter an admin token to open the monitor again.',
      invalid: 'It is not signed with this server’s secret, or it is malformed. Enter another one.',
      forbidden: 'The lock monitor needs a token with the admin role. Enter another one.',
      expired: 'Enter a new one.',
    }[reason];
    msg.append(el('strong', { text: lead }), ` ${rest}`);
    if (detail) msg.append(el('span', { class: 'sub', text: detail }));

    const input = $('token-input');
    input.value = '';
    input.focus();
  }

  function authFailed(err) {
    sessionStorage.removeItem(TOKEN_KEY);
    const claims = state.claims;
    if (err.status === 403) {
      const role = claims && claims.role ? ` (role “${claims.role}”)` : '';
      showAuth('forbidden', `Server said: ${err.message}${role}`);
    } else if (tokenExpired(claims)) {
      showAuth('expired', `Server said: ${err.message}`);
    } else {
      showAuth('invalid', `Server said: ${err.message}`);
    }
  }

  function signIn(token) {
    state.token = token;
    state.claims = readClaims(token);
    $('auth').hidden = true;
    $('dashboard').hidden = false;
    $('change-token').hidden = false;
    const who = $('who');
    who.replaceChildren();
    if (state.claims && state.claims.sub) {
      who.append('Signed in as ', el('strong', { text: String(state.claims.sub) }));
      if (state.claims.role) who.append(` · ${state.claims.role}`);
      who.hidden = false;
    }
    clearTimeout(state.expiryTimer);
    if (state.claims && Number.isFinite(state.claims.exp)) {
      const left = state.claims.exp * 1000 - Date.now();
      // setTimeout holds at most ~24.8 days.
      if (left < 2 ** 31 - 1) {
        state.expiryTimer = setTimeout(() => {
          sessionStorage.removeItem(TOKEN_KEY);
          showAuth('expired', `It expired at ${fmtTime(new Date(state.claims.exp * 1000).toISOString())}.`);
        }, Math.max(0, left));
      }
    }
    state.attempt = 0;
    openStream();
  }

  // ---------- state from the server ----------

  function setLock(lock) {
    if (!lock || !lock.lock_id) return;
    if (lock.status === 'active') {
      state.active.set(lock.lock_id, lock);
      state.history.delete(lock.lock_id);
    } else {
      state.active.delete(lock.lock_id);
      state.history.set(lock.lock_id, lock);
    }
  }

  function setQueueItem(item) {
    if (!item || !item.queue_id) return;
    if (item.status === 'pending') state.queue.set(item.queue_id, item);
    else state.queue.delete(item.queue_id);
    if (item.lock) setLock(item.lock);
  }

  async function loadAll() {
    const token = state.token;
    const [active, recent, stats] = await Promise.all([
      api(`${LOCKS}?status=active&limit=500`),
      // Without a status: the latest locks of every status, and the whole
      // pending queue.
      api(`${LOCKS}?limit=${HISTORY_LIMIT}`),
      api(`${LOCKS}/stats`),
    ]);
    // Signed out (or another token) while this was under way.
    if (state.token !== token) return;
    state.active.clear();
    state.history.clear();
    state.queue.clear();
    for (const lock of recent.locks || []) setLock(lock);
    for (const lock of active.locks || []) setLock(lock);
    for (const item of recent.queue || []) setQueueItem(item);
    state.stats = stats;
    state.loaded = true;
    state.lastRefresh = Date.now();
    state.updatedAt = Date.now();
  }

  // One full refresh at a time, at most one per REFRESH_EVERY_MS.
  function scheduleRefresh() {
    if (state.refreshTimer) return;
    const wait = Math.max(0, state.lastRefresh + REFRESH_EVERY_MS - Date.now());
    state.refreshTimer = setTimeout(async () => {
      state.refreshTimer = 0;
      try {
        await refresh();
      } catch (err) {
        if (isAuthError(err)) authFailed(err);
        else showBanner(`Could not refresh: ${err.message}. The page keeps following the event stream.`);
      }
    }, wait);
  }

  async function refresh() {
    if (!state.refreshing) {
      state.refreshing = loadAll().finally(() => {
        state.refreshing = null;
      });
    }
    await state.refreshing;
    hideBanner();
    render();
  }

  // ---------- the event stream ----------

  function setConn(kind, text) {
    const conn = $('conn');
    conn.dataset.state = kind;
    $('conn-text').textContent = text;
    $('reconnect').hidden = kind !== 'retrying';
  }

  function stopStream() {
    clearTimeout(state.retryTimer);
    state.retryTimer = 0;
    state.retryAt = 0;
    if (state.stream) {
      state.stream.abort();
      state.stream = null;
    }
  }

  function retryLater(reason) {
    stopStream();
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5));
    state.attempt += 1;
    state.retryAt = Date.now() + delay;
    state.retryTimer = setTimeout(openStream, delay);
    showBanner(`Live updates interrupted (${reason}). Reconnecting with back-off; the figures below may be out of date.`);
    tickConn();
  }

  function tickConn() {
    if (!state.retryAt) return;
    const left = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
    setConn('retrying', `Reconnecting in ${left} s`);
  }

  async function openStream() {
    stopStream();
    if (!state.token) return;
    const ctrl = new AbortController();
    state.stream = ctrl;
    setConn('connecting', state.attempt ? 'Reconnecting…' : 'Connecting…');
    const opened = Date.now();
    try {
      const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${state.token}` };
      if (state.lastEventId) headers['Last-Event-ID'] = state.lastEventId;
      const resp = await fetch(`${LOCKS}/events`, { headers, cache: 'no-store', signal: ctrl.signal });
      if (!resp.ok) {
        let problem = null;
        try {
          problem = await resp.json();
        } catch {
          problem = null;
        }
        throw new ApiError(resp.status, problem);
      }
      if (!resp.body) throw new Error('this browser cannot read a streamed response');
      // Load everything once the stream is open, so no change falls between
      // the snapshot and the first event.
      await refresh();
      setConn('live', 'Live');
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = eventParser(onEvent);
      state.lastByteAt = Date.now();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        state.lastByteAt = Date.now();
        parser.push(value);
      }
      throw new Error('the server closed the stream');
    } catch (err) {
      if (ctrl.signal.aborted || state.stream !== ctrl) return;
      if (isAuthError(err)) {
        authFailed(err);
        return;
      }
      if (Date.now() - opened > HEALTHY_STREAM_MS) state.attempt = 0;
      retryLater(err instanceof ApiError ? `HTTP ${err.status}: ${err.message}` : err.message);
    }
  }

  // text/event-stream, as the HTML standard parses it: lines end in CR LF,
  // LF or CR; a blank line dispatches; ":" starts a comment (keep-alive).
  function eventParser(dispatch) {
    let buf = '';
    let data = [];
    let type = '';
    return {
      push(chunk) {
        buf += chunk;
        for (;;) {
          const i = buf.search(/[\r\n]/);
          if (i < 0) return;
          if (buf[i] === '\r' && i === buf.length - 1) return; // maybe half of CR LF
          const line = buf.slice(0, i);
          buf = buf.slice(buf[i] === '\r' && buf[i + 1] === '\n' ? i + 2 : i + 1);
          if (line === '') {
            if (data.length) dispatch(data.join("\n"), type || "message");
            data = [];
            type = '';
            continue;
          }
          if (line[0] === ':') continue;
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          let value = c < 0 ? '' : line.slice(c + 1);
          if (value[0] === ' ') value = value.slice(1);
          if (field === 'data') data.push(value);
          else if (field === 'event') type = value;
          else if (field === 'id' && !value.includes('\0')) state.lastEventId = value;
        }
      },
    };
  }

  // Each event is {"type", "lock", "queue_item", "at"}: the lock or queue
  // item as it is after the change. Applied at once; the full refresh that
  // follows brings the stats and the other waiters' positions.
  function onEvent(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    if (event && event.queue_item) setQueueItem(event.queue_item);
    if (event && event.lock) setLock(event.lock);
    state.updatedAt = Date.now();
    render();
    scheduleRefresh();
  }

  // ---------- rendering ----------

  function showBanner(text) {
    const b = $('banner');
    b.textContent = text;
    b.hidden = false;
  }

  function hideBanner() {
    $('banner').hidden = true;
  }

  function chips(resources) {
    const list = Array.isArray(resources) ? resources : [];
    const box = el('div', { class: 'chips' });
    for (const r of list.slice(0, MAX_CHIPS)) box.append(el('span', { class: 'chip', text: r }));
    if (list.length > MAX_CHIPS) {
      box.append(
        el('span', {
          class: 'chip chip-more',
          title: list.slice(MAX_CHIPS).join('\n'),
          text: `+${list.length - MAX_CHIPS} more`,
        }),
      );
    }
    return box;
  }

  function owner(o) {
    return el(
      'div',
      { class: 'owner' },
      el('span', { class: 'owner-id', text: o.owner_id ?? '–' }),
      o.owner_type ? el('span', { class: 'owner-type', text: o.owner_type }) : null,
    );
  }

  function prio(p) {
    const n = Number(p);
    const cls = n <= 2 ? 'prio prio-high' : n <= 5 ? 'prio prio-mid' : 'prio';
    return el('span', { class: cls, title: '1 is the highest, 10 the lowest', text: `P${p ?? '–'}` });
  }

  function idCell(label, id) {
    // The whole id is in the page (wide screens cut it short with CSS).
    return td(label, null, el('span', { class: 'id', title: id, text: id ?? '–' }));
  }

  function typeCell(lock) {
    const data = compactJson(lock.transaction_data, 600);
    return td(
      'Type',
      null,
      el('span', { class: 'type', title: data || undefined, text: lock.transaction_type || '–' }),
    );
  }

  function countdown(lock) {
    const wrap = el('div', {
      class: 'timeleft',
      'data-expires': lock.expires_at,
      'data-from': lock.acquired_at,
    });
    wrap.append(el('span', { class: 'timeleft-text' }), el('div', { class: 'bar' }, el('div', { class: 'bar-fill' })));
    updateCountdown(wrap);
    return wrap;
  }

  function updateCountdown(wrap) {
    const end = ms(wrap.dataset.expires);
    const start = ms(wrap.dataset.from);
    const left = end - now();
    const text = wrap.querySelector('.timeleft-text');
    const fill = wrap.querySelector('.bar-fill');
    if (!Number.isFinite(end)) {
      text.textContent = '–';
      return;
    }
    const row = wrap.closest('tr');
    if (left <= 0) {
      // The lease ran out: the server reads it as expired from now on, so
      // fetch the state once rather than wait for the cleanup's event.
      if (wrap.dataset.level !== 'gone') scheduleRefresh();
      wrap.dataset.level = 'gone';
      text.textContent = 'expired';
      text.title = 'The lease ran out: the resources are free, the cleanup job will mark it expired.';
      if (row) row.classList.add('is-lapsed');
      return;
    }
    const total = end - start;
    const frac = Number.isFinite(total) && total > 0 ? Math.min(1, left / total) : 1;
    wrap.dataset.level = frac < 0.25 || left < 5000 ? 'low' : 'ok';
    text.textContent = fmtCountdown(left);
    text.title = `expires at ${fmtTime(wrap.dataset.expires)}`;
    fill.style.width = `${(frac * 100).toFixed(1)}%`;
    if (row) row.classList.remove('is-lapsed');
  }

  function since(wrap) {
    const t = ms(wrap.dataset.since);
    wrap.textContent = Number.isFinite(t) ? fmtCountdown(now() - t) : '–';
  }

  function until(wrap) {
    const t = ms(wrap.dataset.until);
    if (!Number.isFinite(t)) wrap.textContent = '–';
    else wrap.textContent = t - now() <= 0 ? 'now' : fmtCountdown(t - now());
  }

  function renderStats() {
    const s = state.stats || {};
    const n = (v) => (v === undefined || v === null ? '–' : Number(v).toLocaleString());
    $('stat-active').textContent = n(s.active);
    $('stat-queued').textContent = n(s.queued);
    $('stat-released').textContent = n(s.released);
    $('stat-expired').textContent = n(s.expired);
    $('stat-failed').textContent = n(s.failed);
    $('stat-avg-hold').textContent = fmtDuration(s.avg_hold_ms);
    $('stat-avg-wait').textContent = fmtDuration(s.avg_wait_ms);
    $('stat-p99-wait').textContent = fmtDuration(s.p99_wait_ms);
  }

  function renderActive() {
    const locks = [...state.active.values()].sort((a, b) => ms(a.expires_at) - ms(b.expires_at));
    const rows = locks.map((lock) => {
      const btn = el('button', { type: 'button', class: 'btn btn-release', 'data-lock': lock.lock_id, text: 'Release…' });
      btn.addEventListener('click', () => openRelease(lock.lock_id));
      return el(
        'tr',
        { 'data-lock-id': lock.lock_id },
        idCell('Lock', lock.lock_id),
        td('Owner', null, owner(lock)),
        td('Resources', null, chips(lock.resources)),
        td('Token', { class: 'num mono' }, String(lock.fencing_token ?? '–')),
        td('Priority', null, prio(lock.priority)),
        typeCell(lock),
        td('Time left', null, countdown(lock)),
        td('', { class: 'actions' }, btn),
      );
    });
    $('active-body').replaceChildren(...rows);
    $('active-count').textContent = String(locks.length);
    $('active-empty').textContent = 'No active locks.';
    $('active-empty').hidden = locks.length > 0;
    $('active-table').hidden = locks.length === 0;
  }

  function grantOrder(a, b) {
    const ea = Number(a.effective_priority ?? a.priority);
    const eb = Number(b.effective_priority ?? b.priority);
    if (ea !== eb) return ea - eb;
    return ms(a.queued_at) - ms(b.queued_at);
  }

  // The estimate, marked when it runs past the item's deadline: that
  // request will probably give up before it is served.
  function waitEstimate(item) {
    const est = item.estimated_wait_ms;
    if (est === null || est === undefined) return '–';
    const text = el('span', { text: `≈ ${fmtDuration(est)}` });
    if (now() + Number(est) > ms(item.deadline)) {
      text.className = 'late';
      text.title = 'longer than it is willing to wait: likely to give up first';
    }
    return text;
  }

  function renderQueue() {
    const items = [...state.queue.values()].sort(grantOrder);
    const rows = items.map((item) => {
      const aged = Number(item.effective_priority) < Number(item.priority);
      return el(
        'tr',
        { 'data-queue-id': item.queue_id },
        td('Position', { class: 'num' }, el('strong', { text: item.position ?? '–' })),
        idCell('Queue item', item.queue_id),
        td('Owner', null, owner(item)),
        td('Resources', null, chips(item.resources)),
        td('Priority', null, prio(item.priority)),
        td(
          'Effective',
          null,
          prio(item.effective_priority ?? item.priority),
          aged ? el('span', { class: 'prio-aged', title: 'raised by waiting (aging)', text: '↑ aged' }) : null,
        ),
        td('Wait estimate', { class: 'nowrap' }, waitEstimate(item)),
        td('Waiting', null, el('span', { 'data-since': item.queued_at, title: `queued at ${fmtTime(item.queued_at)}` })),
        td('Gives up in', null, el('span', { 'data-until': item.deadline, title: `deadline ${fmtTime(item.deadline)}` })),
      );
    });
    $('queue-body').replaceChildren(...rows);
    for (const s of $('queue-body').querySelectorAll('[data-since]')) since(s);
    for (const s of $('queue-body').querySelectorAll('[data-until]')) until(s);
    $('queue-count').textContent = String(items.length);
    $('queue-empty').textContent = 'Nobody is waiting.';
    $('queue-empty').hidden = items.length > 0;
    $('queue-table').hidden = items.length === 0;
  }

  // Ended by someone other than its owner (or the principal that asked for
  // it on the owner's behalf): an admin's forced release.
  function wasForced(lock) {
    const by = lock.released_by;
    return Boolean(by) && by !== lock.owner_id && by !== lock.created_by;
  }

  // How a finished lock ended, and what the record says about it.
  function outcome(lock) {
    if (lock.status === 'failed') return { kind: 'failed', label: 'Failed' };
    if (lock.status === 'expired') return { kind: 'expired', label: 'Expired' };
    if (wasForced(lock)) return { kind: 'forced', label: 'Forced' };
    return { kind: 'released', label: lock.result ? 'Completed' : 'Released' };
  }

  function detailCell(lock, kind) {
    // One child in the cell, so the phone layout keeps it beside its label.
    const body = el('span', { class: 'detail-body' });
    const reason = lock.release_reason;
    if (kind === 'forced') {
      body.append(reason ? el('span', { class: 'reason', text: reason }) : el('span', { class: 'muted', text: 'no reason recorded' }));
    } else if (kind === 'failed') {
      body.append(el('span', { class: 'detail-kind', text: 'error' }), lock.error || '–');
    } else if (kind === 'expired') {
      body.append(el('span', { class: 'muted', text: `lease ran out at ${fmtTime(lock.expires_at)}` }));
    } else {
      const result = summary(lock.result);
      if (result) {
        body.title = compactJson(lock.result, 2000);
        body.append(el('span', { class: 'detail-kind', text: 'result' }), result);
      } else {
        body.append(el('span', { class: 'muted', text: reason || '–' }));
      }
    }
    return td('Reason / detail', { class: 'detail' }, body);
  }

  function renderHistory() {
    const all = [...state.history.values()].sort(
      (a, b) => ms(b.released_at ?? b.expires_at) - ms(a.released_at ?? a.expires_at),
    );
    const counts = { all: all.length, released: 0, forced: 0, failed: 0, expired: 0 };
    const rows = [];
    for (const lock of all) {
      const o = outcome(lock);
      counts[o.kind] += 1;
      if (state.filter !== 'all' && state.filter !== o.kind) continue;
      const ended = lock.released_at ?? lock.expires_at;
      const held = ms(ended) - ms(lock.acquired_at);
      rows.push(
        el(
          'tr',
          { 'data-lock-id': lock.lock_id, 'data-outcome': o.kind },
          td('Outcome', null, el('span', { class: `badge badge-${o.kind}`, text: o.label })),
          idCell('Lock', lock.lock_id),
          td('Owner', null, owner(lock)),
          td('Resources', null, chips(lock.resources)),
          typeCell(lock),
          td('Held', { class: 'nowrap' }, Number.isFinite(held) ? fmtDuration(held) : '–'),
          td('Ended', { class: 'nowrap' }, el('span', { title: ended || undefined, text: fmtTime(ended) })),
          td('Released by', null, el('span', { class: 'owner-id', text: lock.released_by || (o.kind === 'expired' ? 'expiry' : '–') })),
          detailCell(lock, o.kind),
        ),
      );
    }
    $('history-body').replaceChildren(...rows);
    $('history-count').textContent = String(all.length);
    $('history-empty').hidden = rows.length > 0;
    $('history-table').hidden = rows.length === 0;
    $('history-empty').textContent = all.length ? 'Nothing of this kind in recent history.' : 'No finished locks yet.';
    for (const b of document.querySelectorAll('.filter')) {
      const f = b.dataset.filter;
      b.setAttribute('aria-pressed', String(f === state.filter));
      b.title = `${counts[f]} in recent history`;
    }
  }

  function renderUpdated() {
    if (!state.updatedAt) return;
    const age = Math.round((Date.now() - state.updatedAt) / 1000);
    $('updated').textContent = age < 2 ? 'updated just now' : `updated ${fmtCountdown(age * 1000)} ago`;
  }

  function render() {
    if (!state.loaded) return;
    renderStats();
    renderActive();
    renderQueue();
    renderHistory();
    renderUpdated();
  }

  // Once a second: countdowns, waiting times, the reconnect countdown.
  function tick() {
    for (const w of document.querySelectorAll('#active-body .timeleft')) updateCountdown(w);
    for (const s of document.querySelectorAll('#queue-body [data-since]')) since(s);
    for (const s of document.querySelectorAll('#queue-body [data-until]')) until(s);
    renderUpdated();
    tickConn();
    const conn = $('conn').dataset.state;
    if (conn === 'live' && Date.now() - state.lastByteAt > STALL_MS) retryLater('no data from the server for 45 s');
  }

  // ---------- the release dialog ----------

  function openRelease(lockId) {
    const lock = state.active.get(lockId);
    if (!lock) return;
    state.releasing = lock;
    $('release-lock').textContent = lock.lock_id;
    $('release-owner').textContent = `${lock.owner_id ?? '–'}${lock.owner_type ? ` (${lock.owner_type})` : ''}`;
    $('release-resources').textContent = (lock.resources || []).join(', ');
    const reason = $('release-reason');
    reason.value = '';
    reason.removeAttribute('aria-invalid');
    $('release-error').hidden = true;
    $('release-confirm').disabled = false;
    $('release-dialog').showModal();
    reason.focus();
  }

  function closeRelease() {
    state.releasing = null;
    if ($('release-dialog').open) $('release-dialog').close();
  }

  function releaseError(text) {
    const e = $('release-error');
    e.textContent = text;
    e.hidden = false;
  }

  async function submitRelease(event) {
    event.preventDefault();
    const lock = state.releasing;
    if (!lock) return;
    const reasonInput = $('release-reason');
    const reason = reasonInput.value.trim();
    if (!reason) {
      reasonInput.setAttribute('aria-invalid', 'true');
      releaseError('Give a reason: it is recorded with the release.');
      reasonInput.focus();
      return;
    }
    reasonInput.removeAttribute('aria-invalid');
    const confirm = $('release-confirm');
    confirm.disabled = true;
    confirm.textContent = 'Releasing…';
    try {
      const released = await api(`${LOCKS}/${encodeURIComponent(lock.lock_id)}/release`, {
        method: 'POST',
        body: { force: true, reason },
      });
      setLock(released);
      closeRelease();
      render();
      scheduleRefresh();
    } catch (err) {
      if (isAuthError(err)) {
        closeRelease();
        authFailed(err);
        return;
      }
      const code = err.problem && err.problem.code ? ` (${err.problem.code})` : '';
      releaseError(`Not released: ${err.message}${code}`);
      // A lock that already ended shows its real state.
      scheduleRefresh();
    } finally {
      confirm.disabled = false;
      confirm.textContent = 'Force release';
    }
  }

  // ---------- wiring ----------

  function start() {
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      let token = $('token-input').value.trim();
      if (/^bearer\s+/i.test(token)) token = token.replace(/^bearer\s+/i, '');
      if (!token) {
        showAuth('missing');
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, token);
      signIn(token);
    });
    $('change-token').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showAuth('signed-out');
    });
    $('reconnect').addEventListener('click', () => {
      state.attempt = 0;
      openStream();
    });
    $('release-form').addEventListener('submit', submitRelease);
    $('release-cancel').addEventListener('click', closeRelease);
    $('release-dialog').addEventListener('close', () => {
      state.releasing = null;
    });
    for (const b of document.querySelectorAll('.filter')) {
      b.addEventListener('click', () => {
        state.filter = b.dataset.filter;
        renderHistory();
      });
    }
    // Back online or back in view: do not wait out the back-off.
    const hurry = () => {
      if (state.token && state.retryTimer) {
        state.attempt = 0;
        openStream();
      }
    };
    window.addEventListener('online', hurry);
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') hurry();
    });
    setInterval(tick, 1000);

    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved);
    else showAuth('missing');
  }

  start();
})();
