// Soak: VUS (5,000) steady users for DURATION (2 h) running the mixed
// session with think time: leaks, pool exhaustion, growing tables and
// slow drift show up here, not in a 10-minute run. The seeded tokens must
// outlive the run (`ledger seed-load --token-ttl`, 1 day by default).
import { ownUserSession, sessionOptions } from './lib/mixed.js';
import { envNumber, envString } from './lib/config.js';

export const options = sessionOptions('soak', {
  executor: 'constant-vus',
  vus: envNumber('VUS', 5000),
  duration: envString('DURATION', '2h'),
  gracefulStop: '30s',
});

export default ownUserSession;
