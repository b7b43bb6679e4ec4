"""conversation.start / conversation.end -> conversations.

Order-independent merge: started_at is the earliest start, ended_at the latest
end (least/greatest ignore NULL), and the attributes come from the candidate
that wins conversation_attrs_win (same rule as `_rank` below). Replaying any
subset in any order converges to the same row.
"""

from __future__ import annotations

from pushline.pgcopy import stage_rows
from workers.registry import StoredEvent, registry

_ATTRS = ("type", "operator_id", "website_id", "group_id", "custom_data")

COLUMNS = ("conversation_id", "type", "operator_id", "website_id", "group_id", "custom_data", "started_at",
           "ended_at", "attrs_from", "attrs_created_at", "attrs_event_key")

_UPSERT = """
INSERT INTO conversations AS c ({columns})
SELECT {columns} FROM stage_conversations ORDER BY conversation_id
ON CONFLICT (conversation_id) DO UPDATE SET
    started_at = least(c.started_at, excluded.started_at),
    ended_at = greatest(c.ended_at, excluded.ended_at),
    {attrs}
"""
_WINS = (
    "conversation_attrs_win(excluded.attrs_from, excluded.attrs_created_at, excluded.attrs_event_key,"
    " c.attrs_from, c.attrs_created_at, c.attrs_event_key)"
)
UPSERT = _UPSERT.format(
    columns=", ".join(COLUMNS),
    attrs=",\n    ".join(
        f"{col} = CASE WHEN {_WINS} THEN excluded.{col} ELSE c.{col} END"
        for col in (*_ATTRS, "attrs_from", "attrs_created_at", "attrs_event_key")
    )
)


def _rank(stored: StoredEvent) -> tuple:
    """Smaller wins: starts before ends, earliest start, latest end, then key."""
    created = stored.event.created.timestamp()
    if stored.event.name == "conversation.start":
        return (0, created, stored.key)
    return (1, -created, stored.key)


@registry.handles("conversation.start", "conversation.end")
def apply(cur, events: list[StoredEvent]) -> None:
    rows: dict[int, dict] = {}
    for stored in events:
        event = stored.event
        params = event.parameters
        row = rows.setdefault(params["conversation_id"], {"started_at": None, "ended_at": None, "winner": stored})
        if event.name == "conversation.start":
            row["started_at"] = min(filter(None, (row["started_at"], event.created)))
        else:
            row["ended_at"] = max(filter(None, (row["ended_at"], event.created)))
        if _rank(stored) < _rank(row["winner"]):
            row["winner"] = stored

    values = []
    for conversation_id in rows:  # the upsert sorts: concurrent batches lock rows in one order
        row = rows[conversation_id]
        winner: StoredEvent = row["winner"]
        params = winner.event.parameters
        custom = params.get("custom_data")
        values.append(
            (
                conversation_id,
                params["type"],
                params["operator_id"],
                params["website_id"],
                params["group_id"],
                custom,
                row["started_at"],
                row["ended_at"],
                "start" if winner.event.name == "conversation.start" else "end",
                winner.event.created,
                winner.key,
            )
        )
    stage_rows(cur, "stage_conversations", COLUMNS, values)
    cur.execute(UPSERT)
