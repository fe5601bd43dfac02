"""Configuration: ``agentledger.toml`` and where local, rebuildable caches live."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentledger.actors.extensions import Extension, load_extensions, provider_names, tool_registry
from agentledger.actors.models import PROVIDERS, parse_model_spec
from agentledger.actors.notify import check_webhook
from agentledger.actors.policy import PolicyError, RiskPolicy
from agentledger.actors.providers import ProviderSettings
from agentledger.actors.runtime import RuntimeConfig
from agentledger.actors.tools import default_registry
from agentledger.control import Approver
from agentledger.events import ConfigurationError, NotFound, Role

CACHE_ENV = "AGENTLEDGER_CACHE"


def cache_dir(store_url: str) -> Path:
    """The cache folder for a store: ``$AGENTLEDGER_CACHE``, else beside a SQLite file, else
    ``./.agentledger/cache/<hash of the URL>``. Everything in it is rebuilt from the log.
    ``ConfigurationError`` if it, or a folder it would be made in, is a file."""
    override = os.environ.get(CACHE_ENV, "").strip()
    if override:
        folder = Path(override)
        named = f"${CACHE_ENV}={override}"
        fix = f"set ${CACHE_ENV} to a folder (made if missing), or unset it"
    else:
        from agentledger.events._backends import sqlite_file

        path = sqlite_file(store_url)
        if path is not None:
            folder = path.parent / f"{path.stem}.cache"
        else:
            digest = hashlib.sha256(store_url.encode()).hexdigest()[:12]
            folder = Path(".agentledger") / "cache" / digest
        named = f"{folder} (where the cache of this store goes)"
        fix = f"move that file away, or set ${CACHE_ENV} to a folder for the cache"
    # Checked here, where it is chosen: the projections and the memory that make their files
    # in it would otherwise each fail in their own way (FileExistsError, NotADirectoryError).
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        inside = "" if existing == folder else f" ({existing} is a file)"
        raise ConfigurationError(f"{named} is not a folder{inside}; {fix}")
    return folder


# ---------------------------------------------------------------------------- agentledger.toml

CONFIG_FILE = "agentledger.toml"
CONFIG_ENV = "AGENTLEDGER_CONFIG"


class RuntimeSection(BaseModel):
    """``[runtime]``: how agents run on Ray."""

    model_config = ConfigDict(extra="forbid")

    namespace: str | None = Field(
        default=None, description="Ray namespace of the agents (default: one per store)"
    )
    workspace_root: str = ".agentledger/workspaces"
    context_tokens: int = Field(default=8_000, ge=256)
    tool_timeout_s: float = Field(default=60.0, gt=0, le=3_600)
    record_prompts: Literal["full", "hash"] = "full"
    approval_ttl_s: float = Field(default=86_400.0, gt=0)
    policy: str | None = Field(default=None, description="risk policy file (TOML)")
    notify_command: str | None = None
    notify_webhook: str | None = None
    num_cpus: float = Field(default=0.0, ge=0)
    memory_mb: int | None = Field(default=None, ge=64)
    max_restarts: int = Field(default=-1, ge=-1)
    replicas: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)


class StoreSection(BaseModel):
    """``[store]``: the event store, as a table (the same as a top-level ``store = "URL"``)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, description="event store URL")


class Settings(BaseModel):
    """Everything ``agentledger.toml`` may set; every field has a working default."""

    model_config = ConfigDict(extra="forbid")

    store: str | None = Field(default=None, description="event store URL")
    extensions: list[str] = Field(
        default_factory=list,
        description="module:object names of agentledger.actors.Extension objects (your tools, "
        "model providers, agent classes); docs/extending.md",
    )
    models: dict[str, str] = Field(default_factory=dict, description="role = 'provider:model'")
    openai: ProviderSettings = ProviderSettings()
    runtime: RuntimeSection = RuntimeSection()
    approvers: dict[str, Approver] = Field(
        default_factory=dict, description="who may approve, and how they prove it"
    )
    source: str | None = Field(default=None, exclude=True)


def _problem(loc: tuple[int | str, ...], kind: str, message: str) -> str:
    """One mistake in agentledger.toml; a misspelt setting is told the settings its table has."""
    where = ".".join(str(p) for p in loc)
    if kind != "extra_forbidden":
        return f"{where}: {message}"
    sections: dict[str, type[BaseModel]] = {
        "store": StoreSection,
        "openai": ProviderSettings,
        "runtime": RuntimeSection,
        "approvers": Approver,  # [approvers.NAME]
    }
    model = sections.get(str(loc[0]), Settings) if len(loc) > 1 else Settings
    table = f"[{'.'.join(str(p) for p in loc[:-1])}]" if len(loc) > 1 else "the top level"
    known = ", ".join(name for name in model.model_fields if name != "source")
    if model is StoreSection:  # e.g. path = "…": a SQLite file is named by its URL
        known += ' (a SQLite file too: url = "sqlite:///path/to/ledger.db")'
    return f"{where}: unknown setting; {table} takes {known}"


def load_settings(path: Path | None = None) -> Settings:
    """Read ``path`` (or ``$AGENTLEDGER_CONFIG``, or ``./agentledger.toml`` if present).

    Errors name the file, the line (for TOML syntax) or the setting, and what is expected.
    """
    explicit = path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    chosen = explicit or Path(CONFIG_FILE)
    if not chosen.exists():
        if explicit is not None:
            raise NotFound(f"config file {chosen} does not exist")
        return Settings()
    try:
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{chosen}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{chosen}: cannot read it: {exc}") from None
    store = data.pop("store", None)
    table = isinstance(store, dict)
    errors: list[tuple[tuple[int | str, ...], str, str]] = []
    if isinstance(store, dict):  # [store] url = "…": its other keys refused as any table's
        try:
            store = StoreSection.model_validate(store).url
        except ValidationError as exc:
            errors += [(("store", *e["loc"]), e["type"], e["msg"]) for e in exc.errors()]
            store = None
    try:
        settings = Settings.model_validate({**data, "store": store})
    except ValidationError as exc:
        errors += [(e["loc"], e["type"], e["msg"]) for e in exc.errors()]
    if errors:
        problems = "; ".join(_problem(*e) for e in errors[:10])
        raise ConfigurationError(f"{chosen}: {problems}") from None
    for name in settings.extensions:
        if not re.fullmatch(r"[\w.]+:[\w.]+", name):
            raise ConfigurationError(
                f"{chosen} extensions: {name!r} is not module:object, e.g. 'mytools:extension'"
            )
    # With extensions, their providers and tools are known only once they are imported, which
    # commands that read the log do not need (nor the extension's package): the commands that
    # start agents or re-execute them check those names then (``extensions_of``).
    providers = None if settings.extensions else PROVIDERS
    for role, text in settings.models.items():
        parse_model_spec(f"{role}={text}", source=f"{chosen} [models]", providers=providers)
    for role in settings.runtime.replicas:
        if role not in {r.value for r in Role}:
            raise ConfigurationError(
                f"{chosen} [runtime] replicas: unknown role {role!r}; roles: "
                + ", ".join(r.value for r in Role)
            )
    if settings.store is not None:
        _check_store(settings.store, chosen, "[store] url" if table else "store")
    if settings.runtime.notify_webhook:
        try:
            check_webhook(settings.runtime.notify_webhook)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{chosen} [runtime] {exc}") from None
    if settings.runtime.policy:
        # Checked now, with the line of any mistake, not when an agent first needs it.
        policy_path = Path(settings.runtime.policy)
        if not policy_path.is_absolute():
            policy_path = chosen.parent / policy_path
        with _policy_of(chosen, settings.runtime.policy, policy_path):
            policy = RiskPolicy.load(policy_path)
            if not settings.extensions:
                policy.check_tools(default_registry().names())
        runtime = settings.runtime.model_copy(update={"policy": str(policy_path)})
        settings = settings.model_copy(update={"runtime": runtime})
    return settings.model_copy(update={"source": str(chosen)})


def _check_store(url: str, source: Path, key: str) -> None:
    """The settings file's store URL, checked as the store will read it (nothing opened), so
    that a mistake in it names the file and the setting, not only the URL."""
    from agentledger.events._backends import check_store_url

    if not url.strip():
        raise ConfigurationError(
            f"{source} {key}: the store URL is empty; give one (e.g. "
            '"sqlite:///.agentledger/ledger.db"), or leave the setting out for the default'
        )
    try:
        check_store_url(url)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{source} {key}: {exc}") from None


@contextmanager
def _policy_of(source: Path | str, given: str, policy_path: Path) -> Iterator[None]:
    """A policy file's mistakes, said as the settings file's ``[runtime] policy`` that named it
    (the policy's own message names its file and line)."""
    try:
        yield
    except PolicyError as exc:
        if policy_path.exists():
            raise ConfigurationError(f"{source} [runtime] policy: {exc}") from None
        relative = "" if Path(given).is_absolute() else f" ({given} from {source}'s folder)"
        raise ConfigurationError(
            f"{source} [runtime] policy: there is no policy file {policy_path}{relative}; "
            "check the path, or leave the setting out for the built-in rules"
        ) from None


def extensions_of(settings: Settings) -> list[Extension]:
    """The extensions ``settings`` name, imported, with the model choices and policy file
    checked against their providers and tools (for commands that start or re-execute agents)."""
    where = settings.source or "settings"
    extensions = load_extensions(settings.extensions, source=f"{where} extensions")
    if extensions:
        providers = provider_names(extensions)
        for role, text in settings.models.items():
            parse_model_spec(f"{role}={text}", source=f"{where} [models]", providers=providers)
        if settings.runtime.policy:
            policy_path = Path(settings.runtime.policy)
            with _policy_of(where, settings.runtime.policy, policy_path):
                policy = RiskPolicy.load(policy_path)
                policy.check_tools(tool_registry(extensions).names())
    return extensions


def store_namespace(store_url: str) -> str:
    """The Ray namespace of a store's agents: agents serving one store never take another's
    runs, however many stores share a Ray cluster. The store is named as it is, not as it is
    spelled: a SQLite file by its absolute path, a PostgreSQL database by host, port, name,
    user and schema (not the password, nor postgres:// against postgresql://)."""
    return f"agentledger-{hashlib.sha256(_canonical(store_url).encode()).hexdigest()[:10]}"


def _canonical(store_url: str) -> str:
    from agentledger.events._backends import parse_postgres_url, sqlite_file

    path = sqlite_file(store_url)
    if path is not None:  # a file: URI names it as its plain path does
        return "sqlite:///" + str(path.resolve())
    if store_url.strip().lower().startswith(("postgresql://", "postgres://")):
        pg = parse_postgres_url(store_url.strip())
        return f"postgresql://{pg.user}@{pg.host}:{pg.port}/{pg.dbname}?schema={pg.schema}"
    return store_url.strip()


def _absolute(store_url: str) -> str:
    """``store_url`` with a SQLite file named by its absolute path (a ``file:`` URI keeps its
    options: ``?mode=rw``, ``&nolock=1``…); other stores as they are."""
    from urllib.parse import quote, urlsplit

    from agentledger.events._backends import sqlite_file, sqlite_path

    path, file = sqlite_path(store_url), sqlite_file(store_url)
    if not path or file is None:
        return store_url
    if not path.startswith("file:"):
        return "sqlite:///" + str(file.resolve())
    query = urlsplit(path).query
    return f"sqlite:///file:{quote(str(file.resolve()))}" + (f"?{query}" if query else "")


def runtime_config(settings: Settings, store_url: str, models: dict[str, str]) -> RuntimeConfig:
    """The runtime configuration for a store, with absolute paths (agents run elsewhere)."""
    store_url = _absolute(store_url)  # the agents' processes may not share this one's folder
    rt = settings.runtime
    return RuntimeConfig(
        store_url=store_url,
        namespace=rt.namespace or store_namespace(store_url),
        models={**settings.models, **models},
        openai=settings.openai,
        workspace_root=str(Path(rt.workspace_root).resolve()),
        memory_dir=str((cache_dir(store_url) / "agents").resolve()),
        context_tokens=rt.context_tokens,
        tool_timeout_s=rt.tool_timeout_s,
        record_prompts=rt.record_prompts,
        approval_ttl_s=rt.approval_ttl_s,
        policy_file=str(Path(rt.policy).resolve()) if rt.policy else None,
        notify_command=rt.notify_command,
        notify_webhook=rt.notify_webhook,
        replicas=rt.replicas,
        num_cpus=rt.num_cpus,
        memory_mb=rt.memory_mb,
        max_restarts=rt.max_restarts,
        extensions=tuple(settings.extensions),
    )
