// Spike: from BASE_VUS (100) to SPIKE_VUS (20,000) in 30 s, hold a minute,
// back down; the mixed session with think time, as in load.js.
import { ownUserSession, rampingVus, sessionOptions } from './lib/mixed.js';
import { envNumber, envString } from './lib/config.js';

const BASE_VUS = envNumber('BASE_VUS', 100);
const SPIKE_VUS = envNumber('SPIKE_VUS', 20000);
const RISE = envString('RISE', '30s');
const HOLD = envString('HOLD', '1m');
const FALL = envString('FALL', '30s');

export const options = sessionOptions('spike', rampingVus(BASE_VUS, [
  { duration: RISE, target: SPIKE_VUS },
  { duration: HOLD, target: SPIKE_VUS },
  { duration: FALL, target: BASE_VUS },
  { duration: '30s', target: BASE_VUS },
  { duration: '10s', target: 0 },
]));

export default ownUserSession;
