"""The published JSON Schemas match the models, so clients in other languages stay right."""

from __future__ import annotations

from services.common.schema import SCHEMA_DIR, SCHEMAS, render


def test_schema_files_are_current() -> None:
    for name, model in SCHEMAS.items():
        path = SCHEMA_DIR / f"{name}.schema.json"
        assert path.read_text() == render(model), f"run: python -m services.common.schema ({path})"


def test_task_schema_names_the_contract_fields() -> None:
    properties = SCHEMAS["task"].model_json_schema(mode="validation")["properties"]
    for field in ("id", "tenant", "kind", "messages", "prompt", "tier", "max_tokens",
                  "temperature", "cache", "priority", "metadata"):
        assert field in properties
