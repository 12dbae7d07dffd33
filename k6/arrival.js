// Arrival rate: RATE (2,000) mixed sessions started per second for
// DURATION (10 m), however slow the server gets (an open model: latency
// shows up as more VUs in flight, not as less load). No think time.
import exec from 'k6/execution';
import { mixedIteration, noPause, sessionOptions } from './lib/mixed.js';
import { envNumber, envString, users } from './lib/config.js';

const RATE = envNumber('RATE', 2000);
// A session is 13 requests; at ~10 ms each one VU serves ~8 sessions/s, so
// RATE VUs leave room for 100 ms answers and MAX_VUS for 1 s ones.
const PRE_VUS = envNumber('PRE_VUS', RATE);
const MAX_VUS = envNumber('MAX_VUS', RATE * 5);

export const options = sessionOptions('arrival', {
  executor: 'constant-arrival-rate',
  rate: RATE,
  timeUnit: '1s',
  duration: envString('DURATION', '10m'),
  preAllocatedVUs: PRE_VUS,
  maxVUs: MAX_VUS,
}, {
  // Sessions k6 could not start (all VUs busy): under 1 % of the rate.
  dropped_iterations: [`rate<${RATE * 0.01}`],
});

// Each session takes the next user rather than the VU's own: a VU runs
// sessions back to back, and one user at that pace would hit the server's
// per-principal rate limit.
export default function () {
  const user = users[exec.scenario.iterationInTest % users.length];
  mixedIteration(user, noPause);
}
