server: DATABASE_URL=sqlite://…/ledger.db LEDGER_LISTEN_REUSE_PORT=true LEDGER_DB_MAX_CONNECTIONS=50 ledger serve
loadgen --users-file bench/results/users.json --target 127.0.0.1:18090 --label sqlite --scenario mixed --vus 200 --ramp 5 --duration 60 --think-min-ms 100 --think-max-ms 500 --database-url sqlite:///tmp/tmp.qEPMi2VDzf/ledger.db
