"""The results store: SQLite by default (one file, WAL, busy_timeout 30 s), any SQLAlchemy URL
(PostgreSQL) for a team.  One transaction per cell; UNIQUE (run_id, cell_key); a schema version
with forward migrations that back the file up first.  Never imports torch."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from memgauge.results import schema as S

ENV_VAR = "MEMGAUGE_STORE"
SQLITE_MAGIC = b"SQLite format 3\x00"
NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "fuse.sshfs",
    "sshfs",
    "9p",
    "afs",
    "glusterfs",
    "fuse.glusterfs",
    "ceph",
    "fuse.s3fs",
    "lustre",
    "gpfs",
    "beegfs",
}


class StoreError(RuntimeError):
    """A store problem a user must fix; the message says what to do."""


class DuplicateResult(StoreError):
    """The run already holds a result for this cell (another shard wrote it first)."""


def driver_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean PostgreSQL through psycopg 3 (the driver we ship);
    an explicit `postgresql+driver://` is kept."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def default_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return Path(base) / "memgauge" / "results.sqlite"


def resolve_url(store: str | None) -> str:
    """--store, else $MEMGAUGE_STORE, else the default SQLite file.  Plain paths mean SQLite."""
    s = store or os.environ.get(ENV_VAR) or str(default_path())
    if "://" in s:
        return s
    return "sqlite:///" + str(Path(s).expanduser().resolve())


def redact(url: str) -> str:
    """The URL with any password replaced (F18): safe for logs, errors, the UI and reports."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is still redacted by pattern
        return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def _fs_type(path: Path, mounts: str = "/proc/mounts") -> str | None:
    """Filesystem type of the mount holding `path` (from /proc/mounts; longest prefix wins)."""
    try:
        target = str(path.resolve())
        best, kind = "", None
        with open(mounts) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(
                    best
                ):
                    best, kind = mnt, parts[2]
        return kind
    except OSError:
        return None


def _sqlite_uri(path: Path, **params: str) -> str:
    """An SQLite URI filename for `path` (quoted: a ? # or % in a folder name stays a name)."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return "file:" + urllib.parse.quote(str(path)) + (f"?{query}" if query else "")


def _read_only_mount(path: Path) -> bool:
    """True when nothing can be created beside `path` (a read-only mount or folder)."""
    folder = path.parent
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        pass
    return not os.access(folder, os.W_OK)


def _ro_connect(path: Path) -> sqlite3.Connection:
    """A connection that cannot write (mode=ro).  On a read-only mount a WAL store's -shm file
    cannot be created, so it is opened immutable there (nothing can change it on such a mount)."""
    immutable = _read_only_mount(path)
    params = {"mode": "ro", **({"immutable": "1"} if immutable else {})}
    con = sqlite3.connect(
        _sqlite_uri(path, **params), uri=True, timeout=30, check_same_thread=False
    )
    try:
        con.execute("PRAGMA busy_timeout = 30000")
        con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError:
        con.close()
        if immutable:
            raise
        # a WAL store in a folder we may read but not write into: no -shm can be made
        con = sqlite3.connect(
            _sqlite_uri(path, mode="ro", immutable="1"),
            uri=True,
            timeout=30,
            check_same_thread=False,
        )
    return con


def check_sqlite_file(path: Path) -> None:
    """Refuse files that are not SQLite databases, and SQLite on network filesystems (F8, F9).
    Reads at most; never writes."""
    folder = path.parent if not path.exists() else path
    fs = os.environ.get("MEMGAUGE_FSTYPE_OVERRIDE") or _fs_type(
        folder if folder.exists() else path.parent
    )
    if fs in NETWORK_FS:
        raise StoreError(
            f"the SQLite store {path} is on a network filesystem ({fs}); SQLite's locking is not "
            f"safe there and the file can be corrupted. Use a local path, or a database server: "
            f"--store postgresql://USER@HOST/DB"
        )
    if path.exists():
        if path.is_dir():
            raise StoreError(f"the store path {path} is a folder; give a file path")
        size = path.stat().st_size
        if size == 0:
            return
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except PermissionError:
            raise StoreError(
                f"the store {path} cannot be read (permission denied); fix its permissions "
                f"or point --store at another file"
            ) from None
        if head != SQLITE_MAGIC:
            raise StoreError(
                f"{path} is not a memgauge store (not an SQLite database); "
                f"the file was left untouched. Point --store at another file."
            )
        try:  # a truncated file passes the magic check; ask SQLite without writing
            con = _ro_connect(path)
            try:
                con.execute("PRAGMA schema_version").fetchone()
                con.execute("SELECT name FROM sqlite_master").fetchall()
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{path} is damaged or truncated ({exc}); the file was left "
                f"untouched. Restore a backup or point --store at another file."
            ) from None


def _sqlite_contents(path: Path) -> tuple[set[str], str | None]:
    """The tables of an SQLite file and its meta schema_version text, read without writing."""
    con = _ro_connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = None
        if "meta" in tables:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = None if row is None else str(row[0])
        return tables, version
    finally:
        con.close()


def _engine_contents(engine: Engine) -> tuple[set[str], str | None]:
    """The same for a server store (an inspection and one SELECT: no writes)."""
    tables = set(sa.inspect(engine).get_table_names())
    version = None
    if "meta" in tables:
        with engine.connect() as con:
            row = con.execute(
                sa.select(S.meta.c.value).where(S.meta.c.key == "schema_version")
            ).first()
        version = None if row is None else str(row[0])
    return tables, version


def schema_of(where: str, tables: set[str], version: str | None) -> int | None:
    """The schema version of a store holding `tables`, None for an empty database; raises
    StoreError for a database that is not memgauge's or newer than this memgauge."""
    if not tables:
        return None
    if "meta" not in tables:
        if "results" in tables:  # a store from before the schema recorded its version
            return 0
        raise StoreError(
            f"{where} holds other tables ({', '.join(sorted(tables)[:8])}); it is not a "
            f"memgauge store and was left untouched. Point --store elsewhere."
        )
    if version is None:
        return 0
    try:
        v = int(version)
    except ValueError:
        raise StoreError(
            f"{where}: its meta table's schema_version is {version!r}, not an integer; the "
            f"store is damaged or not memgauge's and was left untouched. Restore a backup or "
            f"point --store elsewhere."
        ) from None
    if v > S.SCHEMA_VERSION:
        raise StoreError(
            f"{where} has schema version {v}, newer than this memgauge "
            f"({S.SCHEMA_VERSION}); upgrade memgauge. The store was left untouched."
        )
    return v


class Store:
    """Open (and create or migrate) a store.  Use `Store.open(url)`."""

    def __init__(
        self,
        url: str,
        engine: Engine,
        read_engine: Engine | None = None,
        *,
        read_only: bool = False,
    ):
        self.url = url
        self.engine = engine  # writes (SQLite: BEGIN IMMEDIATE, so writers queue, never deadlock)
        self.read_engine = read_engine or engine  # reads (SQLite: deferred, never blocks writers)
        self.is_sqlite = url.startswith("sqlite")
        self.read_only = read_only

    @property
    def safe_url(self) -> str:
        return redact(self.url)

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, store: str | None = None, *, create: bool = True) -> Store:
        """`create=True`: a store to write into (created if absent, migrated if older).
        `create=False`: a store to read; nothing is ever written (a read-only file or mount is
        fine) and a missing, empty or older store is refused with what to run.

        Nothing is written before the file or database is known to be memgauge's and of a
        schema this version reads (F9): WAL is switched on only after that."""
        url = driver_url(resolve_url(store))
        if url.startswith("sqlite"):
            return cls._open_sqlite(url, create=create)
        try:
            engine = sa.create_engine(url, pool_pre_ping=True)
        except Exception as exc:  # noqa: BLE001 - any driver error becomes a StoreError naming the store
            raise StoreError(
                f"cannot use store {redact(url)}: {type(exc).__name__}: {_scrub(str(exc), url)}"
            ) from None
        st = cls(url, engine, engine, read_only=not create)
        try:
            with st._schema_lock(create):
                version = schema_of(st.safe_url, *_engine_contents(engine))
                st._prepare(version, create)
        except StoreError:
            engine.dispose()
            raise
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            engine.dispose()
            raise StoreError(
                f"cannot open store {st.safe_url}: {type(exc).__name__}: {_scrub(str(exc), url)}"
            ) from None
        return st

    @classmethod
    def _open_sqlite(cls, url: str, *, create: bool) -> Store:
        database = sa.engine.make_url(url).database or ""
        path = Path(database)
        if not database or database == ":memory:":
            raise StoreError(
                f"the store URL {redact(url)!r} names no file; give a path "
                f"(--store results.sqlite or --store sqlite:////abs/path.sqlite)"
            )
        check_sqlite_file(path)
        exists = path.exists()
        empty = exists and path.stat().st_size == 0
        if not create:
            if not exists:
                raise StoreError(
                    f"no store at {path}; run `memgauge sweep --suite quick` first or pass --store"
                )
            if empty:
                raise StoreError(
                    f"the store {path} is an empty file (0 bytes, no results); run "
                    f"`memgauge --store {path} sweep --suite quick` first. It was left untouched."
                )
        where = str(path)
        try:
            version = schema_of(where, *_sqlite_contents(path)) if exists and not empty else None
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot read the store {path}: {exc}; it was left untouched"
            ) from None
        if not create:
            if version is None:
                raise StoreError(
                    f"the store {path} holds no tables yet; run "
                    f"`memgauge --store {path} sweep --suite quick` first"
                )
            if version < S.SCHEMA_VERSION:
                raise StoreError(
                    f"{path} has schema version {version}, older than this memgauge "
                    f"({S.SCHEMA_VERSION}); a writing command (memgauge sweep or run) migrates "
                    f"it after a backup. It was left untouched."
                )
            engine = _sqlite_engine(url, path, immediate=False, read_only=True)
            return cls(url, engine, engine, read_only=True)
        if exists and not (os.access(path, os.W_OK) and not _read_only_mount(path)):
            raise StoreError(
                f"the store {path} is read-only (its permissions, an immutable flag or a "
                f"read-only mount); this command writes results, so make it writable or pass "
                f"--store with another file. Reading commands (report, dashboard) work on it."
            )
        if not exists:
            _create_sqlite(path)
            version = S.SCHEMA_VERSION
        st = cls(
            url,
            _sqlite_engine(url, path, immediate=True),
            _sqlite_engine(url, path, immediate=False),
        )
        try:
            st._prepare(version, create)
        except StoreError:
            st.close()
            raise
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            st.close()
            raise StoreError(
                f"cannot open store {st.safe_url}: {type(exc).__name__}: {_scrub(str(exc), url)}"
            ) from None
        return st

    @contextmanager
    def _schema_lock(self, create: bool = True) -> Iterator[None]:
        """PostgreSQL: machines opening a fresh store at once must not both create its tables
        (a session advisory lock serialises the check-and-create).  SQLite: its write lock.
        A store opened to read takes no lock (an advisory lock is no write, but not needed)."""
        if self.engine.dialect.name != "postgresql" or not create:
            yield
            return
        with self.engine.connect() as con:
            con.exec_driver_sql(f"SELECT pg_advisory_lock({_SCHEMA_LOCK_KEY})")
            con.commit()
            try:
                yield
            finally:
                con.exec_driver_sql(f"SELECT pg_advisory_unlock({_SCHEMA_LOCK_KEY})")
                con.commit()

    def _prepare(self, version: int | None, create: bool) -> None:
        """Create the tables of an empty database, migrate an older one (writing stores only)."""
        if not create:
            if version is None:
                raise StoreError(
                    f"{self.safe_url} holds no memgauge tables yet; run "
                    f"`memgauge --store URL sweep --suite quick` into it first"
                )
            if version < S.SCHEMA_VERSION:
                raise StoreError(
                    f"{self.safe_url} has schema version {version}, older than this memgauge "
                    f"({S.SCHEMA_VERSION}); a writing command (memgauge sweep or run) migrates "
                    f"it. It was left untouched."
                )
            return
        if version is None:
            with self.engine.begin() as con:
                _create_schema(con)
        elif version < S.SCHEMA_VERSION:
            self.migrate(version)

    def migrate(self, from_version: int) -> None:
        """Forward migrations; SQLite files are copied to a backup first."""
        from memgauge.results.migrations import MIGRATIONS

        if self.is_sqlite:
            path = Path(sa.engine.make_url(self.url).database)
            backup = path.with_name(f"{path.name}.v{from_version}.{int(time.time())}.bak")
            n = 1
            while backup.exists():  # a second try within the same second keeps the first copy
                backup = path.with_name(f"{path.name}.v{from_version}.{int(time.time())}-{n}.bak")
                n += 1
            # a consistent copy even in WAL mode; on a plain connection, as VACUUM cannot run
            # inside the transaction the engine's connections always begin
            raw = sqlite3.connect(str(path), timeout=30, isolation_level=None)
            try:
                raw.execute("VACUUM INTO ?", (str(backup),))
            finally:
                raw.close()
        else:
            backup = None
        for v in range(from_version, S.SCHEMA_VERSION):
            if v not in MIGRATIONS:
                raise StoreError(f"no migration from schema version {v}")
            try:
                with self.engine.begin() as con:
                    MIGRATIONS[v](con)
                    con.execute(S.meta.delete().where(S.meta.c.key == "schema_version"))
                    con.execute(S.meta.insert().values(key="schema_version", value=str(v + 1)))
            except Exception as exc:  # noqa: BLE001 - said with where the old file is kept
                saved = f"; the store as it was is saved at {backup}" if backup else ""
                raise StoreError(
                    f"migrating {self.safe_url} from schema version {v} failed: "
                    f"{type(exc).__name__}: {_scrub(str(exc), self.url)}"
                    f"{saved}"
                ) from None

    def schema_version(self) -> int:
        with self.read_engine.connect() as con:
            return int(
                con.execute(
                    sa.select(S.meta.c.value).where(S.meta.c.key == "schema_version")
                ).scalar_one()
            )

    # -- runs -------------------------------------------------------------------------------------
    def create_run(
        self,
        *,
        suite: str | None,
        kind: str,
        env: dict[str, Any],
        config: dict[str, Any],
        cells_planned: int,
        run_id: str | None = None,
    ) -> str:
        from memgauge.results.provenance import env_hash

        rid = run_id or time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        with self.engine.begin() as con:
            con.execute(
                S.runs.insert().values(
                    id=rid,
                    suite=suite,
                    kind=kind,
                    status="running",
                    started_at=time.time(),
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    cells_planned=cells_planned,
                    env_hash=env_hash(env),
                    env_json=json.dumps(env, default=str),
                    config_json=json.dumps(config, default=str),
                )
            )
        return rid

    def ensure_run(
        self,
        run_id: str,
        *,
        suite: str | None,
        kind: str,
        env: dict[str, Any],
        config: dict[str, Any],
        cells_planned: int,
    ) -> bool:
        """Create run `run_id` unless it exists (insert-or-ignore: shards on many machines may
        race to create it); True if this call created it.  A shared run has no owning process
        (pid NULL), so it is never shown `interrupted` because one shard ended."""
        from memgauge.results.provenance import env_hash

        values = dict(
            id=run_id,
            suite=suite,
            kind=kind,
            status="running",
            started_at=time.time(),
            host=socket.gethostname(),
            pid=None,
            cells_planned=cells_planned,
            env_hash=env_hash(env),
            env_json=json.dumps(env, default=str),
            config_json=json.dumps(config, default=str),
        )
        name = self.engine.dialect.name
        if name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            insert = None
        with self.engine.begin() as con:
            if insert is not None:
                stmt = (
                    insert(S.runs)
                    .values(**values)
                    .on_conflict_do_nothing(index_elements=["id"])
                    .returning(S.runs.c.id)
                )
                return con.execute(stmt).first() is not None
            if con.execute(sa.select(S.runs.c.id).where(S.runs.c.id == run_id)).first():
                return False
            con.execute(S.runs.insert().values(**values))
            return True

    def count_results(self, run_id: str) -> int:
        with self.read_engine.connect() as con:
            return int(
                con.execute(
                    sa.select(sa.func.count())
                    .select_from(S.results)
                    .where(S.results.c.run_id == run_id)
                ).scalar_one()
            )

    def reopen_run(self, run_id: str) -> None:
        with self.engine.begin() as con:
            n = con.execute(
                S.runs.update()
                .where(S.runs.c.id == run_id)
                .values(
                    status="running", host=socket.gethostname(), pid=os.getpid(), finished_at=None
                )
            ).rowcount
        if not n:
            raise StoreError(f"no run {run_id!r} in {self.safe_url}")

    def finish_run(self, run_id: str, status: str) -> None:
        if status not in S.RUN_STATUSES:
            raise ValueError(status)
        with self.engine.begin() as con:
            con.execute(
                S.runs.update()
                .where(S.runs.c.id == run_id)
                .values(status=status, finished_at=time.time())
            )

    def get_run(self, run_id: str) -> dict[str, Any]:
        with self.read_engine.connect() as con:
            row = con.execute(sa.select(S.runs).where(S.runs.c.id == run_id)).mappings().first()
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.safe_url}")
        return self._run_view(dict(row))

    def runs(self, limit: int = 200) -> list[dict[str, Any]]:
        with self.read_engine.connect() as con:
            rows = (
                con.execute(sa.select(S.runs).order_by(S.runs.c.started_at.desc()).limit(limit))
                .mappings()
                .all()
            )
        return [self._run_view(dict(r)) for r in rows]

    @staticmethod
    def _run_view(row: dict[str, Any]) -> dict[str, Any]:
        """A `running` run whose process is gone on this host is shown as `interrupted`."""
        if (
            row["status"] == "running"
            and row.get("host") == socket.gethostname()
            and row.get("pid")
        ):
            if not _pid_alive(int(row["pid"])):
                row["status"] = "interrupted"
        return row

    # -- results ----------------------------------------------------------------------------------
    def write_result(self, run_id: str, result: dict[str, Any], *, replace: bool = False) -> int:
        """One cell's result row and its breakdown rows, all in one transaction (F6)."""
        cell = result["cell"]
        from memgauge.cell import Cell

        c = Cell(
            model=cell["model"],
            mode=cell["mode"],
            techniques=list(cell["techniques"]),
            batch=cell["batch"],
            seq_len=cell["seq_len"],
            dtype=cell["dtype"],
            device=cell["device"],
            **result.get("cell_extra", {}),
        )
        env = result.get("env") or {}
        from memgauge.results.provenance import env_hash

        row = {
            "run_id": run_id,
            "cell_key": cell["key"],
            "baseline_key": result.get("baseline_key") or c.baseline_key,
            "model": cell["model"],
            "mode": cell["mode"],
            "techniques": S.technique_label(cell["techniques"]),
            "n_techniques": len(cell["techniques"]),
            "batch": cell["batch"],
            "seq_len": cell["seq_len"],
            "dtype": cell["dtype"],
            "device": cell["device"],
            "status": result["status"],
            "error": result.get("error"),
            **S.flatten(result),
            "env_hash": env_hash(env) if env else None,
            "workload_version": env.get("workload_version"),
            "created_at": time.time(),
            "result_json": json.dumps(result, default=str),
        }
        with self.engine.begin() as con:
            if replace:
                old = con.execute(
                    sa.select(S.results.c.id).where(
                        (S.results.c.run_id == run_id) & (S.results.c.cell_key == cell["key"])
                    )
                ).scalar()
                if old is not None:
                    con.execute(S.breakdown.delete().where(S.breakdown.c.result_id == old))
                    con.execute(S.results.delete().where(S.results.c.id == old))
            try:
                rid = con.execute(S.results.insert().values(**row)).inserted_primary_key[0]
            except sa.exc.IntegrityError as exc:
                if "unique" not in str(exc).lower():  # e.g. no such run (foreign key)
                    raise
                raise DuplicateResult(f"run {run_id} already holds cell {cell['key']}") from None
            rows = S.breakdown_rows(result)
            if rows:
                con.execute(S.breakdown.insert(), [dict(r, result_id=rid) for r in rows])
        return int(rid)

    def results(self, run_id: str | None = None, **where: Any) -> list[dict[str, Any]]:
        q = sa.select(*[c for c in S.results.c if c.name != "result_json"])
        if run_id:
            q = q.where(S.results.c.run_id == run_id)
        for k, v in where.items():
            q = q.where(S.results.c[k] == v)
        with self.read_engine.connect() as con:
            return [dict(r) for r in con.execute(q.order_by(S.results.c.id)).mappings()]

    def result_json(self, result_id: int) -> dict[str, Any]:
        with self.read_engine.connect() as con:
            raw = con.execute(
                sa.select(S.results.c.result_json).where(S.results.c.id == result_id)
            ).scalar_one()
        return json.loads(raw)

    def cell_statuses(self, run_id: str) -> dict[str, str]:
        with self.read_engine.connect() as con:
            rows = con.execute(
                sa.select(S.results.c.cell_key, S.results.c.status).where(
                    S.results.c.run_id == run_id
                )
            ).all()
        return {k: s for k, s in rows}

    def latest_baseline(self, baseline_key: str) -> dict[str, Any] | None:
        """The newest ok result with this cell key (baselines are deterministic per code version)."""
        with self.read_engine.connect() as con:
            row = (
                con.execute(
                    sa.select(
                        S.results.c.loss, S.results.c.peak_allocated, S.results.c.tokens_per_s
                    )
                    .where((S.results.c.cell_key == baseline_key) & (S.results.c.status == "ok"))
                    .order_by(S.results.c.created_at.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def integrity_ok(self) -> bool:
        if not self.is_sqlite:
            return True
        with self.read_engine.connect() as con:
            return con.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"

    def close(self) -> None:
        self.engine.dispose()
        self.read_engine.dispose()

    @contextmanager
    def connect(self) -> Iterator[Any]:
        with self.read_engine.connect() as con:
            yield con


_SCHEMA_LOCK_KEY = 0x6D656D67  # "memg": the advisory lock around schema creation/migration


def _create_schema(con: Any) -> None:
    S.metadata.create_all(con)
    con.execute(S.meta.insert().values(key="schema_version", value=str(S.SCHEMA_VERSION)))


def _create_sqlite(path: Path) -> None:
    """A new store: built beside its final name and linked into place when complete, so a full
    disk or a crash while creating it leaves no file (or a half-made one) behind (issue 14/9)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder {path.parent} for the store: {exc.strerror or exc}"
        ) from None
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.creating")
    try:
        engine = sa.create_engine("sqlite:///" + str(tmp))
        try:
            with engine.begin() as con:
                _create_schema(con)
        finally:
            engine.dispose()
        try:
            os.link(tmp, path)  # fails if another process created the store meanwhile: use it
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(tmp, path)
    except (sa.exc.SQLAlchemyError, sqlite3.Error, OSError) as exc:
        detail = getattr(exc, "orig", None) or exc
        raise StoreError(
            f"cannot create the store {path}: {type(detail).__name__}: {detail}; no file was "
            f"left behind. Free space or pick another --store."
        ) from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                pass


def _sqlite_engine(url: str, path: Path, *, immediate: bool, read_only: bool = False) -> Engine:
    if read_only:  # mode=ro: this engine cannot write, and sets no journal mode
        engine = sa.create_engine(url, creator=lambda: _ro_connect(path))
    else:
        engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_con: Any, _: Any) -> None:
        dbapi_con.isolation_level = None  # transactions are begun explicitly below
        cur = dbapi_con.cursor()
        cur.execute("PRAGMA busy_timeout = 30000")
        if not read_only:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # writers take the write lock up front, so two writers never deadlock on an upgrade
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def _scrub(msg: str, url: str) -> str:
    try:
        pw = sa.engine.make_url(url).password
    except Exception:  # noqa: BLE001 - an unparsable URL has no password to scrub
        pw = None
    return msg.replace(pw, "***") if pw else msg
