pgbench -n -M prepared -c 50 -j 2 -T 30 -D users=33000 -f bench/pgbench/read.sql ledger_bench_pgbench
