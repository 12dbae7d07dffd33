ledger seed-load --users 33000 --balance 1000 --out bench/results/users.json   # DATABASE_URL=postgres://postgres@127.0.0.1:5432/ledger_bench
