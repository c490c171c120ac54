-- Schema of the Haensel AMS data-engineering challenge database (challenge_db_create.sql),
-- cleaned so that SQLite and PostgreSQL accept it as is. Source tables first, then the two
-- tables the pipeline fills.

CREATE TABLE IF NOT EXISTS session_sources (
    session_id TEXT PRIMARY KEY,
    user_id TEXT,
    event_date DATE,
    event_time TIME,
    channel_name TEXT,
    holder_engagement INT,
    closer_engagement INT,
    impression_interaction INT
);

CREATE TABLE IF NOT EXISTS conversions (
    conv_id TEXT PRIMARY KEY,
    user_id TEXT,
    conv_date DATE,
    conv_time TIME,
    revenue FLOAT
);

CREATE TABLE IF NOT EXISTS session_costs (
    session_id TEXT PRIMARY KEY,
    cost FLOAT
);

CREATE TABLE IF NOT EXISTS attribution_customer_journey (
    conv_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    ihc FLOAT NOT NULL,
    PRIMARY KEY (conv_id, session_id)
);

CREATE TABLE IF NOT EXISTS channel_reporting (
    channel_name TEXT NOT NULL,
    date DATE NOT NULL,
    cost FLOAT NOT NULL,
    ihc FLOAT NOT NULL,
    ihc_revenue FLOAT NOT NULL,
    PRIMARY KEY (channel_name, date)
);
