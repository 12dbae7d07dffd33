// Load: ramp up to VUS users (33,000 by default), hold, ramp down. Each VU
// is one seeded user running the mixed session with 1-3 s think time.
import { ownUserSession, rampingVus, sessionOptions } from './lib/mixed.js';
import { envNumber, envString } from './lib/config.js';

const VUS = envNumber('VUS', 33000);
const RAMP = envString('RAMP', '10m');
const HOLD = envString('HOLD', '20m');
const RAMP_DOWN = envString('RAMP_DOWN', '2m');

export const options = sessionOptions('load', rampingVus(0, [
  { duration: RAMP, target: VUS },
  { duration: HOLD, target: VUS },
  { duration: RAMP_DOWN, target: 0 },
]));

export default ownUserSession;
