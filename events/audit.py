"""Tamper-evident audit export: a run (or the whole log) as JSON Lines with a signed manifest.

Layout of an export file, one JSON object per line:

- one line per stored event, in version order (position order for the whole log)::

      {"position":12,"stream":"run-…","version":3,"topic":"task.planned@1","state":{…}}

  ``state`` is the stored JSON body, hash member included, written in *verbatim*: the event's
  hash is over the exact stored bytes (see ``_codec``), so the verifier slices them back out of
  the line rather than re-serialising a parsed object (which would tie the check to one JSON
  library's formatting). Any JSON reader can read the file; rewriting it with one (pretty
  printing, re-ordering keys) breaks the hashes, as any other edit does;
- one final manifest line ``{"manifest": {...}}``: the run, the count, the first and last
  versions and positions, the hash of the last event (``head_hash``), the SHA-256 of every event
  line's bytes in order (``digest``), who exported it and when, ``format`` and, when a key was
  given, an ed25519 ``signature`` (base64) over the canonical JSON of the manifest without it.

``verify_export`` re-checks every event's hash and every stream's chain with the same walk as
``agentledger verify-log`` (``verify.verify_rows``), then the manifest, and reports the first
problem by line. The chain alone cannot see the newest event edited and rehashed, or cut off:
the manifest's head hash, count and digest anchor it, and the signature anchors the manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eventsourcing.persistence import Notification
from pydantic_core import from_json

from ._backends import store_files
from ._codec import split_state
from .errors import AgentLedgerError, ConfigurationError, NotFound, TamperDetected
from .store import EventStore
from .verify import Problem, Report, verify_rows

FORMAT = 1
_PAGE = 1000
_HEADER_KEYS = ["position", "stream", "version", "topic"]
_HEADER = b'{"position":%d,"stream":%b,"version":%d,"topic":%b,"state":'
_STATE_KEY = b',"state":'


def _string(value: object) -> bytes:
    return json.dumps(str(value)).encode()


@dataclass(frozen=True)
class Manifest:
    """The last line of an export: what it holds, anchored by a digest and an optional signature."""

    run: str | None
    count: int
    first_version: int
    last_version: int
    first_position: int
    last_position: int
    head_hash: str
    digest: str
    exporter: str
    exported_at: str
    format: int = FORMAT
    signature: str | None = None

    def signed_bytes(self) -> bytes:
        """The canonical JSON the signature is over (every field but the signature)."""
        doc = asdict(self)
        doc.pop("signature")
        return _canonical(doc)

    def to_json(self) -> dict[str, Any]:
        """The manifest as written (without ``signature`` when unsigned)."""
        doc = asdict(self)
        if self.signature is None:
            doc.pop("signature")
        return doc


@dataclass(frozen=True)
class AuditReport:
    """The result of verifying an export: ``ok``, or the first problem and its line."""

    path: Path
    events: int = 0
    line: int | None = None
    problem: str | None = None
    manifest: Manifest | None = None
    signature_checked: bool = False
    not_an_export: bool = False  # its first line is not one an export has: another file

    @property
    def ok(self) -> bool:
        """True when the events, their chains and the manifest (and any checked signature) hold."""
        return self.problem is None

    def __str__(self) -> str:
        if self.ok:
            signed = "signature verified" if self.signature_checked else "signature not checked"
            return f"{self.path}: ok, {self.events} events, manifest holds, {signed}"
        return f"{self.path} line {self.line}: {self.problem}"


class _Failed(Exception):
    def __init__(self, line: int, problem: str, *, not_an_export: bool = False) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem
        self.not_an_export = not_an_export


# ---------------------------------------------------------------------------- keys


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new ed25519 key pair as PEM files (the private one readable by its owner only)."""
    if _same_file(private_path, public_path):
        # Checked before anything is written: the public key would replace the private one.
        raise ConfigurationError(
            f"--private and --public both name {private_path}; the public key would replace the "
            "private one. Give them two paths, e.g. --private k.pem --public k.pub.pem"
        )
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigurationError(
                f"{path} exists; not overwriting a key. Remove it or pick another path."
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomically(private_path, [private_pem], mode=0o600)
    try:
        _write_atomically(public_path, [public_pem])
    except AgentLedgerError:
        private_path.unlink(missing_ok=True)
        raise


def _load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(_read_key(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(
            f"{path} is not an ed25519 private key; make one with `agentledger audit keygen`"
        )
    return key


def _load_public(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(_read_key(path))
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigurationError(
            f"{path} is not an ed25519 public key; make one with `agentledger audit keygen`"
        )
    return key


def _read_key(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NotFound(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ConfigurationError(
            f"{path} is not a PEM key file; make a key pair with `agentledger audit keygen`"
        )
    return data


def _loaded(loader: Any, path: Path) -> Any:
    try:
        return loader(path)
    except AgentLedgerError:
        raise
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(f"{path} is not a usable ed25519 PEM key: {exc}") from None


# ---------------------------------------------------------------------------- export


def export_run(
    store: EventStore,
    run: str | None,
    out: Path,
    *,
    signing_key: Path | None = None,
    exporter: str,
    exported_at: datetime | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Write ``run`` (every event of the log when ``None``) to ``out`` as a verifiable export.

    Nothing is left at ``out`` unless the whole export was written (temp file, then rename).
    An existing ``out`` is refused unless ``overwrite``; the store's own files and the signing
    key always are (see ``check_out_path``).
    """
    keep = {signing_key: "the signing key given with --key"} if signing_key is not None else None
    check_out_path(out, overwrite=overwrite, store_url=store.url, keep=keep)
    key = _loaded(_load_private, signing_key) if signing_key is not None else None
    rows = _run_rows(store, run) if run is not None else store.read_stored()
    digest = hashlib.sha256()
    stats: dict[str, Any] = {"count": 0}

    def lines() -> Iterator[bytes]:
        first: Notification | None = None
        last: Notification | None = None
        head = ""
        batch: list[bytes] = []
        for row in rows:
            state = store.plain_state(row)
            # The stored body goes in verbatim, as the value of "state": the hash is over
            # exactly these bytes, so they must not pass through a JSON re-serialiser.
            line = b"".join(
                (
                    _HEADER
                    % (
                        row.id,
                        _string(row.originator_id),
                        row.originator_version,
                        _string(row.topic),
                    ),
                    state,
                    b"}\n",
                )
            )
            batch.append(line)
            first = first or row
            last = row
            stats["count"] += 1
            if len(batch) >= _PAGE:
                chunk = b"".join(batch)
                digest.update(chunk)
                batch.clear()
                yield chunk
        if batch:
            chunk = b"".join(batch)
            digest.update(chunk)
            yield chunk
        if last is not None:
            split = split_state(store.plain_state(last))
            head = split[1] if split is not None else ""
        if first is None or last is None:
            where = f"run {run!r}" if run is not None else "the log"
            raise NotFound(
                f"{where} has no events in {store.url}; "
                "see `agentledger runs` for the runs there are"
            )
        manifest = Manifest(
            run=run,
            count=stats["count"],
            first_version=first.originator_version,
            last_version=last.originator_version,
            first_position=first.id,
            last_position=last.id,
            head_hash=head,
            digest=digest.hexdigest(),
            exporter=exporter,
            exported_at=(exported_at or datetime.now(UTC)).isoformat(),
        )
        if key is not None:
            signature = base64.b64encode(key.sign(manifest.signed_bytes())).decode("ascii")
            manifest = Manifest(**{**asdict(manifest), "signature": signature})
        stats["manifest"] = manifest
        yield json.dumps({"manifest": manifest.to_json()}, ensure_ascii=False).encode() + b"\n"

    def intact(written: Path) -> None:
        # An export vouches for what it holds (with --key, by signature): never for a log
        # that fails its own chain.
        report = verify_export(written)
        if not report.ok:
            raise TamperDetected(
                f"the log of {run or 'the store'} fails its own check, so nothing was exported: "
                f"its event number {report.line} in position order: {report.problem}. "
                "`agentledger verify-log` shows where the log was changed"
            )

    _write_atomically(out, lines(), check=intact)
    result: Manifest = stats["manifest"]
    return result


def _run_rows(store: EventStore, run: str, to_version: int | None = None) -> Iterator[Notification]:
    """The stored rows of ``run`` (up to ``to_version``) in position order; for a fork by
    reference, first the rows of its ancestors that it inherits, so that the export holds
    the whole history and its chain can be checked without the store."""
    link = store.link(run)
    if link is not None:
        # All it inherits, even where only part is needed: its run.forked names the last.
        yield from _run_rows(store, link.parent, link.inherits)
    after = 0
    while True:
        top = after + _PAGE if to_version is None else min(after + _PAGE, to_version)
        if top <= after:
            return
        page = store.backend.select_stream(run, after, top)
        yield from page
        if link is not None and after == 0:
            after = max(top, link.inherits + 1)  # its versions 2..N + 1 are the parent's rows
        elif len(page) < top - after:
            return
        else:
            after = top


def write_text(
    path: Path, text: str, *, overwrite: bool = False, store_url: str | None = None
) -> None:
    """Write ``text`` to ``path`` whole or not at all (temp file, then rename); an existing
    ``path`` only if ``overwrite``, and never one of the files of the store at ``store_url``."""
    check_out_path(path, overwrite=overwrite, store_url=store_url)
    _write_atomically(path, [text.encode("utf-8")])


def check_out_path(
    path: Path,
    *,
    overwrite: bool,
    store_url: str | None = None,
    keep: Mapping[Path, str] | None = None,
) -> None:
    """Refuse (``ConfigurationError``) to write ``path`` where that would lose data: a file of
    the store at ``store_url`` (its SQLite database and sidecars) or a file in ``keep`` (what
    each is, for the message), always; any other existing file unless ``overwrite``.

    Call it before writing anything. Paths are compared resolved (``..``, symlinks), and an
    existing file also by identity, so another spelling of the same file is refused too.
    """
    files = store_files(store_url) if store_url is not None else []
    for file in files:
        if _same_file(path, file):
            what = "the event store" if file == files[0] else f"{file}, a file of the event store"
            raise ConfigurationError(
                f"{path} is {what} ({files[0]}): writing there would destroy the log, so --force "
                "does not apply. Choose another path for the file to write"
            )
    for file, what in (keep or {}).items():
        if _same_file(path, file):
            raise ConfigurationError(
                f"{path} is {what} ({file}): writing there would destroy it, so --force does "
                "not apply. Choose another path for the file to write"
            )
    if path.is_dir():
        raise ConfigurationError(f"{path} is a folder; name the file to write, in it or elsewhere")
    if path.exists() and not overwrite:
        raise ConfigurationError(
            f"{path} exists; not overwriting it. Choose another path, or pass --force to replace it"
        )


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: equal once resolved, or one existing file by two
    names (a hard link; a case-insensitive file system)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (resolve, Python < 3.13)
        return False


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file in this process (0o666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_atomically(
    path: Path, chunks: Any, *, mode: int | None = None, check: Callable[[Path], None] | None = None
) -> None:
    # A crash, a bad run or a full disk must not leave a half-written export that looks
    # like a truncated (tampered) one: write beside the target, then rename over it.
    # ``check`` may refuse the written file (by raising) before it takes the target's place.
    try:
        handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        # As a new file would have it, unless told (mkstemp makes its file private).
        os.chmod(temp, new_file_mode() if mode is None else mode)
        if check is not None:
            check(Path(temp))
        os.replace(temp, path)
    except OSError as exc:
        os.unlink(temp)
        raise ConfigurationError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        os.unlink(temp)
        raise


# ---------------------------------------------------------------------------- verify


def verify_export(path: Path, *, public_key: Path | None = None) -> AuditReport:
    """Check an export: every event's hash, every stream's chain, then the manifest.

    Returns the first problem with its line number; a missing file or an unusable key raises.
    With ``public_key`` the manifest must carry a signature that verifies with it.
    """
    key = _loaded(_load_public, public_key) if public_key is not None else None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise NotFound(f"cannot read the export {path}: {exc.strerror or exc}") from None
    events = 0
    manifest: Manifest | None = None
    try:
        events, manifest = _check(data, key)
    except _Failed as failed:
        return AuditReport(
            path, events, failed.line, failed.problem, manifest, not_an_export=failed.not_an_export
        )
    return AuditReport(path, events, None, None, manifest, signature_checked=key is not None)


def _check(data: bytes, key: Ed25519PublicKey | None) -> tuple[int, Manifest]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    if not lines:
        raise _Failed(1, "the file is empty: no events and no manifest", not_an_export=True)
    digest = hashlib.sha256()
    rows: list[Notification] = []
    positions: list[int] = []
    manifest_doc: Any = None
    # The first problem by line wins, whichever check finds it: an out-of-order line may sit
    # after a line whose chain is already broken (a swap), so collect, then take the earliest.
    found: list[_Failed] = []
    for number, raw in enumerate(lines, start=1):
        try:
            doc, state = _parse(number, raw, ends_file=number == len(lines))
            if state is None:
                if number != len(lines):
                    raise _Failed(
                        number, f"a manifest line, but {len(lines) - number} line(s) follow it"
                    )
                manifest_doc = doc["manifest"]
                break
        except _Failed as failed:
            if number == 1:  # not even its first line is an export's: some other file
                failed.problem += f"; {_NOT_AN_EXPORT}"
                failed.not_an_export = True
            found.append(failed)
            break
        if positions and doc["position"] <= positions[-1] and not found:
            found.append(
                _Failed(
                    number,
                    f"reordered or duplicated: position {doc['position']} after position "
                    f"{positions[-1]} (line {number - 1})",
                )
            )
        digest.update(raw + b"\n")
        positions.append(doc["position"])
        # The row's id is the line number, so verify_rows' findings point at lines.
        rows.append(Notification(doc["stream"], doc["version"], doc["topic"], state, number))
    chain, links = _check_events(rows)
    if chain is not None:
        found.append(chain)
    if found:
        raise min(found, key=lambda f: f.line)
    if manifest_doc is None:
        raise _Failed(
            len(lines) + 1,
            f"the manifest is missing: the file ends after line {len(lines)}; it was truncated "
            "or its last line removed",
        )
    manifest = _manifest(len(lines), manifest_doc)
    _check_manifest(len(lines), manifest, rows, positions, digest.hexdigest(), key, links)
    return len(rows), manifest


_NOT_AN_EXPORT = (
    "this is not an audit export (`agentledger audit export RUN --out FILE` writes one: a line "
    "per stored event, then the manifest)"
)


def _parse(number: int, raw: bytes, *, ends_file: bool) -> tuple[dict[str, Any], bytes | None]:
    """An event line's header and stored body, or a manifest line (body None)."""
    cut = " (the file looks cut off here)" if ends_file else ""
    at = raw.find(_STATE_KEY) if raw.startswith(b'{"position":') else -1
    if at < 0 or not raw.endswith(b"}"):
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise _Failed(number, f"not valid JSON{cut}: {exc}") from None
        if isinstance(doc, dict) and set(doc) == {"manifest"}:
            return doc, None
        raise _Failed(number, "neither an event line nor the manifest")
    # Only the small header is parsed here; the body is checked (parsed, hashed) by the
    # chain walk, as the exact bytes between '"state":' and the closing brace.
    try:
        doc = from_json(raw[:at] + b"}")
    except ValueError as exc:
        raise _Failed(number, f"not valid JSON{cut}: {exc}") from None
    if (
        not isinstance(doc, dict)
        or list(doc) != _HEADER_KEYS
        or type(doc["position"]) is not int
        or type(doc["version"]) is not int
        or not isinstance(doc["stream"], str)
        or not isinstance(doc["topic"], str)
    ):
        raise _Failed(
            number,
            "not an event line: expected position (int), stream (str), version (int), "
            "topic (str) and state (the stored body), in that order",
        )
    return doc, raw[at + len(_STATE_KEY) : -1]


def _check_events(rows: list[Notification]) -> tuple[_Failed | None, dict[str, tuple[str, int]]]:
    """The first problem of the events' hashes and chains (``verify.verify_rows``), or None;
    and the forks by reference in the file (fork -> (parent, events inherited))."""
    hashes: dict[tuple[str, int], str | None] = {}

    def hash_at(stream: str, version: int) -> str | None:
        if not hashes:
            for row in rows:
                split = split_state(row.state)
                key = (str(row.originator_id), row.originator_version)
                hashes[key] = split[1] if split else None
        return hashes.get((stream, version))

    report = verify_rows(rows, lambda row: row.state, hash_at=hash_at)
    ancestors = {parent for parent, _ in report.links.values()}
    single_run = len({r.originator_id for r in rows} - ancestors) == 1
    return _first_problem(rows, report, single_run=single_run), report.links


def _first_problem(rows: list[Notification], report: Report, *, single_run: bool) -> _Failed | None:
    for finding in report.findings:  # sorted by position, which here is the line number
        # In one run's export, a cause in another stream is expected to be absent.
        if finding.problem is Problem.DANGLING_CAUSE and single_run:
            continue
        detail = finding.detail.replace("(position ", "(line ")
        return _Failed(
            finding.position,
            f"stream {finding.stream!r} version {finding.version}: "
            f"{finding.problem.value}: {detail}",
        )
    for row in rows:
        # The topic is outside the hashed body: check it against the body's type (a byte
        # search first, for speed; a parse when the body is laid out otherwise).
        name, _, schema = row.topic.partition("@")
        if b'"type":"%s","schema_version":%s,' % (name.encode(), schema.encode()) in row.state:
            continue
        doc = json.loads(row.state)
        topic = f"{doc.get('type')}@{doc.get('schema_version')}"
        if topic != row.topic:
            return _Failed(
                row.id, f"edited: the topic {row.topic!r} does not match the body's {topic!r}"
            )
    return None


def _manifest(number: int, doc: Any) -> Manifest:
    try:
        if not isinstance(doc, dict):
            raise TypeError("not an object")
        manifest = Manifest(**doc)
    except TypeError as exc:
        raise _Failed(number, f"the manifest is malformed: {exc}") from None
    if manifest.format != FORMAT:
        raise _Failed(
            number, f"unsupported export format {manifest.format!r}; this reader knows {FORMAT}"
        )
    return manifest


def _check_manifest(
    number: int,
    manifest: Manifest,
    rows: list[Notification],
    positions: list[int],
    digest: str,
    key: Ed25519PublicKey | None,
    links: dict[str, tuple[str, int]],
) -> None:
    expected: list[tuple[str, object, object]] = [("count", manifest.count, len(rows))]
    if rows:
        last_hash = split_state(rows[-1].state)
        expected += [
            ("first_version", manifest.first_version, rows[0].originator_version),
            ("last_version", manifest.last_version, rows[-1].originator_version),
            ("first_position", manifest.first_position, positions[0]),
            ("last_position", manifest.last_position, positions[-1]),
            ("head_hash", manifest.head_hash, last_hash[1] if last_hash else None),
        ]
        # A run's export holds the run, and the ancestors a fork by reference inherits from.
        allowed = {manifest.run}
        run = manifest.run
        while run in links:
            run = links[run][0]
            allowed.add(run)
        if manifest.run is not None and any(r.originator_id not in allowed for r in rows):
            stray = next(r for r in rows if r.originator_id not in allowed)
            raise _Failed(
                stray.id,
                f"an event of stream {stray.originator_id!r} in the export of {manifest.run!r}",
            )
    for name, said, found in expected:
        if said != found:
            raise _Failed(
                number,
                f"the manifest says {name} {said!r} but the file has {found!r}: events were "
                "removed, added or edited, or the manifest was changed",
            )
    if manifest.digest != digest:
        raise _Failed(
            number,
            "the manifest's digest does not match the event lines: a line was edited, added, "
            "removed or moved, or the manifest was changed",
        )
    if key is None:
        return
    if manifest.signature is None:
        raise _Failed(number, "the manifest is not signed, but a public key was given to check it")
    try:
        key.verify(base64.b64decode(manifest.signature, validate=True), manifest.signed_bytes())
    except (InvalidSignature, ValueError, TypeError):
        raise _Failed(
            number,
            "the manifest's signature does not verify with this public key: the manifest was "
            "changed, or it was signed with another key",
        ) from None


def _canonical(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
