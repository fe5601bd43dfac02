"""Audit exports: a real SQLite run exported, verified, and every kind of tampering detected."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agentledger.events import ConfigurationError, EventStore, NotFound
from agentledger.events._codec import body_hash, split_state
from agentledger.events.audit import Manifest, export_run, generate_keypair, verify_export
from agentledger.sample import write_sample_run

Lines = list[bytes]
# Tamperings only the signature can reveal: the forger rebuilt a consistent manifest.
KEY_ONLY = {
    "alter the manifest's exporter",
    "re-sign with another key",
    "rewrite the head and re-sign",
}


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / f"{name}.pem" for name in ("private", "public", "other", "other_pub")}
    generate_keypair(paths["private"], paths["public"])
    generate_keypair(paths["other"], paths["other_pub"])
    return paths


@pytest.fixture
def store(tmp_path: Path) -> EventStore:
    s = EventStore.open(f"sqlite:///{tmp_path / 'l.db'}")
    yield s  # type: ignore[misc]
    s.close()


@pytest.fixture
def exported(store: EventStore, keys: dict[str, Path], tmp_path: Path) -> tuple[str, Path]:
    write_sample_run(store)  # another run in the log: the export must hold only its own
    run, _ = write_sample_run(store)
    out = tmp_path / "run.jsonl"
    export_run(store, run, out, signing_key=keys["private"], exporter="human:auditor")
    return run, out


def test_an_export_holds_the_stored_bytes_and_verifies(
    store: EventStore, exported: tuple[str, Path], keys: dict[str, Path]
) -> None:
    run, out = exported
    lines = out.read_bytes().splitlines()
    stored = [r for r in store.read_stored() if r.originator_id == run]
    assert len(lines) == len(stored) + 1
    for line, row in zip(lines, stored, strict=False):
        doc = json.loads(line)  # a plain JSON reader reads every line
        assert _split(line)[1] == store.plain_state(row)  # the stored bytes, verbatim
        assert doc["state"]["hash"] == split_state(store.plain_state(row))[1]  # type: ignore[index]
        assert (doc["position"], doc["stream"], doc["version"]) == (
            row.id,
            run,
            row.originator_version,
        )
    manifest = json.loads(lines[-1])["manifest"]
    assert manifest["run"] == run
    assert manifest["count"] == len(stored)
    assert (manifest["first_version"], manifest["last_version"]) == (1, len(stored))
    assert manifest["head_hash"] == split_state(store.plain_state(stored[-1]))[1]  # type: ignore[index]
    event_bytes = b"".join(line + b"\n" for line in lines[:-1])
    assert manifest["digest"] == hashlib.sha256(event_bytes).hexdigest()
    assert manifest["exporter"] == "human:auditor"

    report = verify_export(out, public_key=keys["public"])
    assert report.ok, str(report)
    assert report.signature_checked and report.events == len(stored)
    assert verify_export(out).ok


def test_the_whole_log_exports_and_verifies(store: EventStore, tmp_path: Path) -> None:
    write_sample_run(store)
    write_sample_run(store)
    out = tmp_path / "all.jsonl"
    manifest = export_run(store, None, out, exporter="human:auditor")
    assert manifest.run is None and manifest.count == store.head_position()
    assert verify_export(out).ok


def test_the_signature_verifies_with_the_right_key_only(
    exported: tuple[str, Path], keys: dict[str, Path]
) -> None:
    _, out = exported
    assert verify_export(out, public_key=keys["public"]).ok
    wrong = verify_export(out, public_key=keys["other_pub"])
    assert not wrong.ok
    assert wrong.line == len(out.read_bytes().splitlines())
    assert "signature does not verify" in (wrong.problem or "")


def test_an_unsigned_export_is_refused_when_a_key_is_given(
    store: EventStore, keys: dict[str, Path], tmp_path: Path
) -> None:
    run, _ = write_sample_run(store)
    out = tmp_path / "unsigned.jsonl"
    export_run(store, run, out, exporter="human:auditor")
    assert verify_export(out).ok
    report = verify_export(out, public_key=keys["public"])
    assert not report.ok and "not signed" in (report.problem or "")


def test_an_unknown_run_writes_nothing(store: EventStore, tmp_path: Path) -> None:
    write_sample_run(store)
    out = tmp_path / "out" / "x.jsonl"
    out.parent.mkdir()
    with pytest.raises(NotFound, match="run-nope"):
        export_run(store, "run-nope", out, exporter="human:auditor")
    assert list(out.parent.iterdir()) == []


def test_export_run_keeps_existing_files_and_never_writes_over_the_store(tmp_path: Path) -> None:
    # Opened by a file: URI, the store's file is still recognised under its plain name.
    db = tmp_path / "l.db"
    with EventStore.open(f"sqlite:///file:{db}?mode=rwc") as store:
        run, _ = write_sample_run(store)
        before = db.read_bytes()
        for overwrite in (False, True):
            with pytest.raises(ConfigurationError, match="would destroy the log"):
                export_run(store, run, db, exporter="human:auditor", overwrite=overwrite)
        assert db.read_bytes() == before
        out = tmp_path / "run.jsonl"
        out.write_text("kept\n")
        with pytest.raises(ConfigurationError, match=f"{re.escape(str(out))} exists.*--force"):
            export_run(store, run, out, exporter="human:auditor")  # the library's default too
        assert out.read_text() == "kept\n"
        export_run(store, run, out, exporter="human:auditor", overwrite=True)
        assert verify_export(out).ok


def test_bad_files_and_keys_get_clear_errors(
    exported: tuple[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    _, out = exported
    with pytest.raises(NotFound, match=r"missing\.jsonl"):
        verify_export(tmp_path / "missing.jsonl")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(ConfigurationError, match="not a PEM"):
        verify_export(out, public_key=not_pem)
    with pytest.raises(ConfigurationError, match="usable ed25519"):
        verify_export(out, public_key=keys["private"])  # a private key where a public one goes
    with pytest.raises(ConfigurationError, match="exists"):
        generate_keypair(keys["private"], tmp_path / "new.pub")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('{"position": 1}\nnot json at all\n')
    report = verify_export(garbage)
    assert not report.ok and report.line == 1  # the first line is not an event line
    garbage.write_text(out.read_text()[:-40])  # cut inside the manifest line
    report = verify_export(garbage)
    assert not report.ok and report.line == len(out.read_text().splitlines())
    assert "not valid JSON" in (report.problem or "")


def _split(line: bytes) -> tuple[bytes, bytes]:
    """An event line's header (up to '"state":') and its verbatim stored body."""
    at = line.index(b',"state":') + len(b',"state":')
    return line[:at], line[at:-1]


def _state_doc(line: bytes) -> tuple[bytes, dict[str, object]]:
    header, state = _split(line)
    return header, json.loads(state)


def _reseal(body: dict[str, object]) -> bytes:
    # A careful forger: rewrite the body and give it a correct hash of its own.
    body = {k: v for k, v in body.items() if k != "hash"}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    digest = body_hash(text)
    return text[:-1] + b',"hash":"' + digest.encode() + b'"}'


def _line(doc: dict[str, object]) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode()


def _manifest(lines: Lines) -> dict[str, object]:
    manifest: dict[str, object] = json.loads(lines[-1])["manifest"]
    return manifest


def _sign(manifest: dict[str, object], key_path: Path) -> str:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    fields = {k: v for k, v in manifest.items() if k != "signature"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return base64.b64encode(key.sign(canonical.encode())).decode()  # type: ignore[union-attr, call-arg]


def _rebuild_manifest(lines: Lines, key_path: Path) -> Lines:
    """A forger who recomputes the whole manifest and signs it with their own key."""
    events = lines[:-1]
    manifest = _manifest(lines)
    first, last = json.loads(events[0]), json.loads(events[-1])
    manifest.update(
        count=len(events),
        first_version=first["version"],
        last_version=last["version"],
        first_position=first["position"],
        last_position=last["position"],
        head_hash=last["state"]["hash"],
        digest=hashlib.sha256(b"".join(e + b"\n" for e in events)).hexdigest(),
    )
    manifest["signature"] = _sign(manifest, key_path)
    return [*events, _line({"manifest": manifest})]


def _tamperings(other_key: Path) -> dict[str, Callable[[random.Random, Lines], Lines]]:
    def edit_byte(rng: random.Random, lines: Lines) -> Lines:
        i = rng.randrange(len(lines) - 1)
        header, state = _split(lines[i])
        j = rng.randrange(len(state))
        new = rng.choice([c for c in b'abcXYZ019 "{}:,' if c != state[j]])
        return [
            *lines[:i],
            header + state[:j] + bytes([new]) + state[j + 1 :] + b"}",
            *lines[i + 1 :],
        ]

    def edit_raw_byte(rng: random.Random, lines: Lines) -> Lines:
        i = rng.randrange(len(lines))
        line = bytearray(lines[i])
        j = rng.randrange(len(line))
        line[j] = (line[j] + rng.randrange(1, 256)) % 256
        if line[j] == 10:  # keep it one line: a newline would be a split, tested elsewhere
            line[j] = 11
        return [*lines[:i], bytes(line), *lines[i + 1 :]]

    def change_payload(rng: random.Random, lines: Lines, *, reseal: bool) -> Lines:
        i = rng.randrange(len(lines) - 1)
        header, body = _state_doc(lines[i])
        payload = body["payload"]
        assert isinstance(payload, dict)
        field = rng.choice(sorted(payload))
        payload[field] = f"forged-{rng.random()}"
        state = _reseal(body) if reseal else json.dumps(body, separators=(",", ":")).encode()
        return [*lines[:i], header + state + b"}", *lines[i + 1 :]]

    def delete_line(rng: random.Random, lines: Lines) -> Lines:
        i = rng.randrange(len(lines) - 1)
        return lines[:i] + lines[i + 1 :]

    def duplicate_line(rng: random.Random, lines: Lines) -> Lines:
        i = rng.randrange(len(lines) - 1)
        j = rng.randrange(len(lines))
        return [*lines[:j], lines[i], *lines[j:]]

    def swap_lines(rng: random.Random, lines: Lines) -> Lines:
        i, j = sorted(rng.sample(range(len(lines)), 2))
        out = list(lines)
        out[i], out[j] = out[j], out[i]
        return out

    def truncate_at_line(rng: random.Random, lines: Lines) -> Lines:
        return lines[: rng.randrange(len(lines))]

    def drop_manifest(rng: random.Random, lines: Lines) -> Lines:
        return lines[:-1]

    def alter_manifest(rng: random.Random, lines: Lines) -> Lines:
        manifest = _manifest(lines)
        name = rng.choice(["count", "digest", "head_hash", "last_version", "run"])
        value = manifest[name]
        if isinstance(value, int):
            manifest[name] = value + rng.choice([-1, 1, 5])
        else:
            manifest[name] = hashlib.sha256(str(rng.random()).encode()).hexdigest()
        return [*lines[:-1], _line({"manifest": manifest})]

    def alter_exporter(rng: random.Random, lines: Lines) -> Lines:
        # Not derived from the events: only the signature protects it.
        manifest = _manifest(lines)
        manifest["exporter"] = "human:mallory"
        return [*lines[:-1], _line({"manifest": manifest})]

    def resign_with_another_key(rng: random.Random, lines: Lines) -> Lines:
        # Everything made consistent again (delete an event, recompute count, digest, head),
        # then signed with the forger's key: only the signature can tell.
        i = rng.randrange(len(lines) - 1)
        return _rebuild_manifest(lines[:i] + lines[i + 1 :], other_key) if i else lines[1:]

    def reseal_and_resign(rng: random.Random, lines: Lines) -> Lines:
        # The newest event rewritten with a valid hash: its chain cannot show it, the manifest
        # (rebuilt to match) is then signed with the wrong key.
        header, body = _state_doc(lines[-2])
        body["actor"] = "human:mallory"
        return _rebuild_manifest([*lines[:-2], header + _reseal(body) + b"}", lines[-1]], other_key)

    return {
        "edit a byte in a state": edit_byte,
        "edit a raw byte": edit_raw_byte,
        "change a payload value": lambda r, ls: change_payload(r, ls, reseal=False),
        "change a payload value and rehash": lambda r, ls: change_payload(r, ls, reseal=True),
        "delete a line": delete_line,
        "duplicate a line": duplicate_line,
        "swap two lines": swap_lines,
        "truncate at a line": truncate_at_line,
        "drop the manifest": drop_manifest,
        "alter the manifest": alter_manifest,
        "alter the manifest's exporter": alter_exporter,
        "re-sign with another key": resign_with_another_key,
        "rewrite the head and re-sign": reseal_and_resign,
    }


def test_every_random_tampering_is_detected(
    exported: tuple[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    _, out = exported
    original = out.read_bytes().splitlines()
    tamperings = _tamperings(keys["other"])
    rng = random.Random(20261129)
    forged = tmp_path / "forged.jsonl"
    checked: dict[str, int] = dict.fromkeys(tamperings, 0)
    for _ in range(600):
        name = rng.choice(sorted(tamperings))
        lines = tamperings[name](rng, original)
        if lines == original:
            continue  # e.g. a swap of two identical lines: nothing was tampered with
        forged.write_bytes(b"".join(line + b"\n" for line in lines))
        report = verify_export(forged, public_key=keys["public"])
        assert not report.ok, f"{name} went undetected"
        assert report.line is not None and report.problem
        if name not in KEY_ONLY:
            # Detected from the file alone, without the key.
            assert not verify_export(forged).ok, f"{name} went undetected without the key"
        checked[name] += 1
    assert all(n >= 20 for n in checked.values()), checked


@pytest.mark.parametrize(
    ("tamper", "line", "words"),
    [
        (lambda ls: ls[:4] + ls[5:], 5, "version-gap"),
        (lambda ls: [*ls[:3], ls[4], ls[3], *ls[5:]], 4, "version-gap"),
        (lambda ls: [ls[1], ls[0], *ls[2:]], 1, "version-gap"),
        (lambda ls: [*ls[:3], ls[2], *ls[3:]], 4, "duplicated"),
        (lambda ls: ls[:-1], 19, "manifest is missing"),
        (lambda ls: ls[:7], 8, "manifest is missing"),
    ],
)
def test_the_first_problem_is_named_by_its_line(
    exported: tuple[str, Path],
    tmp_path: Path,
    tamper: Callable[[Lines], Lines],
    line: int,
    words: str,
) -> None:
    _, out = exported
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"".join(x + b"\n" for x in tamper(out.read_bytes().splitlines())))
    report = verify_export(forged)
    assert (report.line, report.ok) == (line, False), str(report)
    assert words in (report.problem or ""), str(report)
    assert f"line {line}" in str(report)


def test_an_edited_event_is_named_with_its_line(exported: tuple[str, Path], tmp_path: Path) -> None:
    _, out = exported
    lines = out.read_bytes().splitlines()
    header, body = _state_doc(lines[5])
    body["actor"] = "human:mallory"
    edited = header + json.dumps(body, separators=(",", ":")).encode() + b"}"
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"".join(x + b"\n" for x in [*lines[:5], edited, *lines[6:]]))
    report = verify_export(forged)
    assert report.line == 6 and "edited" in (report.problem or ""), str(report)


def test_manifest_round_trips() -> None:
    manifest = Manifest("run-x", 1, 1, 1, 1, 1, "h" * 64, "d" * 64, "human:a", "2026-01-01")
    assert Manifest(**manifest.to_json()) == manifest
    assert b"signature" not in manifest.signed_bytes()


def test_the_export_of_a_fork_holds_the_history_it_inherits(
    store: EventStore, tmp_path: Path
) -> None:
    from agentledger.events import ScratchpadUpdated
    from agentledger.fork import fork_run

    run, _ = write_sample_run(store)
    parent = store.read(run)
    fork, _ = fork_run(store, run, parent[-1].position or 0, by="human:ada")
    store.append(
        fork, [ScratchpadUpdated(actor="agent:research/r1", payload={"key": "k", "value": "f"})]
    )
    second, _ = fork_run(store, fork, store.read(fork)[-1].position or 0, by="human:ada")
    store.append(
        second, [ScratchpadUpdated(actor="agent:research/r1", payload={"key": "k", "value": "g"})]
    )
    out = tmp_path / "fork.jsonl"
    manifest = export_run(store, second, out, exporter="human:auditor")
    lines = out.read_bytes().splitlines()[:-1]
    streams = [json.loads(line)["stream"] for line in lines]
    # The events inherited from the first parent, the first fork's own two, the second's own.
    n = len(parent)
    assert streams == [run] * n + [fork] * 2 + [second] * 2
    assert manifest.count == n + 4 and manifest.run == second
    report = verify_export(out)
    assert report.ok, str(report)
    # An edited inherited event is found in the export of the fork, with its line.
    header, body = _state_doc(lines[2])
    body["actor"] = "human:mallory"
    edited = header + json.dumps(body, separators=(",", ":")).encode() + b"}"
    forged = tmp_path / "forged.jsonl"
    forged.write_bytes(b"".join(x + b"\n" for x in [*lines[:2], edited, *lines[3:]]))
    assert verify_export(forged).line == 3
    # Without its ancestors' lines, the fork's chain has nothing to go on from.
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(x + b"\n" for x in lines[n:]))
    report = verify_export(cut)
    assert not report.ok and "inherits" in (report.problem or ""), str(report)
