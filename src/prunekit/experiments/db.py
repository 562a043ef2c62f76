"""The results database: SQLite in WAL mode, one row per run, safe for several processes.

A run row holds its full resolved configuration, status (``pending``, ``running``, ``done``,
``failed``), metrics, timings, device, versions and the path of its mask file; per-epoch metrics go
to the ``epochs`` table. A process *claims* a run in an ``IMMEDIATE`` transaction, so two processes
never run the same run at once. A running claim expires when its owner process is gone (same host)
or its heartbeat is older than ``stale_after`` seconds (any host); the run is then restarted from
its checkpoint by whoever claims it next.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import DiskFullError, PrunekitError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    method TEXT NOT NULL,
    sparsity REAL NOT NULL,
    seed INTEGER NOT NULL,
    recipe TEXT NOT NULL,
    ablation TEXT,
    config TEXT NOT NULL,
    owner TEXT,
    heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    final_acc REAL,
    best_acc REAL,
    best_epoch INTEGER,
    test_at_best_val REAL,
    density REAL,
    effective_density REAL,
    scoring_seconds REAL,
    train_seconds REAL,
    images_per_second REAL,
    device TEXT,
    versions TEXT,
    mask_path TEXT,
    run_dir TEXT,
    layers TEXT,
    extra TEXT,
    error TEXT,
    failure TEXT  -- environment | method (schema 2)
);
CREATE INDEX IF NOT EXISTS runs_group ON runs (model, dataset, recipe, method, sparsity);
CREATE TABLE IF NOT EXISTS epochs (
    key TEXT NOT NULL REFERENCES runs (key),
    phase INTEGER NOT NULL DEFAULT 0,  -- IMP: the pruning round
    epoch INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    PRIMARY KEY (key, phase, epoch)
);
"""

# The schema's version, kept in SQLite's ``PRAGMA user_version``. A database written by an older
# prunekit is upgraded in place by MIGRATIONS[v] (from version v to v + 1), in one transaction, the
# first time a newer prunekit opens it; one written by a newer prunekit is refused, not damaged.
SCHEMA_VERSION = 2


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    """Version 0: databases from before the schema was versioned. Their tables are version 1's
    (``CREATE ... IF NOT EXISTS`` made them); only the version number is new."""


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Version 2: a failure says what caused it (``environment``: missing data, full disk, no
    permission: retried by the next invocation once the cause is gone; ``method``: kept until
    ``--retry-failed``). Failures recorded before are treated as the method's."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    if "failure" not in columns:
        conn.execute("ALTER TABLE runs ADD COLUMN failure TEXT")


MIGRATIONS: dict[int, Any] = {0: _migrate_0_to_1, 1: _migrate_1_to_2}
FAILURE_KINDS = ("environment", "method")

RESULT_FIELDS = (
    "final_acc", "best_acc", "best_epoch", "test_at_best_val", "density", "effective_density", "scoring_seconds",
    "train_seconds", "images_per_second", "device", "versions", "mask_path", "run_dir", "layers", "extra",
)
_JSON_FIELDS = {"config", "versions", "layers", "extra"}


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (Linux ``/proc``), to tell it from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


@functools.cache
def _namespace() -> str:
    """This process's machine and PID namespace, as 8 hex digits: the kernel's boot id and the PID
    namespace's inode. Two processes with equal hostnames (containers with host networking, PID
    namespaces, cloned machines) tell each other apart by it; a PID check is certain only inside one."""
    parts = []
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        parts.append("?")
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        parts.append("?")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8]


def make_owner() -> str:
    """An owner id for this process: ``host:pid:start:nonce:namespace`` (``start``: the process's
    start time where the OS tells it, so that a reused pid is not mistaken for the owner;
    ``namespace``: :func:`_namespace`, so that a pid is only ever checked where it means something)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or '-'}:{uuid.uuid4().hex[:8]}:{_namespace()}"


def _owner_alive(owner: str | None) -> bool | None:
    """True/False for an owner in this machine's and this PID namespace, None when that cannot be
    known (another host, another PID namespace with the same hostname, an owner id written before
    namespaces were recorded): then only its heartbeat can tell.

    Inside one namespace the answer is certain: the owner's process exists (a stopped one too) with
    the start time it recorded, or it does not.
    """
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    parts = rest.split(":")
    if host != socket.gethostname() or len(parts) < 4 or parts[3] != _namespace():
        return None
    try:
        pid = int(parts[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    if parts[1] != "-":
        current = _start_time(pid)
        if current is not None and current != parts[1]:
            return False  # the pid now belongs to another process
    return True


class ClaimLost(PrunekitError, RuntimeError):
    """This process no longer owns the run it was training (it was taken over while this process
    was paused past its lease, or reset): it stops without writing anything more."""


class ResultsDBError(PrunekitError, RuntimeError):
    """A results database that cannot be used (corrupt, not a database, from a newer prunekit)."""


DEFAULT_LEASE = 300.0  # seconds without a heartbeat after which a run of an owner that cannot be checked is free


class ResultsDB:
    """A handle on the results database at ``path`` (created if missing).

    ``stale_after`` is the lease: a running claim whose owner cannot be checked directly (another
    host or PID namespace) is free once its heartbeat is older than this many seconds."""

    def __init__(self, path: str | os.PathLike[str], stale_after: float = DEFAULT_LEASE):
        self.path = Path(path)
        if self.path.is_dir():
            raise ResultsDBError(f"{self.path} is a folder, not a results database; give --out the folder that holds results.db")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stale_after = stale_after
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._explain(exc) from None
        self._conn.row_factory = sqlite3.Row
        try:
            with self._lock:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._upgrade()
                problems = [r[0] for r in self._conn.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("database disk image is malformed: " + "; ".join(problems))
        except sqlite3.Error as exc:
            self._conn.close()
            raise self._explain(exc) from None

    def _explain(self, exc: sqlite3.Error) -> PrunekitError:
        """One clear error for a database that cannot be used, naming its real cause: a full disk or
        an I/O error (the database itself is fine: never moved aside), or damage (with the recovery)."""
        from ..files import disk_full

        text = str(exc)
        if disk_full(exc, self.path.parent) or "full" in text.lower():
            return DiskFullError(self.path.parent, f"the results database {self.path} could not be written; it is intact")
        if "i/o error" in text.lower() or "unable to open" in text.lower():
            return ResultsDBError(f"{self.path} could not be read or written ({text}): check the disk and the permissions of "
                                  f"{self.path.parent}; the database is not known to be damaged, keep it")
        return ResultsDBError(
            f"{self.path} is damaged or not a prunekit results database ({text}). To recover the rows it still holds: "
            f"sqlite3 {self.path} '.recover' | sqlite3 {self.path.with_name('recovered.db')}, then put recovered.db in its place"
        )

    def _upgrade(self) -> None:
        """Create the schema, or bring an older database up to :data:`SCHEMA_VERSION`."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ResultsDBError(
                    f"{self.path} was written by a newer prunekit (schema version {version}; this one reads up to "
                    f"{SCHEMA_VERSION}); upgrade prunekit to use it"
                )
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn)
                version += 1
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def export(self, path: str | os.PathLike[str]) -> Path:
        """A consistent single-file copy of the database at ``path`` (rows and epochs; no run files),
        e.g. to commit a table's results beside the code. Written to a temporary file, then renamed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        dest = sqlite3.connect(tmp)
        try:
            with self._lock:
                self._conn.backup(dest)
            dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            dest.execute("VACUUM")
        finally:
            dest.close()
        os.replace(tmp, path)
        return path

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise
                raise self._explain(exc) from None
            try:
                yield self._conn
            except sqlite3.OperationalError as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                if "locked" in str(exc) or "busy" in str(exc):
                    raise
                raise self._explain(exc) from None
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise self._explain(exc) from None

    # -- rows -----------------------------------------------------------------------------------
    def ensure(self, key: str, config: Mapping[str, Any]) -> None:
        """Insert the run as ``pending`` unless it is already known."""
        with self._transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO runs (key, status, model, dataset, method, sparsity, seed, recipe, ablation, config, created) "
                "VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key, config["model"], config["dataset"], config["method"], config["sparsity"], config["seed"],
                 config["recipe"], config["ablation"], json.dumps(config, sort_keys=True), time.time()),
            )

    def get(self, key: str) -> RunRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
        return None if row is None else _decode(row)

    def runs(self, status: str | None = None, **where: Any) -> list[RunRecord]:
        """Rows matching ``status`` and column equalities, in creation order."""
        clauses, params = [], []
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        for col, value in where.items():
            if col not in ("model", "dataset", "method", "recipe", "seed", "ablation", "sparsity"):
                raise ValueError(f"cannot filter runs on {col!r}")
            if value is None:
                clauses.append(f"{col} IS NULL")
            else:
                clauses.append(f"{col} = ?")
                params.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY created, key"
        with self._lock:
            rows = self._conn.execute(sql, params).fetchall()
        return [_decode(r) for r in rows]

    def to_dataframe(self, status: str | None = None, epochs: bool = False) -> Any:
        """The runs (or, with ``epochs=True``, every run's per-epoch metrics) as a pandas DataFrame.

        Run rows have one column per database column, the resolved configuration decoded as a dict
        in ``config`` and the results' fields flattened into columns; epoch rows have ``key``,
        ``phase`` and one column per metric. Needs pandas (``pip install pandas``).
        """
        try:
            import pandas as pd
        except ImportError:
            raise ResultsDBError("ResultsDB.to_dataframe needs pandas: pip install 'prunekit[logging]' (or pandas)") from None
        rows = self.runs(status)
        if epochs:
            return pd.DataFrame([{"key": r.key, **e} for r in rows for e in self.epochs(r.key)])
        return pd.DataFrame([r.as_dict() for r in rows])

    def epochs(self, key: str, phase: int | None = None) -> list[dict[str, Any]]:
        """Per-epoch metrics of a run (of one phase, e.g. an IMP round, or all), in order."""
        sql = "SELECT phase, metrics FROM epochs WHERE key = ?" + (" AND phase = ?" if phase is not None else "")
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY phase, epoch", (key,) if phase is None else (key, phase)).fetchall()
        return [{"phase": r["phase"], **json.loads(r["metrics"])} for r in rows]

    # -- claims ---------------------------------------------------------------------------------
    def is_stale(self, owner: str | None, heartbeat: float | None, now: float | None = None) -> bool:
        """Whether a ``running`` row's owner is gone: in this machine's PID namespace, its process
        no longer exists (a live process keeps its run however long it is paused, e.g. by
        ``kill -STOP``); anywhere else (another host, another PID namespace with the same hostname),
        its heartbeat is older than ``stale_after`` seconds: a fresh heartbeat is never taken over."""
        alive = _owner_alive(owner)
        if alive is not None:
            return not alive
        now = time.time() if now is None else now
        return (now - (heartbeat or 0.0)) > self.stale_after

    def owned_by_live_process(self, key: str, owner: str | None = None) -> str | None:
        """The owner of ``key`` if it is running under another live process, else None."""
        row = self.get(key)
        if row is None or row.status != "running" or row.owner == owner or self.is_stale(row.owner, row.heartbeat):
            return None
        return str(row.owner)

    def claim(self, key: str, owner: str, retry_failed: bool = False) -> bool:
        """Atomically take the run for ``owner``; False if it is done, failed (unless retried) or
        running under a live owner."""
        with self._transaction() as c:
            row = c.execute("SELECT status, owner, heartbeat, failure FROM runs WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise KeyError(f"unknown run {key}")
            status = row["status"]
            environment = status == "failed" and row["failure"] == "environment"
            if status == "done" or (status == "failed" and not retry_failed and not environment):
                return False
            if status == "running" and not self.is_stale(row["owner"], row["heartbeat"]):
                return False
            now = time.time()
            c.execute(
                "UPDATE runs SET status = 'running', owner = ?, heartbeat = ?, started = COALESCE(started, ?), "
                "attempts = attempts + 1, error = NULL, failure = NULL WHERE key = ?",
                (owner, now, now, key),
            )
            return True

    def heartbeat(self, key: str, owner: str) -> None:
        with self._transaction() as c:
            c.execute("UPDATE runs SET heartbeat = ? WHERE key = ? AND owner = ? AND status = 'running'", (time.time(), key, owner))

    def check_claim(self, key: str, owner: str) -> None:
        """Raise :class:`ClaimLost` unless ``owner`` still holds ``key`` as running."""
        with self._lock:
            row = self._conn.execute("SELECT status, owner FROM runs WHERE key = ?", (key,)).fetchone()
        self._held(key, owner, row)

    @staticmethod
    def _held(key: str, owner: str, row: Any) -> None:
        if row is None or row["status"] != "running" or row["owner"] != owner:
            now = "gone" if row is None else f"{row['status']}, owner {row['owner']}"
            raise ClaimLost(f"run {key} is no longer this process's ({now}); it stops without writing anything more")

    def add_epoch(self, key: str, metrics: Mapping[str, Any], phase: int = 0, owner: str | None = None) -> None:
        """Record a finished epoch (with ``owner``: only while it holds the run, else :class:`ClaimLost`)."""
        with self._transaction() as c:
            if owner is not None:
                self._held(key, owner, c.execute("SELECT status, owner FROM runs WHERE key = ?", (key,)).fetchone())
            c.execute(
                "INSERT OR REPLACE INTO epochs (key, phase, epoch, metrics) VALUES (?, ?, ?, ?)",
                (key, phase, int(metrics["epoch"]), json.dumps(dict(metrics))),
            )
            c.execute("UPDATE runs SET heartbeat = ? WHERE key = ?", (time.time(), key))

    def finish(self, key: str, owner: str, results: Mapping[str, Any]) -> None:
        """Record a finished run's results (only the claiming owner may)."""
        unknown_fields = set(results) - set(RESULT_FIELDS)
        if unknown_fields:
            raise ValueError(f"unknown result fields {sorted(unknown_fields)}")
        cols = list(results)
        values = [json.dumps(results[c]) if c in _JSON_FIELDS else results[c] for c in cols]
        sets = ", ".join(f"{c} = ?" for c in cols)
        with self._transaction() as c:
            cur = c.execute(
                f"UPDATE runs SET status = 'done', finished = ?, error = NULL{', ' + sets if sets else ''} "
                "WHERE key = ? AND owner = ?",
                (time.time(), *values, key, owner),
            )
            if cur.rowcount != 1:
                self._held(key, owner, c.execute("SELECT status, owner FROM runs WHERE key = ?", (key,)).fetchone())

    def fail(self, key: str, owner: str, error: str, kind: str = "method") -> None:
        """Record a failure; ``kind`` ``"environment"`` (data missing, disk full, no permission) is
        retried by the next invocation, ``"method"`` waits for ``--retry-failed``."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"failure kind must be one of {FAILURE_KINDS}, got {kind!r}")
        with self._transaction() as c:
            c.execute("UPDATE runs SET status = 'failed', finished = ?, error = ?, failure = ? WHERE key = ? AND owner = ?",
                      (time.time(), error, kind, key, owner))

    def release(self, key: str, owner: str) -> None:
        """Give a claimed run back as ``pending`` (interrupted on purpose, e.g. Ctrl-C)."""
        with self._transaction() as c:
            c.execute("UPDATE runs SET status = 'pending', owner = NULL WHERE key = ? AND owner = ? AND status = 'running'", (key, owner))

    def reset(self, key: str) -> None:
        """Forget a run's results so that it runs again (``--force``)."""
        with self._transaction() as c:
            c.execute("DELETE FROM epochs WHERE key = ?", (key,))
            c.execute(
                "UPDATE runs SET status = 'pending', owner = NULL, heartbeat = NULL, started = NULL, finished = NULL, error = NULL, "
                "failure = NULL, "
                + ", ".join(f"{f} = NULL" for f in RESULT_FIELDS) + " WHERE key = ?",
                (key,),
            )


@dataclass(frozen=True)
class RunRecord:
    """One run's row, decoded once: its identity, status, claim, results and resolved configuration.

    :attr:`run` is the typed run (:func:`prunekit.experiments.from_config` of :attr:`config`).
    """

    key: str
    status: str  # pending, running, done, failed
    model: str
    dataset: str
    method: str
    sparsity: float
    seed: int
    recipe: str
    ablation: str | None
    config: dict[str, Any]
    owner: str | None = None
    heartbeat: float | None = None
    attempts: int = 0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    final_acc: float | None = None
    best_acc: float | None = None
    best_epoch: int | None = None
    test_at_best_val: float | None = None
    density: float | None = None
    effective_density: float | None = None
    scoring_seconds: float | None = None
    train_seconds: float | None = None
    images_per_second: float | None = None
    device: str | None = None
    versions: dict[str, Any] | None = None
    mask_path: str | None = None
    run_dir: str | None = None
    layers: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    failure: str | None = None  # environment | method

    @functools.cached_property
    def run(self) -> Any:
        """The typed run this row records."""
        from .spec import from_config

        return from_config(self.config)

    @property
    def structured(self) -> dict[str, Any] | None:
        """The structured part of the configuration (trigger, budget, options), or None."""
        value = self.config.get("structured")
        return None if value is None else dict(value)

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict (every column, JSON columns decoded)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _decode(row: sqlite3.Row) -> RunRecord:
    out = dict(row)
    for f in _JSON_FIELDS:
        if out.get(f) is not None:
            out[f] = json.loads(out[f])
    out["extra"] = out.get("extra") or {}
    return RunRecord(**out)


class Heartbeat:
    """Refresh the heartbeat of one or several runs from a background thread while they run."""

    def __init__(self, db: ResultsDB, keys: str | list[str], owner: str, every: float | None = None):
        self.db, self.owner = db, owner
        self.every = every if every is not None else min(30.0, db.stale_after / 10)  # ten beats per lease
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            for key in self.keys:
                with contextlib.suppress(sqlite3.Error):  # a busy database skips one beat
                    self.db.heartbeat(key, self.owner)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
