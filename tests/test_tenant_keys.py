"""API keys bound to tenants, and task ids scoped per tenant: pure parsing and decisions, the
HTTP door against the real broker and store, the store's migration, then the whole pipeline."""

from __future__ import annotations

import hmac
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import ValidationError
from sqlalchemy import Column, MetaData, Table, create_engine, insert, inspect

from bench.stack import http, running_pipeline, wait_until
from services import keys as keys_cli
from services.common import api_keys
from services.common.api_keys import (
    ADMIN,
    KeyEntry,
    KeysError,
    KeyTable,
    config_lines,
    digest_of,
    entries_from_env,
    entries_from_table,
    key_table,
    new_key,
    parse_digest,
    plain_keys,
)
from services.common.config import AgentqConfig, load_config
from services.common.models import Result, Task
from services.common.settings import Settings
from services.common.store import (
    engine_url,
    find_tasks,
    forget_task,
    get_task,
    insert_task,
    make_engine,
    mark_queued,
    mark_running,
    record_results,
    tasks,
)
from services.common.topology import Names
from services.ingest.scope import Forbidden, lookup_tenant, scope_tasks
from tests.conftest import Rabbit
from tests.test_ingest import running_app

ACME_KEY, BETA_KEY, ADMIN_KEY = "aq_acme-" + "a" * 40, "aq_beta-" + "b" * 40, "old-admin-key"


def _digest(key: str) -> str:
    return "sha256:" + digest_of(key).hex()


# --- parsing and deciding: no broker, no database -----------------------------------------

def test_a_digest_is_sha256_hex() -> None:
    assert _digest("test") == \
        "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert parse_digest(_digest("test").upper().replace("SHA256", "sha256")) == digest_of("test")


@pytest.mark.parametrize("text", ["9f86d0", "sha256:xyz", "sha1:" + "0" * 40,
                                  "sha256:" + "0" * 63, ACME_KEY])
def test_a_bad_digest_is_refused(text: str) -> None:
    with pytest.raises(KeysError):
        parse_digest(text)


def test_the_table_maps_tenants_to_digests() -> None:
    entries = entries_from_table({"acme": [_digest(ACME_KEY)], "*": [_digest(ADMIN_KEY)]})
    assert entries == [KeyEntry(tenant="acme", digest=digest_of(ACME_KEY)),
                       KeyEntry(tenant=ADMIN, digest=digest_of(ADMIN_KEY))]


@pytest.mark.parametrize("table", [{"acme": _digest(ACME_KEY)}, {"bad tenant": [_digest("k")]},
                                   {"acme": ["k-in-clear"]}])
def test_a_bad_table_is_refused(table: dict[str, Any]) -> None:
    with pytest.raises(KeysError):
        entries_from_table(table)


def test_the_env_holds_old_admin_keys_and_tenant_digests() -> None:
    value = f" {ADMIN_KEY} , acme:{_digest(ACME_KEY)},*:{_digest('k2')},"
    assert entries_from_env(value) == [
        KeyEntry(tenant=ADMIN, digest=digest_of(ADMIN_KEY)),  # hashed in memory
        KeyEntry(tenant="acme", digest=digest_of(ACME_KEY)),
        KeyEntry(tenant=ADMIN, digest=digest_of("k2"))]
    assert plain_keys(value) == [ADMIN_KEY]  # what `agentq submit` may send


@pytest.mark.parametrize("value", ["acme:sha256:" + "z" * 64, "sha256:" + "0" * 64,
                                   "acme:sha256:" + "0" * 63, "a b:sha256:" + "0" * 64])
def test_a_mistyped_digest_is_not_taken_for_a_key(value: str) -> None:
    with pytest.raises(KeysError):
        entries_from_env(f"{ADMIN_KEY},{value}")
    assert plain_keys(f"{ADMIN_KEY},{value}") == [ADMIN_KEY]


def test_a_key_names_its_tenant() -> None:
    table = key_table(ADMIN_KEY, {"acme": [_digest(ACME_KEY)], "beta": [_digest(BETA_KEY)]})
    assert not table.open and KeyTable().open
    assert table.tenant_for(ACME_KEY) == "acme"
    assert table.tenant_for(BETA_KEY) == "beta"
    assert table.tenant_for(ADMIN_KEY) == ADMIN
    assert table.tenant_for(ACME_KEY + "x") is None
    assert table.tenant_for("") is None
    assert table.tenant_for(_digest(ACME_KEY)) is None  # the digest is not the key


def test_every_digest_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(api_keys.hmac, "compare_digest", spy)
    table = key_table("", {"acme": [_digest(ACME_KEY), _digest("k2")],
                           "beta": [_digest(BETA_KEY)]})
    assert table.tenant_for(ACME_KEY) == "acme"  # the first entry, and still all three
    assert len(compared) == 3 and all(a == digest_of(ACME_KEY) for a, _ in compared)


def test_the_tier_table_and_a_keys_file_configure_keys(tmp_path: Path) -> None:
    acme_line, _ = config_lines("acme", ACME_KEY)
    config = tmp_path / "agentq.toml"
    config.write_text(Path("agentq.example.toml").read_text() + f"\n[api_keys]\n{acme_line}\n")
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[api_keys]\nbeta = ["{_digest(BETA_KEY)}"]\n"*" = []\n')
    assert load_config(config).api_keys == {"acme": [_digest(ACME_KEY)]}
    table = Settings(config=config, api_keys_file=keys_file, api_keys=ADMIN_KEY).key_table()
    assert [table.tenant_for(k) for k in (ACME_KEY, BETA_KEY, ADMIN_KEY)] == \
        ["acme", "beta", ADMIN]
    assert Settings(config=config).key_table().tenant_for(BETA_KEY) is None


def test_a_bad_digest_in_the_tier_table_is_a_config_error() -> None:
    raw = load_config(None).model_dump()
    with pytest.raises(ValidationError, match="api_keys"):
        AgentqConfig.model_validate({**raw, "api_keys": {"acme": ["sha256:nothex"]}})


def test_keys_new_prints_a_key_and_a_line_that_configures_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_cli.main(["new", "--tenant", "acme"]) == 0
    key, *rest = capsys.readouterr().out.splitlines()
    assert key.startswith("aq_") and len(key) > 40 and key != new_key()
    line = next(text for text in rest if not text.startswith("#"))
    table = tomllib.loads(line)
    assert key not in line and key_table("", table).tenant_for(key) == "acme"
    env_entry = rest[-1].removeprefix("# ")
    assert key_table(env_entry).tenant_for(key) == "acme"
    with pytest.raises(SystemExit):
        keys_cli.main(["new", "--tenant", "not a tenant"])


def _tasks(*bodies: dict[str, Any]) -> list[Task]:
    return [Task.model_validate({"prompt": "x", **body}) for body in bodies]


def test_a_tenant_key_submits_for_its_tenant_only() -> None:
    given, same = scope_tasks(_tasks({}, {"tenant": "acme"}), "acme", listed=True)
    assert (given.tenant, same.tenant) == ("acme", "acme")
    with pytest.raises(Forbidden) as caught:
        scope_tasks(_tasks({}, {"tenant": "beta"}), "acme", listed=True)
    assert caught.value.field == "[1].tenant"
    with pytest.raises(Forbidden) as caught:
        scope_tasks(_tasks({"tenant": "default"}), "acme", listed=False)
    assert caught.value.field == "tenant"
    assert [t.tenant for t in scope_tasks(_tasks({}, {"tenant": "beta"}), ADMIN, True)] == \
        ["default", "beta"]


@pytest.mark.parametrize(("caller", "asked", "tenant"), [
    ("acme", None, "acme"), ("acme", "acme", "acme"), ("acme", "beta", None),
    (ADMIN, None, ADMIN), (ADMIN, "", ADMIN), (ADMIN, "beta", "beta"),
])
def test_a_lookup_stays_in_the_callers_tenant(caller: str, asked: str | None,
                                              tenant: str | None) -> None:
    assert lookup_tenant(caller, asked) == tenant


# --- the results store: ids per tenant, and the migration of an old table -----------------

def _task(tenant: str, task_id: str, prompt: str = "x") -> Task:
    return Task(id=task_id, tenant=tenant, prompt=prompt)


def test_the_store_keeps_one_id_per_tenant(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        assert insert_task(engine, _task("acme", "x"))[1]
        assert insert_task(engine, _task("beta", "x"))[1]
        row, created = insert_task(engine, _task("acme", "x", "again"))
        assert not created and row["tenant"] == "acme"
        mark_queued(engine, "acme", "x")
        assert [get_task(engine, t, "x")["status"] for t in ("acme", "beta")] == \
            ["queued", "accepted"]
        mark_running(engine, [("beta", "x")])
        assert get_task(engine, "acme", "x")["status"] == "queued"
        record_results(engine, [Result(task_id="x", tenant="acme", status="succeeded",
                                       output="A")])
        assert (get_task(engine, "acme", "x")["output"], get_task(engine, "beta", "x")["status"]) \
            == ("A", "running")
        assert [r["tenant"] for r in find_tasks(engine, "x")] == ["acme", "beta"]
        assert get_task(engine, "gamma", "x") is None
        insert_task(engine, _task("gamma", "x"))
        forget_task(engine, "gamma", "x")  # only gamma's, and only while accepted
        assert [r["tenant"] for r in find_tasks(engine, "x")] == ["acme", "beta"]
    finally:
        engine.dispose()


def _old_tasks_table(metadata: MetaData) -> Table:
    """The tasks table as agentq made it while ids were global: `id` alone is the key."""
    columns = [Column(c.name, c.type, primary_key=c.name == "id",
                      nullable=c.nullable or c.name == "id",
                      index=bool(c.index) and c.name != "id") for c in tasks.columns]
    return Table(tasks.name, metadata, *columns)


def test_an_old_table_is_migrated_to_the_tenant_key(database_url: str) -> None:
    old_engine = create_engine(engine_url(database_url))
    metadata = MetaData()
    old = _old_tasks_table(metadata)
    metadata.create_all(old_engine)
    with old_engine.begin() as conn:
        conn.execute(insert(old).values(id="x", tenant="acme", kind="chat", status="succeeded",
                                        task_json="{}", created_at=1.0, output="A"))
    assert inspect(old_engine).get_pk_constraint(tasks.name)["constrained_columns"] == ["id"]
    old_engine.dispose()

    engine = make_engine(database_url)
    try:
        inspector = inspect(engine)
        assert inspector.get_pk_constraint(tasks.name)["constrained_columns"] == \
            ["tenant", "id"]
        assert "ix_agentq_tasks_id" in {i["name"] for i in inspector.get_indexes(tasks.name)}
        assert get_task(engine, "acme", "x")["output"] == "A"  # the rows are kept
        assert insert_task(engine, _task("beta", "x"))[1]
        assert not insert_task(engine, _task("acme", "x"))[1]
    finally:
        engine.dispose()
    again = make_engine(database_url)  # a migrated table is left as it is
    try:
        assert [r["tenant"] for r in find_tasks(again, "x")] == ["acme", "beta"]
    finally:
        again.dispose()


# --- the HTTP door with tenant keys ---------------------------------------------------------

@pytest.fixture
def keyed(settings: Settings, tmp_path: Path) -> Iterator[FlaskClient]:
    """An ingest app with acme's key in AGENTQ_API_KEYS, beta's in a keys file, one old
    bare admin key."""
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[api_keys]\nbeta = ["{_digest(BETA_KEY)}"]\n')
    with running_app(settings.model_copy(update={
            "api_keys": f"{ADMIN_KEY},acme:{_digest(ACME_KEY)}",
            "api_keys_file": keys_file})) as app:
        yield app.test_client()


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    error: dict[str, Any] = response.get_json()["error"]
    return error


def test_a_missing_or_unknown_key_is_401(keyed: FlaskClient) -> None:
    for headers in ({}, _as("nope"), _as(_digest(ACME_KEY)), {"Authorization": ACME_KEY}):
        assert _error(keyed.post("/v1/tasks", json={"prompt": "x"}, headers=headers),
                      401)["code"] == "unauthorized"
        assert _error(keyed.post("/v1/tasks", json=[{"prompt": "x"}], headers=headers),
                      401)["field"] == "authorization"
        _error(keyed.get("/v1/tasks/x", headers=headers), 401)


def test_a_tenant_key_submits_for_its_own_tenant(keyed: FlaskClient, rabbit: Rabbit,
                                                 settings: Settings) -> None:
    names = Names(settings.namespace)
    answer = keyed.post("/v1/tasks", json={"prompt": "x"}, headers=_as(ACME_KEY))
    assert answer.status_code == 202
    assert rabbit.get(names.tasks).json()["tenant"] == "acme"
    shown = keyed.get(f"/v1/tasks/{answer.get_json()['id']}", headers=_as(ACME_KEY))
    assert shown.get_json()["tenant"] == "acme"

    error = _error(keyed.post("/v1/tasks", json={"prompt": "x", "tenant": "beta"},
                              headers=_as(ACME_KEY)), 403)
    assert error == {"code": "forbidden", "field": "tenant", "message": error["message"]}
    assert "acme" in error["message"]
    mixed = [{"prompt": "a"}, {"prompt": "b", "tenant": "beta"}]
    error = _error(keyed.post("/v1/tasks", json=mixed, headers=_as(ACME_KEY)), 403)
    assert (error["code"], error["field"]) == ("forbidden", "[1].tenant")
    assert rabbit.count(names.tasks) == 0  # a list is all or nothing

    listed = keyed.post("/v1/tasks", json=mixed, headers=_as(ADMIN_KEY))  # the old bare key: admin
    assert listed.status_code == 202
    assert [rabbit.get(names.tasks).json()["tenant"] for _ in range(2)] == ["default", "beta"]


def test_an_id_is_per_tenant_and_invisible_to_the_others(keyed: FlaskClient, rabbit: Rabbit,
                                                        settings: Settings) -> None:
    names = Names(settings.namespace)
    task_id = f"x-{uuid.uuid4().hex[:8]}"
    unknown = keyed.get(f"/v1/tasks/{task_id}", headers=_as(BETA_KEY))
    assert unknown.status_code == 404

    assert keyed.post("/v1/tasks", json={"id": task_id, "prompt": "a"},
                      headers=_as(ACME_KEY)).get_json() == {"id": task_id, "status": "queued"}
    for query in ("", "?tenant=acme"):  # another tenant's id: the very same 404
        other = keyed.get(f"/v1/tasks/{task_id}{query}", headers=_as(BETA_KEY))
        assert (other.status_code, other.get_data()) == (404, unknown.get_data())

    assert keyed.post("/v1/tasks", json={"id": task_id, "prompt": "b"},
                      headers=_as(BETA_KEY)).get_json() == {"id": task_id, "status": "queued"}
    again = keyed.post("/v1/tasks", json={"id": task_id, "prompt": "a"}, headers=_as(ACME_KEY))
    assert (again.status_code, again.get_json()["status"]) == (202, "queued")
    queued = [rabbit.get(names.tasks).json() for _ in range(2)]
    assert {(t["tenant"], t["messages"][0]["content"]) for t in queued} == \
        {("acme", "a"), ("beta", "b")}
    assert rabbit.count(names.tasks) == 0  # acme's resubmission stayed idempotent

    engine = make_engine(settings.database_url)
    try:
        record_results(engine, [Result(task_id=task_id, tenant="acme", status="succeeded",
                                       output="for acme")])
    finally:
        engine.dispose()
    mine = keyed.get(f"/v1/tasks/{task_id}", headers=_as(ACME_KEY)).get_json()
    theirs = keyed.get(f"/v1/tasks/{task_id}", headers=_as(BETA_KEY)).get_json()
    assert (mine["tenant"], mine["status"], mine["result"]["output"]) == \
        ("acme", "succeeded", "for acme")
    assert (theirs["tenant"], theirs["status"], theirs["result"]) == ("beta", "queued", None)

    ambiguous = keyed.get(f"/v1/tasks/{task_id}", headers=_as(ADMIN_KEY))
    assert ambiguous.status_code == 409
    assert ambiguous.get_json()["error"]["field"] == "tenant"
    assert ambiguous.get_json()["tenants"] == ["acme", "beta"]
    for tenant in ("acme", "beta"):
        chosen = keyed.get(f"/v1/tasks/{task_id}?tenant={tenant}", headers=_as(ADMIN_KEY))
        assert chosen.get_json()["tenant"] == tenant
    assert keyed.get(f"/v1/tasks/{task_id}?tenant=gamma", headers=_as(ADMIN_KEY)) \
        .status_code == 404


def test_old_style_api_keys_still_work(settings: Settings,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTQ_API_KEYS", "k1, k2")
    from_env = Settings(namespace=settings.namespace, database_url=settings.database_url)
    with running_app(from_env) as app:
        client = app.test_client()
        _error(client.post("/v1/tasks", json={"prompt": "x"}), 401)
        posted = client.post("/v1/tasks", json={"prompt": "x", "tenant": "anyone"},
                             headers=_as("k2"))
        assert posted.status_code == 202
        shown = client.get(f"/v1/tasks/{posted.get_json()['id']}", headers=_as("k1"))
        assert shown.get_json()["tenant"] == "anyone"


# --- end to end: one id, two tenants, two paid calls, two results --------------------------

def test_one_id_under_two_tenants_runs_twice_end_to_end(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[api_keys]\nbeta = ["{_digest(BETA_KEY)}"]\n')
    extra = f'\n[api_keys]\nacme = ["{_digest(ACME_KEY)}"]\n'
    with running_pipeline(tmp_path, workers=1, extra_config=extra,
                          env={"AGENTQ_API_KEYS_FILE": str(keys_file),
                               "AGENTQ_API_KEYS": ADMIN_KEY}) as pipeline:
        url = f"{pipeline.ingest}/v1/tasks"
        same, own = f"same-{uuid.uuid4().hex[:8]}", f"own-{uuid.uuid4().hex[:8]}"
        prompt = f"Pick one. labels: red, green, blue {uuid.uuid4()}"
        before = pipeline.stats()["requests"]
        for key, label in ((ACME_KEY, "apple"), (BETA_KEY, "banana")):
            for task in ({"id": same, "prompt": prompt, "kind": "classify"},
                         {"id": own, "prompt": f"Answer with the labels: {label}",
                          "kind": "classify"}):
                status, body = http("POST", url, task, headers=_as(key))
                assert (status, body["id"]) == (202, task["id"]), body

        def finished(key: str, task_id: str) -> Callable[[], Any]:
            def check() -> Any:
                status, body = http("GET", f"{url}/{task_id}", headers=_as(key))
                assert status == 200, body
                return body if body["status"] in ("succeeded", "failed") else None
            return check

        done = {(key, task_id): wait_until(finished(key, task_id), 60, f"{task_id}")
                for key in (ACME_KEY, BETA_KEY) for task_id in (same, own)}
        assert {body["status"] for body in done.values()} == {"succeeded"}
        assert done[ACME_KEY, own]["tenant"] == "acme" and done[BETA_KEY, own]["tenant"] == "beta"
        assert done[ACME_KEY, own]["result"]["output"] == "apple"
        assert done[BETA_KEY, own]["result"]["output"] == "banana"
        for key in (ACME_KEY, BETA_KEY):  # each tenant paid for its own call: no shared answer
            result = done[key, same]["result"]
            assert (result["cache"], result["cached_from"]) == ("miss", None)
            assert result["cost_usd"] > 0
        assert pipeline.stats()["requests"] - before == 4
        status, body = http("GET", f"{url}/{same}", headers=_as(ADMIN_KEY))
        assert (status, body["error"]["field"]) == (409, "tenant")
        status, body = http("GET", f"{url}/{same}?tenant=beta", headers=_as(ADMIN_KEY))
        assert (status, body["tenant"]) == (200, "beta")


# --- the dashboard's task page ---------------------------------------------------------------

def test_the_dashboard_shows_each_tenants_task(settings: Settings, database_url: str) -> None:
    from services.dashboard import create_app as dashboard_app
    from services.dashboard.models import db

    engine = make_engine(database_url)
    try:
        for tenant in ("acme", "beta"):
            insert_task(engine, _task(tenant, "x", f"the prompt of {tenant}"))
    finally:
        engine.dispose()
    app = dashboard_app(settings, {"TESTING": True})
    try:
        # The views themselves, past whatever login the blueprint asks for.
        with app.test_request_context("/tasks"):
            listing = app.view_functions["tasks.search"]()
        assert "/tasks/x?tenant=acme" in listing and "/tasks/x?tenant=beta" in listing
        for tenant in ("acme", "beta"):
            with app.test_request_context(f"/tasks/x?tenant={tenant}"):
                page = app.view_functions["tasks.detail"]("x")
            assert f"the prompt of {tenant}" in page
    finally:
        with app.app_context():
            db.engine.dispose()


def test_config_check_reports_bad_key_entries(tmp_path: Path) -> None:
    from services.common.config_check import key_problems, table_problems

    bad_file = tmp_path / "keys.toml"
    bad_file.write_text('[api_keys]\nacme = "sha256:00"\n')
    problems = key_problems({"AGENTQ_API_KEYS": "acme:sha256:" + "0" * 64 + ",x:sha256:" + "z" * 64,
                             "AGENTQ_API_KEYS_FILE": str(bad_file)})
    assert [p.where for p in problems] == ["AGENTQ_API_KEYS", "AGENTQ_API_KEYS_FILE"]
    assert key_problems({"AGENTQ_API_KEYS_FILE": str(tmp_path / "missing.toml")})[0].where == \
        "AGENTQ_API_KEYS_FILE"
    assert key_problems({"AGENTQ_API_KEYS": "old-key", "AGENTQ_API_KEYS_FILE": ""}) == []
    document = tomllib.loads(Path("agentq.example.toml").read_text())
    assert table_problems({**document, "api_keys": {"acme": ["sha256:nothex"]}}, "t.toml")
    assert Settings(api_keys_file="").api_keys_file is None
