server: LEDGER_LISTEN_REUSE_PORT=true LEDGER_DB_MAX_CONNECTIONS=50 ledger serve
loadgen --users-file bench/results/users.json --target 127.0.0.1:18090 --label orders --scenario orders --vus 50 --duration 30
