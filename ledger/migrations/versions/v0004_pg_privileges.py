"""Least privilege on PostgreSQL: a write lock and rate buckets the app role cannot abuse.

Revision ID: 0004
Revises: 0003

PostgreSQL only (on SQLite the file's owner is the only writer and ``BEGIN IMMEDIATE``
is the lock; nothing changes there):

* The append-only triggers of ``events``, ``checkpoints``, ``checkpoint_notes`` and
  ``cosignatures`` fire ALWAYS, so a session
  with ``session_replication_role = replica`` no longer skips them.
* ``ledger_write_lock``: a one-row table whose EXCLUSIVE table lock is the ledger's
  cross-process write lock (it replaces ``pg_advisory_xact_lock``, which any session
  of any role could take to stop every append). Nobody but the owner has a privilege
  on the table, so no other role can lock it; the row holds the owner's bounds
  ``max_wait_ms`` (the longest a writer waits) and ``max_hold_ms``.
* ``ledger_write_lock(wait_ms)``: SECURITY DEFINER, owned by the schema owner,
  EXECUTE revoked from PUBLIC (``ledger.pg_roles`` grants it to the app role only).
  It takes the table lock, waiting at most ``least(wait_ms, max_wait_ms)``; when
  that times out it terminates the sessions that hold the lock in a transaction older
  than ``max_wait_ms + max_hold_ms`` (a holder that sits on the lock instead of
  appending) and tries once more.
* ``l7_rate_buckets`` (the engine's shared token buckets, created here if the engine
  has not made it already) gains the ``rate`` and ``burst`` each bucket was last
  taken with, and ``l7_rate_take(bucket, key, rate, burst)``: SECURITY DEFINER,
  EXECUTE revoked from PUBLIC, the only way the app role touches the buckets. A
  caller's rate and burst apply only as far as they are not above the stored ones,
  until the bucket is full anyway, so no argument refills a bucket early.

Every object is created only if missing or replaced, so re-running is harmless.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_ALWAYS = [
    f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {table}_refuse_{what}"
    for table in ("events", "checkpoints", "checkpoint_notes", "cosignatures")
    for what in ("update_delete", "truncate")
]

_LOCK = [
    """CREATE TABLE IF NOT EXISTS ledger_write_lock (
    id smallint PRIMARY KEY CHECK (id = 1),
    max_wait_ms integer NOT NULL CHECK (max_wait_ms > 0),
    max_hold_ms integer NOT NULL CHECK (max_hold_ms > 0)
)""",
    "INSERT INTO ledger_write_lock VALUES (1, 30000, 10000) ON CONFLICT (id) DO NOTHING",
    "REVOKE ALL ON TABLE ledger_write_lock FROM PUBLIC",
    """CREATE OR REPLACE FUNCTION ledger_write_lock(wait_ms integer) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = 0
AS $fn$
DECLARE
    cfg record;
    holder record;
    fenced integer := 0;
BEGIN
    SELECT max_wait_ms, max_hold_ms INTO STRICT cfg FROM public.ledger_write_lock;
    PERFORM set_config('lock_timeout', greatest(1, least(wait_ms, cfg.max_wait_ms))::text, true);
    FOR attempt IN 1..2 LOOP
        BEGIN
            LOCK TABLE public.ledger_write_lock IN EXCLUSIVE MODE;
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            IF attempt = 2 OR fenced > 0 THEN
                RAISE;
            END IF;
        END;
        FOR holder IN
            SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'relation' AND l.granted AND l.mode = 'ExclusiveLock'
              AND l.relation = 'public.ledger_write_lock'::regclass
              AND a.xact_start < clock_timestamp()
                  - make_interval(secs => (cfg.max_wait_ms + cfg.max_hold_ms) / 1000.0)
        LOOP
            BEGIN
                IF pg_terminate_backend(holder.pid) THEN
                    RAISE WARNING 'ledger write lock: terminated session % (held the lock '
                        'in a transaction older than % ms)', holder.pid,
                        cfg.max_wait_ms + cfg.max_hold_ms;
                    fenced := fenced + 1;
                END IF;
            EXCEPTION WHEN insufficient_privilege THEN
                NULL;  -- a superuser's session: out of reach, the wait fails below
            END;
        END LOOP;
        IF fenced = 0 THEN
            RAISE EXCEPTION 'ledger write lock is held by another session (waited % ms)',
                least(wait_ms, cfg.max_wait_ms) USING ERRCODE = 'lock_not_available';
        END IF;
    END LOOP;
END
$fn$""",
    "REVOKE ALL ON FUNCTION ledger_write_lock(integer) FROM PUBLIC",
]

_BUCKETS = [
    """CREATE TABLE IF NOT EXISTS l7_rate_buckets (
    bucket varchar(64) NOT NULL,
    key varchar(256) NOT NULL,
    tokens double precision NOT NULL,
    at double precision NOT NULL,
    PRIMARY KEY (bucket, key)
)""",
    # 0 for rows from before this revision: they count as full, so the next take adopts
    # the caller's limits (what a fresh bucket would get) and nothing is reset early.
    "ALTER TABLE l7_rate_buckets ADD COLUMN IF NOT EXISTS rate double precision NOT NULL DEFAULT 0",
    "ALTER TABLE l7_rate_buckets ADD COLUMN IF NOT EXISTS burst double precision "
    "NOT NULL DEFAULT 0",
    "REVOKE ALL ON TABLE l7_rate_buckets FROM PUBLIC",
    """CREATE OR REPLACE FUNCTION l7_rate_take(
    p_bucket text, p_key text, p_rate double precision, p_burst double precision
) RETURNS double precision
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    now_s double precision := extract(epoch FROM clock_timestamp());
    b record;
    eff_rate double precision;
    eff_burst double precision;
    level double precision;
BEGIN
    IF p_rate IS NULL OR p_burst IS NULL OR p_rate = 'NaN' OR p_burst = 'NaN'
       OR NOT (p_rate > 0 AND p_rate < 'Infinity' AND p_burst >= 1 AND p_burst < 'Infinity')
       OR p_bucket IS NULL OR p_key IS NULL THEN
        RAISE EXCEPTION 'l7_rate_take: rate must be > 0 and burst >= 1, both finite'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO public.l7_rate_buckets (bucket, key, tokens, at, rate, burst)
    VALUES (p_bucket, p_key, p_burst, now_s, p_rate, p_burst)
    ON CONFLICT (bucket, key) DO NOTHING;
    SELECT tokens, at, rate, burst INTO STRICT b FROM public.l7_rate_buckets
    WHERE bucket = p_bucket AND key = p_key FOR UPDATE;
    eff_rate := least(p_rate, b.rate);
    eff_burst := least(p_burst, b.burst);
    level := least(eff_burst, b.tokens + greatest(0, now_s - b.at) * eff_rate);
    IF level >= eff_burst THEN  -- full: a fresh bucket would be no fuller
        eff_rate := p_rate;
        eff_burst := p_burst;
        level := p_burst;
    END IF;
    IF level < 1 THEN
        RETURN (1 - level) / eff_rate;
    END IF;
    UPDATE public.l7_rate_buckets
    SET tokens = level - 1, at = now_s, rate = eff_rate, burst = eff_burst
    WHERE bucket = p_bucket AND key = p_key;
    RETURN NULL;
END
$fn$""",
    "REVOKE ALL ON FUNCTION l7_rate_take(text, text, double precision, double precision) "
    "FROM PUBLIC",
]


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    for stmt in (*_ALWAYS, *_LOCK, *_BUCKETS):
        op.execute(stmt)


def downgrade() -> None:
    raise NotImplementedError("the ledger is append-only; its schema is never downgraded")
