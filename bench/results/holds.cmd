server: LEDGER_LISTEN_REUSE_PORT=true LEDGER_DB_MAX_CONNECTIONS=50 ledger serve
loadgen --users-file bench/results/users.json --target 127.0.0.1:18090 --label holds --scenario holds --vus 50 --duration 60 --amount 0.01 --database-url postgres://postgres@127.0.0.1:5432/ledger_bench
