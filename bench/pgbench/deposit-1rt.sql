-- The work of one API deposit (as in deposit.sql: lock the wallet, add to
-- its balance, append the journal row, record the Idempotency-Key with its
-- response) in ONE statement, so ONE round trip and ONE commit (autocommit):
-- a data-modifying CTE. The UPDATE takes the wallet's row lock, so no
-- SELECT ... FOR UPDATE and no version guard are needed; its RETURNING feeds
-- the journal row's values-after; the key is written `completed` at once,
-- so there is no separate claim. This is the ceiling a server reaches once
-- a money write is one transaction in one round trip.
-- The hash chain value is computed by the client, as in deposit.sql, so here
-- it is a fixed 64-hex string.
-- (No ":" before a letter or digit inside literals: pgbench reads it as a variable.)
-- Variables: -D users=N (the seeded users; ids 1..N). With users=1 every
-- client deposits into the same wallet (the hot-row variant).
\set uid random(1, :users)
\set nonce random(1, 9000000000000000000)
WITH w AS (
  UPDATE "wallets" SET "balance" = "balance" + 100000000, "version" = "version" + 1,
    "last_hash" = 'b1e0ba44630184b50fe9d061a0434a40378bb6b0b02d6db24fb20f6bb1b34927', "updated_at" = now()
  WHERE "user_id" = :uid AND "kind" = 'live'
  RETURNING "id", "user_id", "balance", "margin", "profit"
), j AS (
  INSERT INTO "journal_entries" ("operation_id", "wallet_id", "user_id", "wallet_kind", "kind", "balance_delta", "margin_delta", "profit_delta", "balance_after", "margin_after", "profit_after", "reference", "metadata", "created_at", "hash")
  SELECT gen_random_uuid(), w."id", w."user_id", 'live', 'deposit', 100000000, 0, 0, w."balance", w."margin", w."profit", NULL, NULL, now(), 'b1e0ba44630184b50fe9d061a0434a40378bb6b0b02d6db24fb20f6bb1b34927'
  FROM w
  RETURNING "operation_id"
)
INSERT INTO "idempotency_keys" ("key", "principal", "route", "request_hash", "status", "claim_token", "response_status", "response_body", "locked_until_ms", "expires_at_ms", "created_at")
SELECT 'pgbench1-' || :client_id || '-' || :nonce, 'service-pgbench', 'POST /api/v1/wallets/deposit', 'a5ff9db113154b5788e8dec3ff71440af4287014396d776d4ac950d969d0a13f', 'completed', gen_random_uuid(), 200,
  '{"amount":"1","balance_after":"1000.972","balance_before":"999.972","created_at":"2026-11-21T13-33-46.702314Z","kind":"deposit","operation_id":"' || j."operation_id" || '","user_id":5,"wallet":"live"}',
  0, 1795354426698, now()
FROM j
ON CONFLICT ("key") DO NOTHING;
