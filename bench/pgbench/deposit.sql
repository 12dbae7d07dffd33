-- The SQL of one API deposit (POST /api/v1/wallets/deposit), statement for
-- statement, as PostgreSQL's log showed the server sending it before one
-- commit per write and group commit (prepared, extended protocol: run with
-- `pgbench -M prepared`): the per-deposit baseline the ratios compare with. The hash chain value is
-- computed by the client in both cases, so here it is a fixed 64-hex string.
-- (No ":" before a letter or digit inside literals: pgbench reads it as a variable.)
-- Variables: -D users=N (the seeded users; ids 1..N).
-- First the claim of the Idempotency-Key, in its own statement (autocommit);
-- then the money transaction, which completes the key inside it.
\set uid random(1, :users)
\set nonce random(1, 9000000000000000000)
INSERT INTO "idempotency_keys" ("key", "principal", "route", "request_hash", "status", "claim_token", "response_status", "response_body", "locked_until_ms", "expires_at_ms", "created_at")
VALUES ('pgbench-' || :client_id || '-' || :nonce, 'service-pgbench', 'POST /api/v1/wallets/deposit', 'a5ff9db113154b5788e8dec3ff71440af4287014396d776d4ac950d969d0a13f', 'processing', gen_random_uuid(), NULL, NULL, 1795268086698, 1795354426698, now())
ON CONFLICT ("key") DO NOTHING RETURNING "key" AS k, "claim_token" AS t \gset
BEGIN;
SELECT "id", "user_id", "kind", "currency", "balance", "margin", "profit", "version", "last_hash", "created_at", "updated_at"
FROM "wallets" WHERE "user_id" = :uid AND "kind" = 'live' LIMIT 1 FOR UPDATE \gset w_
UPDATE "wallets" SET "balance" = "balance" + 100000000, "margin" = "margin" + 0, "profit" = "profit" + 0, "version" = "version" + 1,
  "last_hash" = 'b1e0ba44630184b50fe9d061a0434a40378bb6b0b02d6db24fb20f6bb1b34927', "updated_at" = now()
WHERE "id" = :w_id AND "version" = :w_version;
INSERT INTO "journal_entries" ("operation_id", "wallet_id", "user_id", "wallet_kind", "kind", "balance_delta", "margin_delta", "profit_delta", "balance_after", "margin_after", "profit_after", "reference", "metadata", "created_at", "hash")
VALUES (gen_random_uuid(), :w_id, :uid, 'live', 'deposit', 100000000, 0, 0, :w_balance::bigint + 100000000, :w_margin::bigint, :w_profit::bigint, NULL, NULL, now(), 'b1e0ba44630184b50fe9d061a0434a40378bb6b0b02d6db24fb20f6bb1b34927');
UPDATE "idempotency_keys" SET "status" = 'completed', "response_status" = 200,
  "response_body" = '{"amount":"1","balance_after":"1000.972","balance_before":"999.972","created_at":"2026-11-21T13-33-46.702314Z","kind":"deposit","operation_id":"93c95124-e075-47bc-8b93-e77bbb6445bf","user_id":5,"wallet":"live"}',
  "locked_until_ms" = 0
WHERE "key" = :k AND "claim_token" = :t AND "status" = 'processing';
COMMIT;
