"""Write the JSON Schema of every wire message to docs/schema/, for clients in any language."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from services.common.models import Event, Result, Task

SCHEMAS: dict[str, type[BaseModel]] = {"task": Task, "result": Result, "event": Event}
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schema"


def render(model: type[BaseModel]) -> str:
    # Validation mode documents what a publisher may send (prompt included).
    return json.dumps(model.model_json_schema(mode="validation"), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    out = Path(argv[0]) if argv else SCHEMA_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, model in SCHEMAS.items():
        (out / f"{name}.schema.json").write_text(render(model))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
