"""Create the PostgreSQL database named by DATABASE_URL if it does not exist yet."""

import os
import sys
import time

import dj_database_url
import psycopg
from psycopg import sql


def main() -> int:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return 0
    cfg = dj_database_url.parse(url)
    params = {
        "host": str(cfg.get("HOST") or "127.0.0.1"),
        "port": str(cfg.get("PORT") or 5432),
        "user": str(cfg.get("USER") or "postgres"),
        "password": str(cfg.get("PASSWORD") or ""),
    }
    for attempt in range(30):
        try:
            conn = psycopg.connect(
                dbname="postgres",
                autocommit=True,
                host=params["host"],
                port=params["port"],
                user=params["user"],
                password=params["password"] or None,
            )
            break
        except psycopg.OperationalError as exc:
            if attempt == 29:
                print(f"PostgreSQL is not reachable: {exc}", file=sys.stderr)
                return 1
            time.sleep(1)
    with conn:
        name = cfg["NAME"]
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
