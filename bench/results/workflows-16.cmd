payout-sim --listen 127.0.0.1:0 --mode accept --quiet   # prints LEDGER_PAYOUT_URL=http://127.0.0.1:34395/payouts
server: LEDGER_PAYOUT_URL=http://127.0.0.1:34395/payouts LEDGER_WORKFLOW_WORKERS=16 LEDGER_LISTEN_REUSE_PORT=true LEDGER_DB_MAX_CONNECTIONS=50 ledger serve
loadgen --users-file bench/results/users.json --target 127.0.0.1:18090 --label workflows-16 --scenario withdrawal-workflows --vus 50 --duration 60 --amount 0.01 --poll-ms 20 --database-url postgres://postgres@127.0.0.1:5432/ledger_bench
