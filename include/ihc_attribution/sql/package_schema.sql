-- The package's own tables and their indexes; nothing here touches a source table.
-- Portable between SQLite and PostgreSQL. Every statement is idempotent.

-- Schema versions applied to this database (see schema.py): an upgrade knows what to migrate.
CREATE TABLE IF NOT EXISTS attribution_schema_version (
    version INT PRIMARY KEY,
    applied_at TEXT NOT NULL
);

-- Conversions not fully attributed, with the reason, as of the latest run over each. conv_date: the
-- date the run read (NULL when none): a run over that day replaces the row, as it replaces credit.
CREATE TABLE IF NOT EXISTS attribution_issues (
    conv_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT,
    run_id TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    conv_date TEXT,
    PRIMARY KEY (conv_id, reason)
);

-- One row per pipeline run: its range and when it was first seen (for staging retention).
CREATE TABLE IF NOT EXISTS attribution_runs (
    run_id TEXT PRIMARY KEY,
    range_start TEXT NOT NULL,
    range_end TEXT NOT NULL,
    created_at TEXT NOT NULL
);

-- Which run last rebuilt the report rows of each date, and with which look-back (NULL: unlimited),
-- so that two reports over the same dates that disagree can be told apart.
CREATE TABLE IF NOT EXISTS attribution_report_builds (
    report_date TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    lookback_days INT,
    triggered_at TEXT,
    built_at TEXT NOT NULL
);

-- The outcome of each run's final check; note says e.g. that the range held no conversions.
CREATE TABLE IF NOT EXISTS attribution_run_results (
    run_id TEXT PRIMARY KEY,
    range_start TEXT NOT NULL,
    range_end TEXT NOT NULL,
    conversions INT NOT NULL,
    attributed INT NOT NULL,
    issues INT NOT NULL,
    note TEXT
);

-- Staging, keyed by run id. Data moves between the DAG's tasks through these tables.
CREATE TABLE IF NOT EXISTS attribution_stg_conversions (
    run_id TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    user_id TEXT,
    conv_date TEXT,
    conv_time TEXT,
    revenue FLOAT,
    status TEXT NOT NULL,
    n_sessions INT NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, conv_id)
);

CREATE TABLE IF NOT EXISTS attribution_stg_sessions (
    run_id TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    event_ts TEXT NOT NULL,
    channel_name TEXT NOT NULL,
    holder_engagement INT NOT NULL,
    closer_engagement INT NOT NULL,
    impression_interaction INT NOT NULL,
    conversion INT NOT NULL,
    PRIMARY KEY (run_id, conv_id, session_id)
);

CREATE TABLE IF NOT EXISTS attribution_stg_requests (
    run_id TEXT NOT NULL,
    request_no INT NOT NULL,
    n_journeys INT NOT NULL,
    n_sessions INT NOT NULL,
    status TEXT NOT NULL,
    attempts INT NOT NULL DEFAULT 0,
    http_status INT,
    error TEXT,
    PRIMARY KEY (run_id, request_no)
);

CREATE TABLE IF NOT EXISTS attribution_stg_request_journeys (
    run_id TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    request_no INT NOT NULL,
    PRIMARY KEY (run_id, conv_id)
);

CREATE TABLE IF NOT EXISTS attribution_stg_results (
    run_id TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    initializer FLOAT NOT NULL,
    holder FLOAT NOT NULL,
    closer FLOAT NOT NULL,
    ihc FLOAT NOT NULL,
    PRIMARY KEY (run_id, conv_id, session_id)
);

-- Fingerprint of each staged journey, and fingerprint and size of each journey answered: an
-- unchanged journey keeps its answer when the run is redone, so it is not sent (and paid for) again.
CREATE TABLE IF NOT EXISTS attribution_stg_journey_keys (
    run_id TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    journey_hash TEXT NOT NULL,
    PRIMARY KEY (run_id, conv_id)
);

CREATE TABLE IF NOT EXISTS attribution_stg_answered (
    run_id TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    journey_hash TEXT NOT NULL,
    n_sent INT NOT NULL,
    PRIMARY KEY (run_id, conv_id)
);

CREATE TABLE IF NOT EXISTS attribution_stg_issues (
    run_id TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT,
    PRIMARY KEY (run_id, conv_id, reason)
);

-- Conversion days a run handles besides its range: the days attribution_drift named when the run
-- was asked to re-attribute them (param reattribute_drift).
CREATE TABLE IF NOT EXISTS attribution_stg_extra_days (
    run_id TEXT NOT NULL,
    day TEXT NOT NULL,
    PRIMARY KEY (run_id, day)
);

-- The start of each staged journey's look-back window (only for runs with a look-back).
CREATE TABLE IF NOT EXISTS attribution_stg_journey_windows (
    run_id TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    since_ts TEXT NOT NULL,
    PRIMARY KEY (run_id, conv_id)
);

-- Report dates a run must recompute: dates its conversions credit now or credited before.
CREATE TABLE IF NOT EXISTS attribution_stg_report_dates (
    run_id TEXT NOT NULL,
    report_date TEXT NOT NULL,
    PRIMARY KEY (run_id, report_date)
);

-- Spend per (session date, channel) in micro-euros (exact integers), with the counts the run's
-- source warnings report (see spend.py); the dates read, and by which run, in attribution_spend_dates.
CREATE TABLE IF NOT EXISTS attribution_spend (
    date TEXT NOT NULL,
    channel_name TEXT,
    session_rows INT NOT NULL,
    sessions INT NOT NULL,
    cost_rows INT NOT NULL,
    null_costs INT NOT NULL,
    negative_costs INT NOT NULL,
    unusable_costs INT NOT NULL,
    cost_micros BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_attribution_spend_date ON attribution_spend (date, channel_name);
CREATE TABLE IF NOT EXISTS attribution_spend_dates (
    date TEXT PRIMARY KEY,
    run_id TEXT NOT NULL
);

-- The credit of attribution_customer_journey with the session's date and channel as the journey saw
-- them, the credit in 1/10,000 and credit x revenue in micro-euros (exact integers, so sums do not
-- depend on their order), and the conversion's date (a run owns the conversions of its days).
CREATE TABLE IF NOT EXISTS attribution_credit (
    conv_id TEXT NOT NULL,
    conv_date TEXT,
    conv_ts TEXT,
    user_id TEXT,
    session_id TEXT NOT NULL,
    session_ts TEXT NOT NULL,
    date TEXT NOT NULL,
    channel_name TEXT NOT NULL,
    revenue_micros BIGINT NOT NULL,
    ihc_e4 BIGINT NOT NULL,
    ihc_revenue_micros BIGINT NOT NULL,
    -- the same sessions under the rule-based models (see credit.py)
    first_touch_e4 BIGINT NOT NULL,
    last_touch_e4 BIGINT NOT NULL,
    linear_e4 BIGINT NOT NULL,
    position_e4 BIGINT NOT NULL,
    PRIMARY KEY (conv_id, session_id)
);
CREATE INDEX IF NOT EXISTS ix_attribution_credit_date ON attribution_credit (date, channel_name);
CREATE INDEX IF NOT EXISTS ix_attribution_credit_conv_date ON attribution_credit (conv_date);
CREATE INDEX IF NOT EXISTS ix_attribution_credit_user ON attribution_credit (user_id);

-- One row per attributed conversion: what its journey was when it was attributed, for comparing
-- with the sources at every run (see drift.py). sessions: the journey's sessions in its window
-- [since_ts, conv_ts) (since_ts NULL: unlimited look-back); sent: those sent and credited (fewer
-- when an oversized journey was truncated), the earliest of them first_ts/first_session_id.
CREATE TABLE IF NOT EXISTS attribution_journeys (
    conv_id TEXT PRIMARY KEY,
    user_id TEXT,
    conv_date TEXT,
    conv_ts TEXT,
    since_ts TEXT,
    sessions INT NOT NULL,
    sent INT NOT NULL,
    first_ts TEXT,
    first_session_id TEXT,
    revenue_micros BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS ix_attribution_journeys_user ON attribution_journeys (user_id);

-- Attributed conversions whose journey no longer matches the sources (see drift.py): the days to re-run.
CREATE TABLE IF NOT EXISTS attribution_drift (
    conv_id TEXT PRIMARY KEY,
    conv_date TEXT,
    run_id TEXT NOT NULL,
    detail TEXT
);

-- Indexes of the package's own tables. None is ever built on a source table: the indexes the
-- queries would use there are the users' to create (README, "Indexes on your tables").
CREATE INDEX IF NOT EXISTS ix_attribution_customer_journey_session
    ON attribution_customer_journey (session_id);
-- Answers of other runs for the same journey fingerprint (reused instead of sent again).
CREATE INDEX IF NOT EXISTS ix_attribution_stg_answered_conv_hash
    ON attribution_stg_answered (conv_id, journey_hash, run_id);
-- A request's journeys in conv_id order, the order in which a request is built.
CREATE INDEX IF NOT EXISTS ix_attribution_stg_request_journeys_request_conv
    ON attribution_stg_request_journeys (run_id, request_no, conv_id);
