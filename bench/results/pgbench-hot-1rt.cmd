pgbench -n -M prepared -c 50 -j 2 -T 30 -D users=1 -f bench/pgbench/deposit-1rt.sql ledger_bench_pgbench
