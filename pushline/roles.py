"""Login roles for each tier, members of the NOLOGIN roles the migrations grant.

`pushline roles` runs this with an owner's DATABASE_URL, once per deployment or
after a password change (idempotent): ops can run it against their own
PostgreSQL too. A role is made (or its password changed) only when its
password variable is set.
"""

from __future__ import annotations

from psycopg2 import sql

from pushline.db import TOOL, connect

# login role -> (the NOLOGIN role it is a member of, the variable holding its password)
LOGINS = {
    "pushline_web_login": ("pushline_web", "PUSHLINE_WEB_DB_PASSWORD"),
    "pushline_worker_login": ("pushline_worker", "PUSHLINE_WORKER_DB_PASSWORD"),
    "analyst_sample": ("analyst", "PUSHLINE_ANALYST_DB_PASSWORD"),
}


def ensure_login_roles(url: str, env: dict[str, str]) -> list[str]:
    """Create or update the login roles whose password is in `env`; returns their names."""
    done = []
    conn = connect(url, "pushline-roles", TOOL)
    try:
        with conn, conn.cursor() as cur:
            for login, (member_of, variable) in LOGINS.items():
                password = env.get(variable, "")
                if not password:
                    continue
                cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,))
                verb = "ALTER" if cur.fetchone() else "CREATE"
                # INHERIT: the login acts with its tier's privileges without SET ROLE.
                cur.execute(sql.SQL("{} ROLE {} LOGIN INHERIT PASSWORD {}").format(
                    sql.SQL(verb), sql.Identifier(login), sql.Literal(password)))
                cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), sql.Identifier(login)))
                done.append(login)
    finally:
        conn.close()
    return done
