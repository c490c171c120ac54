-- Tables and indexes the attribution pipeline adds to the challenge database.
-- Portable between SQLite and PostgreSQL. Every statement is idempotent.

-- Conversions of a run that are not fully attributed, with the reason. One row per conversion
-- and reason; a run replaces the rows of the conversions it handles, so the table always shows
-- the outcome of the latest run over each conversion.
CREATE TABLE IF NOT EXISTS attribution_issues (
    conv_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT,
    run_id TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (conv_id, reason)
);

-- One row per pipeline run: its range and when it was first seen (for staging retention).
CREATE TABLE IF NOT EXISTS attribution_runs (
    run_id TEXT PRIMARY KEY,
    range_start TEXT NOT NULL,
    range_end TEXT NOT NULL,
    created_at TEXT NOT NULL
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

CREATE TABLE IF NOT EXISTS attribution_stg_issues (
    run_id TEXT NOT NULL,
    conv_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT,
    PRIMARY KEY (run_id, conv_id, reason)
);

-- Report dates a run must recompute: dates its conversions credit now or credited before.
CREATE TABLE IF NOT EXISTS attribution_stg_report_dates (
    run_id TEXT NOT NULL,
    report_date TEXT NOT NULL,
    PRIMARY KEY (run_id, report_date)
);

-- Indexes the pipeline's queries rely on. Indexes on the source tables do not change their data.
CREATE INDEX IF NOT EXISTS ix_session_sources_user_ts
    ON session_sources (user_id, event_date, event_time);
CREATE INDEX IF NOT EXISTS ix_session_sources_date
    ON session_sources (event_date, channel_name);
CREATE INDEX IF NOT EXISTS ix_conversions_date
    ON conversions (conv_date, conv_time);
CREATE INDEX IF NOT EXISTS ix_attribution_customer_journey_session
    ON attribution_customer_journey (session_id);
CREATE INDEX IF NOT EXISTS ix_attribution_stg_request_journeys_request
    ON attribution_stg_request_journeys (run_id, request_no);
