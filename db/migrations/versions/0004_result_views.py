"""result views for SQL users

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 03:50:00

Three read-only views over windows, in SQL that SQLite and PostgreSQL both run, so that
`pandas.read_sql("select * from v_subject_summary", url)` (or R, or psql) needs no join:

- v_window_hr: one row per window with its subject, recording path, model name, reference and
  error (estimate - reference), and `usable` (an HR exists and the face was not lost);
- v_recording_summary / v_subject_summary: per (recording or subject, estimator, model) the
  counts, coverage, plain mean/min/max of usable window HRs, mean reference and the window
  MAE. The CLI's recording HR (`nbhr results --level recording`) is the robust
  quality-weighted median instead, which plain SQL cannot express; the README says so.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

V_WINDOW_HR = """
CREATE VIEW v_window_hr AS
SELECT
    s.key AS subject,
    r.path AS recording,
    r.id AS recording_id,
    w.estimator AS estimator,
    COALESCE(m.name || ':' || m.version, NULLIF(w.model_key, '')) AS model,
    w.t_start AS t_start,
    w.t_end AS t_end,
    w.hr_bpm AS hr_bpm,
    w.quality AS quality,
    w.face_found AS face_found,
    w.ref_hr_bpm AS ref_hr_bpm,
    w.hr_bpm - w.ref_hr_bpm AS error_bpm,
    w.ppg_r AS ppg_r,
    CASE WHEN w.hr_bpm IS NOT NULL AND (w.face_found IS NULL OR w.face_found)
        THEN 1 ELSE 0 END AS usable
FROM windows w
JOIN recordings r ON r.id = w.recording_id
JOIN subjects s ON s.id = r.subject_id
LEFT JOIN models m ON m.key = w.model_key
"""

# The same aggregates for both summaries; {keys} are the grouping columns.
SUMMARY = """
CREATE VIEW {name} AS
SELECT
    {keys},
    estimator,
    model,
    COUNT(*) AS n_windows,
    SUM(usable) AS n_usable,
    CAST(SUM(usable) AS REAL) / COUNT(*) AS coverage,
    AVG(CASE WHEN usable = 1 THEN hr_bpm END) AS hr_mean_bpm,
    MIN(CASE WHEN usable = 1 THEN hr_bpm END) AS hr_min_bpm,
    MAX(CASE WHEN usable = 1 THEN hr_bpm END) AS hr_max_bpm,
    AVG(ref_hr_bpm) AS ref_hr_mean_bpm,
    AVG(CASE WHEN usable = 1 THEN ABS(error_bpm) END) AS window_mae_bpm,
    AVG(quality) AS quality_mean
FROM v_window_hr
GROUP BY {keys}, estimator, model
"""


def upgrade() -> None:
    op.execute(V_WINDOW_HR)
    op.execute(SUMMARY.format(name="v_recording_summary", keys="subject, recording, recording_id"))
    op.execute(SUMMARY.format(name="v_subject_summary", keys="subject"))


def downgrade() -> None:
    for view in ("v_subject_summary", "v_recording_summary", "v_window_hr"):
        op.execute(f"DROP VIEW {view}")
