server: LEDGER_GROUP_COMMIT=false LEDGER_READ_BATCH=false LEDGER_LISTEN_REUSE_PORT=true LEDGER_DB_MAX_CONNECTIONS=50 ledger serve
loadgen --users-file bench/results/users.json --target 127.0.0.1:18090 --label deposit-solo --scenario deposit --vus 50 --duration 30
