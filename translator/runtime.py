"""The sidecar's main loop: poll sources, apply new versions, export, stop cleanly.

Two threads: this one reads files and applies what is new; an export thread pushes
right after new data (so a new version leaves within milliseconds, not at the SDK's
60 s timer) and as a heartbeat every collection interval. SIGTERM or SIGINT ends the
loop after one last read of every source, then one last export is made within a bounded
time, and the exit status is 0.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from translator.engine import Drop, Evaluation, evaluate_into, exportable_attribute
from translator.errors import ConfigError, DocumentInvalid, SettingsError, SourceError
from translator.export import Pipeline, build_resource, exporter_complaint
from translator.health import HealthServer
from translator.instruments import InstrumentConflict, InstrumentRegistry
from translator.logs import Throttled
from translator.mapping import load_plans, mapping_files
from translator.mapping.paths import MISSING, PathTooCostly
from translator.mapping.plan import Plan, SourceFormat
from translator.selfmetrics import Stats
from translator.series import UNKNOWN_START, start_time_ns
from translator.settings import Settings
from translator.sources import (
    CsvSource,
    DocumentSource,
    JsonlPosition,
    JsonlSource,
    PathPattern,
    Snapshot,
    SourceMissing,
)
from translator.statefile import SeriesStateFile
from translator.watch import Waker

_log = logging.getLogger("translator")
#: Sources that keep a file open and a checkpoint: closed when dropped, committed after use.
_TAILED = (JsonlSource, CsvSource)

#: How long the last export on shutdown may take: well inside Kubernetes' default 30 s grace.
SHUTDOWN_EXPORT_S = 5.0
#: After a half-written document, read again this soon rather than a whole interval later.
RETRY_SOON_S = 0.1
#: ``run --once`` reads a document caught changing (or half-written) again this many times,
#: RETRY_SOON_S apart (2 s in all), before it gives up on it.
ONCE_RETRIES = 20
#: At most this many on-demand exports a second (10): a busy writer is batched, not echoed.
MIN_EXPORT_SPACING_S = 0.1
#: With STATE_DIR, the series are saved at most this often (and when stopping).
STATE_SAVE_SPACING_S = 1.0
#: How many of a JSON Lines (or CSV) file's newest records a reload re-evaluates.
RECENT_RECORDS_KEPT = 1000


@dataclass(slots=True)
class _Tracked:
    source: DocumentSource | JsonlSource | CsvSource
    attributes: tuple[tuple[str, str], ...]
    key: str
    """The registry's name for what this file contributes under this mapping: two
    mappings reading one file must not replace or forget each other's series."""
    newest_at: float = field(default_factory=time.monotonic)
    stale: bool = False
    last: Snapshot | None = None
    """What was last read (for JSON Lines and CSV: the newest records): a reload
    re-evaluates state against it at once, not at the file's next write."""


@dataclass(frozen=True, slots=True)
class _Poll:
    more: bool  # a source has a backlog: read again at once
    retry_soon: bool  # a document was half-written: read again shortly
    unread: tuple[str, ...]  # why each source that could not be read was not ("" if all were)


@dataclass(slots=True)
class _Job:
    plan: Plan
    pattern: PathPattern
    sources: dict[str, _Tracked] = field(default_factory=dict)


class Bridge:
    """Everything one sidecar process runs; ``run`` returns the exit status."""

    def __init__(self, settings: Settings, plans: list[Plan], *, console: TextIO) -> None:
        self.settings = settings
        self.stats = Stats()
        self._console = console
        self._jobs = [_Job(plan, PathPattern(plan.source.path)) for plan in plans]
        self._stop = threading.Event()
        self._signal: int | None = None
        self._waker = Waker()
        self._export_wanted = threading.Event()
        self._mappings = _MappingWatch(settings.mapping_path)
        self._pipeline: Pipeline | None = None
        self._registry: InstrumentRegistry | None = None
        self._throttle = Throttled(_log)
        # Read positions (JSON Lines, CSV) are checkpointed with the series they went
        # into, right after those are saved (_save_state): never ahead of them (a restart
        # would miss lines) nor behind (it would apply them twice on the restored series).
        self._read_positions: dict[JsonlSource | CsvSource, JsonlPosition | None] = {}
        self.loop_heartbeat = time.monotonic()
        self._state_file: SeriesStateFile | None = None
        self._saved: dict[str, Any] | None = None
        self._saved_changes = 0  # the registry's change count the series file holds
        self._state_saved_at = 0.0
        if settings.state_dir is not None:
            self._state_file = SeriesStateFile(settings.state_dir, settings.mapping_path)
            self._saved = self._load_state(self._state_file)
        for job in self._jobs:
            self._warn_path_override(job.plan)

    # --- public ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the loop (from any thread; not from a signal handler: see on_signal)."""
        self._stop.set()
        self._export_wanted.set()
        self._waker.wake()

    def on_signal(self, signum: int) -> None:
        """Safe in a signal handler: a plain assignment and a write to a pipe. Taking a
        lock or logging here could deadlock with the code the signal interrupted."""
        self._signal = signum
        self._waker.wake()

    def _stop_if_signalled(self) -> bool:
        if self._signal is not None and not self._stop.is_set():
            _log.info(
                "received %s: stopping, last export within %.0f s",
                signal.Signals(self._signal).name,
                SHUTDOWN_EXPORT_S,
            )
            self.stop()
        return self._stop.is_set()

    def health(self) -> dict[str, Any]:
        """What /healthz and /readyz report."""
        loop_age = time.monotonic() - self.loop_heartbeat
        limit = 3 * self.settings.collection_interval_s + 10
        last_export = None if self._pipeline is None else self._pipeline.last_export_ok
        return {
            "alive": loop_age < limit,
            "ready": last_export is not False,
            "loop_age_s": round(loop_age, 3),
            "last_export_ok": last_export,
            "mappings": [plan.mapping_file for plan in self.plans],
            "data_age_s": {k: round(v, 3) for k, v in self.stats.data_age_s().items()},
        }

    def run(self, *, once: bool = False) -> int:
        """Poll until stopped (or once); 0 on a clean stop, 1 if ``once`` could not deliver."""
        woken_by_signals = threading.current_thread() is threading.main_thread()
        if woken_by_signals:
            # The OS may deliver SIGTERM to any thread (the export thread, gRPC's), and the
            # main thread may catch it after its last bytecode before select() (preempted, or
            # handing the GIL over): either way select() is not interrupted, and the Python
            # handler would run only when it times out (a whole COLLECTION_INTERVAL). The
            # wakeup fd is written by the C-level handler whatever thread it runs on.
            previous_wakeup_fd = signal.set_wakeup_fd(
                self._waker.wakeup_fd, warn_on_full_buffer=False
            )
        if not any(p.needs_document_for_resource for p in self.plans):
            self._start_pipeline(None)
        exporter: threading.Thread | None = None
        health: HealthServer | None = None
        if not once:
            exporter = threading.Thread(target=self._export_loop, name="export", daemon=True)
            exporter.start()
            if self.settings.health_port is not None:
                host, port = self.settings.health_host, self.settings.health_port
                try:
                    health = HealthServer(port, self.health, host)
                except OSError as exc:
                    if isinstance(exc, socket.gaierror):
                        problem = f"{host!r} is not an address of this host: {exc.strerror}"
                        raise SettingsError([("HEALTH_HOST", problem)]) from None
                    if exc.errno == errno.EADDRNOTAVAIL:  # an address, of another machine
                        problem = (
                            f"{host} is not an address of this host (listening on "
                            f"{host}:{port}: {exc.strerror}); 0.0.0.0 listens on all of them"
                        )
                        raise SettingsError([("HEALTH_HOST", problem)]) from None
                    problem = f"cannot listen on {host}:{port}: {exc.strerror}"
                    raise SettingsError([("HEALTH_PORT", problem)]) from None
                health.start()
                _log.info("health endpoints on %s (/healthz, /readyz)", health.address)
        unread: tuple[str, ...] = ()
        retries = ONCE_RETRIES
        while True:
            self.loop_heartbeat = time.monotonic()
            poll = self._poll_all()
            unread = poll.unread
            self._save_state()
            if poll.more:
                if self._stop_if_signalled():
                    break
                continue  # a backlog: keep reading before sleeping
            if once:
                if not (poll.retry_soon and retries > 0):
                    break
                retries -= 1  # a document changing under the read: as run does, read it again
                self._waker.wait(RETRY_SOON_S)
                if self._stop_if_signalled():
                    break
                continue
            self._reload_if_changed()
            self._waker.watch(self._watched_files())
            delay = RETRY_SOON_S if poll.retry_soon else self.settings.collection_interval_s
            self._waker.wait(delay)
            if self._stop_if_signalled():
                # A native sidecar is stopped right after the trainer exits: its last
                # document may have been written a moment ago. Read it before leaving.
                self._poll_all()
                break
        deadline = time.monotonic() + SHUTDOWN_EXPORT_S
        self._export_wanted.set()
        if exporter is not None:
            exporter.join(timeout=SHUTDOWN_EXPORT_S / 2)
        if health is not None:
            health.stop()
        try:
            return self._finish(once=once, unread=unread, deadline=deadline)
        finally:
            if woken_by_signals:
                signal.set_wakeup_fd(previous_wakeup_fd)
            self._waker.close()

    @property
    def plans(self) -> list[Plan]:
        return [job.plan for job in self._jobs]

    # --- reading --------------------------------------------------------------------------

    def _poll_all(self) -> _Poll:
        """Poll every source once."""
        retry_soon = more = False
        unread: list[str] = []
        for job in self._jobs:
            for path in self._paths(job):
                tracked = job.sources[path]
                try:
                    snapshot = tracked.source.poll()
                except SourceError as exc:
                    unread.append(str(exc) + self._unset_default_hint(path, exc))
                    retry_soon |= isinstance(exc, DocumentInvalid) and exc.retry_soon
                    self._read_failed(path, exc)
                    snapshot = None
                except Exception:  # a bug of ours must not stop the other sources
                    unread.append(f"{path}: unexpected error (logged above)")
                    self._internal_error(path)
                    snapshot = None
                else:
                    # A document changing under the read: read it again soon, quietly.
                    if isinstance(tracked.source, DocumentSource) and tracked.source.settling:
                        retry_soon = True
                        unread.append(f"{path}: changed during every read, so not applied")
                    if self._throttle.clear("read", path):
                        _log.info("%s: reading again", path, extra={"source": path})
                now = time.monotonic()
                if snapshot is not None:
                    more |= snapshot.more
                    if snapshot.records or snapshot.replaces:  # an emptied history too
                        if self._registry is None:
                            self._start_pipeline(snapshot.root)
                        try:
                            self._apply(job, tracked, snapshot)
                        except Exception:  # as above: log, count, keep the sidecar running
                            self._internal_error(path)
                        tracked.newest_at, tracked.stale = now, False
                        self._export_wanted.set()
                    self._bad_records(path, snapshot)
                    if isinstance(tracked.source, _TAILED):
                        self._read_to(tracked.source)
                self._expire(job, path, tracked, now)
        return _Poll(more=more, retry_soon=retry_soon, unread=tuple(unread))

    def _paths(self, job: _Job) -> list[str]:
        """The files of ``job`` now; files that went away stop being reported."""
        paths = job.pattern.expand()
        for gone in set(job.sources) - set(paths):
            tracked = job.sources.pop(gone)
            if isinstance(tracked.source, _TAILED):
                tracked.source.close()
            if self._registry is not None:
                self._registry.forget(tracked.key)
            self.stats.newest_data.pop(gone, None)
            _log.info(
                "%s: file is gone; its series are no longer exported", gone, extra={"source": gone}
            )
        for path in paths:
            if path not in job.sources:
                tracked = job.sources[path] = _Tracked(
                    self._source_for(job.plan, path),
                    job.pattern.attributes(path),
                    key=_source_key(job.plan, path),
                )
                self._resume_events(tracked)
        return paths

    def _source_for(self, plan: Plan, path: str) -> DocumentSource | JsonlSource | CsvSource:
        # A read position is true only of the series it went into: without those (the
        # series file damaged, deleted, of another version), resuming would skip lines
        # that no series holds.
        resume = self._saved is not None
        if plan.source.format is SourceFormat.JSONL:
            return JsonlSource(path, plan.source, self.settings.state_dir, resume=resume)
        if plan.source.format is SourceFormat.CSV:
            return CsvSource(path, plan.source, self.settings.state_dir, resume=resume)
        return DocumentSource(path, plan.source)

    def _read_to(self, source: JsonlSource | CsvSource) -> None:
        """What ``source`` gave so far is applied: checkpoint it with the next save."""
        if self._state_file is None:
            return  # no STATE_DIR: nothing is checkpointed
        position = source.position() if isinstance(source, JsonlSource) else None
        self._read_positions[source] = position

    def _commit_positions(self, positions: dict[JsonlSource | CsvSource, Any]) -> None:
        for source, position in positions.items():
            try:
                if isinstance(source, JsonlSource):
                    source.commit(position)
                else:
                    source.commit()
            except SourceError as exc:
                self._throttle.log(logging.WARNING, ("checkpoint", source.path), "%s", str(exc))

    def _bad_records(self, path: str, snapshot: Snapshot) -> None:
        for notice in snapshot.notices:
            self._throttle.log(
                logging.WARNING, ("notice", path, notice), "%s: %s", path, notice,
                extra={"source": path},
            )  # fmt: skip
        for error in snapshot.errors:
            self.stats.read_errors[(path, "invalid")] += 1
            self._throttle.log(
                logging.WARNING, ("record", path), "%s: %s", path, error, extra={"source": path}
            )

    def _read_failed(self, path: str, exc: SourceError) -> None:
        kind = (
            "missing"
            if isinstance(exc, SourceMissing)
            else ("invalid" if isinstance(exc, DocumentInvalid) else "unavailable")
        )
        self.stats.read_errors[(path, kind)] += 1
        level = logging.INFO if kind == "missing" else logging.WARNING
        # A new kind of problem is logged at once; the same one (sizes aside) once a minute.
        problem = re.sub(r"\d+", "#", exc.reason)
        self._throttle.log(level, ("read", path, problem), "%s", str(exc), extra={"source": path})

    def _internal_error(self, path: str) -> None:
        self.stats.read_errors[(path, "internal")] += 1
        self._throttle.log(
            logging.ERROR, ("internal", path),
            "%s: unexpected error while reading or applying it (a bug: please report it)",
            path, extra={"source": path}, exc_info=True,
        )  # fmt: skip

    def _apply(self, job: _Job, tracked: _Tracked, snapshot: Snapshot) -> None:
        assert self._registry is not None
        path = snapshot.path
        records, seen = snapshot.records, snapshot.first_new
        drops = [
            drop
            for _, drop in apply_snapshot(
                self._registry, job.plan, snapshot, tracked.key, tracked.attributes,
                start_ns=self._start_time(job.plan, snapshot), counts=self.stats.points_emitted,
            )
        ]  # fmt: skip
        if snapshot.replaces:
            tracked.last = snapshot
        elif seen < len(records):
            kept = tracked.last.records if tracked.last is not None else []
            tracked.last = replace(snapshot, records=[*kept, *records][-RECENT_RECORDS_KEPT:])
        stats = self.stats
        stats.records_read[path] += len(records) - min(seen, len(records))
        stats.newest_data[path] = snapshot.read_at
        for drop in drops:
            rule = f"metrics[{drop.rule.index}]"
            stats.points_dropped[(drop.rule.name, rule, drop.reason.value)] += 1
            self._throttle.log(
                logging.WARNING,
                ("drop", path, drop.rule.index, drop.reason),
                "%s: %s %s: point dropped (%s): %s",
                path,
                rule,
                drop.rule.name,
                drop.reason.value,
                drop.detail,
                extra={"source": path, "rule": rule},
            )

    def _start_time(self, plan: Plan, snapshot: Snapshot) -> int:
        """The job's start time the mapping names (``source.start_time_path``), in ns; 0
        when it names none or the file's is unusable (the unknown-start rule applies)."""
        start = job_start_ns(plan, snapshot)
        if isinstance(start, str):
            where = plan.source.start_time_path.text if plan.source.start_time_path else ""
            self._throttle.log(
                logging.WARNING, ("start_time", snapshot.path),
                "%s: source.start_time_path %s: %s; counters start when first exported",
                snapshot.path, where, start, extra={"source": snapshot.path},
            )  # fmt: skip
            return UNKNOWN_START
        return start

    def _expire(self, job: _Job, path: str, tracked: _Tracked, now: float) -> None:
        stale_after = job.plan.source.stale_after_s
        if tracked.stale or stale_after <= 0 or now - tracked.newest_at < stale_after:
            return
        tracked.stale = True
        if self._registry is not None:
            self._registry.forget(tracked.key)
        _log.warning(
            "%s: no new data for %.0f s (source.stale_after_s); its series are no longer "
            "exported until it changes again",
            path,
            stale_after,
            extra={"source": path},
        )

    def _warn_path_override(self, plan: Plan) -> None:
        s = self.settings
        if (
            plan.source.path_from_mapping
            and s.metrics_file_path_set
            and (s.metrics_file_path != plan.source.path)
        ):
            _log.warning(
                "%s: source.path %s is set in the mapping; METRICS_FILE_PATH=%s is ignored for it",
                plan.mapping_file,
                plan.source.path,
                s.metrics_file_path,
            )

    # --- reloading ------------------------------------------------------------------------

    def _watched_files(self) -> list[str]:
        files = [*self._mappings.files, self.settings.mapping_path]
        for job in self._jobs:
            files.append(job.pattern.pattern)  # for a glob: its directory, if it has no wildcard
            if job.pattern.is_glob:
                files.extend(job.sources)
        return files

    def _reload_if_changed(self) -> None:
        """Load, validate and compile the mappings again if a file changed, then swap.

        A Kubernetes ConfigMap update swaps a ``..data`` symlink; ``os.stat`` follows it,
        so the swap shows as a new inode. A mapping that does not validate is logged with
        the same messages as ``validate`` and the running plan stays.
        """
        if not self._mappings.changed():
            return
        try:
            plans = load_plans(
                self.settings.mapping_path,
                default_source_path=self.settings.metrics_file_path,
                schema_in_child=True,
            )
            if self._registry is not None:
                self._registry.check(plans)
        except (ConfigError, InstrumentConflict) as exc:
            self.stats.reloads["failure"] += 1
            # One record per problem: a record is one line (control characters escaped).
            for problem in str(exc).splitlines():
                _log.error(
                    "mapping reload rejected; the running mapping stays in force: %s", problem
                )
            return
        old = {_reading(job.plan): job for job in self._jobs}
        jobs = []
        for plan in plans:
            job = _Job(plan, PathPattern(plan.source.path))
            kept = old.pop(_reading(plan), None)
            if kept is not None:
                # The same files read the same way: positions and versions carry over, so
                # nothing is re-applied; caps and staleness follow the new mapping.
                job.sources = kept.sources
                for tracked in job.sources.values():
                    tracked.source.spec = plan.source
            jobs.append(job)
        for job in old.values():
            for tracked in job.sources.values():
                if isinstance(tracked.source, _TAILED):
                    tracked.source.close()
                if self._registry is not None:
                    self._registry.forget(tracked.key)
        if self._registry is not None:
            self._registry.install(plans)
        if [p.resource for p in plans] != [p.resource for p in self.plans]:
            _log.warning("mapping reload: resource: changes take effect at the next restart")
        self._jobs = jobs
        self._reevaluate()
        self.stats.reloads["success"] += 1
        _log.info(
            "mapping reloaded from %s: %d mapping(s), %d instrument(s)",
            self.settings.mapping_path,
            len(plans),
            sum(len(p.instruments) for p in plans),
        )

    def _reevaluate(self) -> None:
        """State under the new mapping, from what was last read: a rule added while the
        file is unchanged (a checkpoint written every half hour) is exported now."""
        if self._registry is None:
            return
        for job in self._jobs:
            for tracked in job.sources.values():
                last = tracked.last
                if last is None or tracked.stale:
                    continue
                try:  # read before: state only, no event, nothing counted again
                    self._apply(job, tracked, replace(last, first_new=len(last.records)))
                except Exception:  # as in reading: log, count, keep the sidecar running
                    self._internal_error(last.path)
        self._export_wanted.set()

    # --- series state across restarts (STATE_DIR) -----------------------------------------

    def _load_state(self, state_file: SeriesStateFile) -> dict[str, Any] | None:
        saved, problem = state_file.load()
        if problem:
            _log.warning(
                "%s %s; starting without the saved series (STATE_DIR)", state_file.path, problem
            )
        return saved

    def _resume_events(self, tracked: _Tracked) -> None:
        """A document read again after a restart adds no event it added before."""
        if self._saved is not None and isinstance(tracked.source, DocumentSource):
            marks = self._saved["sources"].get(tracked.key)
            if isinstance(marks, dict):
                tracked.source.restore_event_marks(marks)

    def _restore_series(self, registry: InstrumentRegistry) -> None:
        """The saved series of the files the mappings read now are exported at once."""
        if self._saved is None or self._state_file is None:
            return
        keys = {_source_key(job.plan, path) for job in self._jobs for path in job.pattern.expand()}
        try:
            restored = registry.restore(self._saved["series"], keys)
        except ValueError as exc:
            _log.warning("%s: %s; the rest of the saved series are not restored",
                         self._state_file.path, exc)  # fmt: skip
            return
        if restored:
            _log.info("restored %d series from %s", restored, self._state_file.path)

    def _save_state(self, *, now: bool = False) -> None:
        """Save the series at most once a second (and when stopping), if anything changed,
        then the read positions of the lines and rows applied to them."""
        if self._state_file is None or self._registry is None:
            return
        changes = self._registry.changes
        changed = changes != self._saved_changes  # applied, forgotten (stale, gone), reloaded
        if not (changed or self._read_positions):
            return
        if not now and time.monotonic() - self._state_saved_at < STATE_SAVE_SPACING_S:
            return
        positions, self._read_positions = self._read_positions, {}
        if not changed:  # lines that changed no series (blank, not JSON)
            self._commit_positions(positions)
            return
        marks = {
            tracked.key: found
            for job in self._jobs
            for tracked in job.sources.values()
            if isinstance(tracked.source, DocumentSource)
            and (found := tracked.source.event_marks()) is not None
        }
        try:
            self._state_file.save(self._registry.saved_state(), marks)
        except (OSError, ValueError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) else str(exc)
            self._throttle.log(logging.WARNING, ("state", self._state_file.path),
                               "cannot save the series to %s: %s", self._state_file.path,
                               problem)  # fmt: skip
            # The positions wait for the series: committed alone, they would run ahead.
            self._read_positions = positions | self._read_positions
            return
        self._saved_changes = changes
        self._state_saved_at = time.monotonic()
        self._commit_positions(positions)

    # --- exporting ------------------------------------------------------------------------

    def _start_pipeline(self, document: Any) -> None:
        attributes: dict[str, Any] = {}
        for plan in self.plans:
            for attribute in plan.resource:
                if attribute.path is None:
                    attributes[attribute.key] = attribute.constant
                else:
                    found: Any = MISSING
                    if document is not None:
                        with contextlib.suppress(PathTooCostly):  # as if it selected nothing
                            found = attribute.path.first(document)
                    value, problem = exportable_attribute(found)
                    if found is MISSING or problem or value is not found:
                        value = attribute.default  # also for an integer it would turn to text
                    if value is not None:
                        attributes[attribute.key] = value
        self._pipeline = Pipeline(
            self.settings.export,
            build_resource(attributes),
            stats=self.stats,
            console=self._console,
        )
        self.stats.register(self._pipeline.self_meter)
        registry = InstrumentRegistry()
        try:
            registry.install(self.plans)
        except InstrumentConflict as exc:
            raise ConfigError(str(exc)) from None
        resource = self._pipeline.resource
        self._pipeline.set_completion(lambda data: registry.complete(data, resource))
        self._registry = registry
        self._restore_series(registry)

    def _export_loop(self) -> None:
        interval = self.settings.collection_interval_s
        while not self._stop.is_set():
            self._export_wanted.wait(timeout=interval)
            self._export_wanted.clear()
            if self._stop.is_set():
                break
            if self._pipeline is not None:
                self._pipeline.export(timeout_s=self.settings.export.timeout_s)
            # While a backlog is read, batch what arrives meanwhile into the next export.
            self._stop.wait(MIN_EXPORT_SPACING_S)

    def _unset_default_hint(self, path: str, exc: SourceError) -> str:
        """For ``run --once``'s last line: a missing file that is only the built-in default
        (METRICS_FILE_PATH unset, no source.path) says how to name the right one."""
        if (
            isinstance(exc, SourceMissing)
            and not self.settings.metrics_file_path_set
            and path == self.settings.metrics_file_path
        ):
            return (
                " (the default, METRICS_FILE_PATH being unset: set it, or the mapping's "
                "source.path, to the file the job writes)"
            )
        return ""

    def _finish(self, *, once: bool, unread: tuple[str, ...], deadline: float) -> int:
        self._save_state(now=True)
        for job in self._jobs:
            for tracked in job.sources.values():
                if isinstance(tracked.source, _TAILED):
                    tracked.source.close()
        if self._pipeline is None:
            _log.warning("stopping before any document was read; nothing to export")
            return _once_exit([*unread, "nothing was exported"]) if once else 0
        pipeline = self._pipeline
        outcome: list[bool] = []

        def last_export() -> None:
            outcome.append(pipeline.export(timeout_s=max(deadline - time.monotonic(), 0.1)))
            pipeline.shutdown(timeout_s=max(deadline - time.monotonic(), 0.1))

        # The SDK exporters do not honour a per-call timeout (they use their own, 10 s by
        # default): a worker thread keeps the exit within the deadline whatever they do.
        worker = threading.Thread(target=last_export, name="last-export", daemon=True)
        worker.start()
        worker.join(timeout=max(deadline - time.monotonic(), 0.1))
        if worker.is_alive():
            # Still retrying: what the exporter met so far is the only cause there will be.
            so_far = exporter_complaint()
            _log.warning(
                "the last export did not finish within %.0f s%s; exiting",
                SHUTDOWN_EXPORT_S,
                f" (so far: {so_far})" if so_far else "",
            )
        if not once:
            return 0
        if not outcome:
            unread += (f"the export did not finish within {SHUTDOWN_EXPORT_S:.0f} s",)
        elif outcome != [True]:
            unread += ("the export failed (its cause is logged above)",)
        return _once_exit(unread)


def _once_exit(problems: Sequence[str]) -> int:
    """``run --once``'s exit status, saying why when it is 1."""
    if not problems:
        return 0
    # Two mappings may read one file: its problem is said once.
    _log.error("run --once exits 1: %s", "; ".join(dict.fromkeys(problems)))
    return 1


def apply_snapshot(
    registry: InstrumentRegistry,
    plan: Plan,
    snapshot: Snapshot,
    key: str,
    extra: tuple[tuple[str, str], ...] = (),
    *,
    start_ns: int = UNKNOWN_START,
    counts: Counter[str] | None = None,
) -> list[tuple[int | None, Drop]]:
    """Evaluate one read's records and apply their points to ``registry`` under ``key``;
    the drops, each with the number of the record it comes from (None: the registry's).

    ``run`` and ``preview`` both go through here, so preview shows what run exports.
    """
    evaluation = Evaluation()
    records, seen = snapshot.records, snapshot.first_new
    # Records read before (a history array again) give state; their points and drops
    # were counted when they were new.
    first_point = first_drop = 0
    drop_records: list[int] = []
    for number, record in enumerate(records):
        if number == seen:
            first_point, first_drop = len(evaluation.points), len(evaluation.drops)
        root = record if snapshot.root is None else snapshot.root
        evaluate_into(plan, record, root, evaluation, extra)
        drop_records += [number] * (len(evaluation.drops) - len(drop_records))
    if seen >= len(records):
        first_point, first_drop = len(evaluation.points), len(evaluation.drops)
    refused = registry.apply(
        key,
        evaluation.points,
        replaces=snapshot.replaces,
        first_new=first_point,
        events=snapshot.events,
        one_record=len(records) == 1,
        start_ns=start_ns,
        counts=counts,
    )
    numbered: list[tuple[int | None, Drop]] = list(
        zip(drop_records[first_drop:], evaluation.drops[first_drop:], strict=True)
    )
    return numbered + [(None, drop) for drop in refused]


def job_start_ns(plan: Plan, snapshot: Snapshot) -> int | str:
    """The job start the mapping names (``source.start_time_path``) in ``snapshot``, in ns:
    evaluated on the document, or on the newest record of JSON Lines. UNKNOWN_START when
    it names none; what is wrong, when the file's value is unusable."""
    path = plan.source.start_time_path
    if path is None or (snapshot.root is None and not snapshot.records):
        return UNKNOWN_START
    try:
        found = path.first(snapshot.root if snapshot.root is not None else snapshot.records[-1])
    except PathTooCostly:
        found = MISSING
    return start_time_ns(found) if found is not MISSING else "selects nothing"


def _source_key(plan: Plan, path: str) -> str:
    """The registry's name for what ``path`` contributes under ``plan``: two mappings
    reading one file must not replace or forget each other's series."""
    return f"{plan.mapping_file}|{path}"


def _reading(plan: Plan) -> tuple[Any, ...]:
    """What decides which records a mapping's files give: equal means nothing to re-read."""
    spec = plan.source
    return (
        plan.mapping_file,
        spec.path,
        spec.format,
        spec.version_path.text if spec.version_path else None,
        spec.records.text if spec.records else None,
        tuple(p.text for p in spec.record_key),
    )


class _MappingWatch:
    """Notices a change to the mapping files (edited, added, removed, or a symlink swap)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.files: list[str] = []
        self._seen = self._fingerprint()

    def _fingerprint(self) -> tuple[Any, ...]:
        self.files = mapping_files(self.path)
        out: list[tuple[Any, ...]] = []
        for file in self.files:
            try:
                st = os.stat(file)  # follows the ..data symlink of a mounted ConfigMap
                out.append((file, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((file, None))
        return tuple(out)

    def changed(self) -> bool:
        now = self._fingerprint()
        if now == self._seen:
            return False
        self._seen = now
        return True


class SignalLatch:
    """The signal handlers' target from the very start of ``run``: remembers a signal that
    arrives before the Bridge exists, then passes every signal on to it (``hand_to``)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._forward: Callable[[int], None] | None = None

    def __call__(self, signum: int) -> None:
        self.received = signum  # a plain assignment: safe in a signal handler
        if self._forward is not None:
            self._forward(signum)

    @property
    def name(self) -> str:
        return "" if self.received is None else signal.Signals(self.received).name

    def hand_to(self, forward: Callable[[int], None]) -> None:
        self._forward = forward
        if self.received is not None:
            forward(self.received)


def install_signal_handlers(on_signal: Callable[[int], None]) -> Callable[[], None]:
    """SIGTERM and SIGINT call ``on_signal``. Returns a function putting the old handlers back."""

    def handler(signum: int, frame: Any) -> None:
        on_signal(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
