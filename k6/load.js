// Load: ramp up to VUS users (33,000 by default), hold, ramp down. Each VU
// is one seeded user running the mixed session with 1-3 s think time.
import { mixedIteration } from './lib/mixed.js';
import { envNumber, envString, thresholds, userForVu } from './lib/config.js';

const VUS = envNumber('VUS', 33000);
const RAMP = envString('RAMP', '10m');
const HOLD = envString('HOLD', '20m');
const RAMP_DOWN = envString('RAMP_DOWN', '2m');

export const options = {
  scenarios: {
    load: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: RAMP, target: VUS },
        { duration: HOLD, target: VUS },
        { duration: RAMP_DOWN, target: 0 },
      ],
      gracefulRampDown: '30s',
    },
  },
  // Reads' bodies are not used; writes keep theirs (see lib/api.js).
  discardResponseBodies: true,
  thresholds,
};

export default function () {
  mixedIteration(userForVu(__VU));
}
