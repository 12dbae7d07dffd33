-- The SQL of one API wallet read (GET /api/v1/users/{id}/wallets).
-- Variables: -D users=N.
\set uid random(1, :users)
SELECT "wallets"."id", "wallets"."user_id", "wallets"."kind", "wallets"."currency", "wallets"."balance", "wallets"."margin", "wallets"."profit", "wallets"."version", "wallets"."last_hash", "wallets"."created_at", "wallets"."updated_at"
FROM "wallets" WHERE "wallets"."user_id" = :uid ORDER BY "wallets"."id" ASC;
