"""`agentq keys new --tenant T`: make an API key for a tenant and print how to configure it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services.common.api_keys import ADMIN, KeysError, check_tenant, config_lines, new_key


def main(argv: Sequence[str] | None = None) -> int:
    """Print a fresh key once, then its digest as a config line; nothing is stored."""
    parser = argparse.ArgumentParser(prog="agentq keys", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    new = verbs.add_parser("new", help="make a key for a tenant ('*' = admin: every tenant)")
    new.add_argument("--tenant", required=True)
    args = parser.parse_args(argv)
    try:
        tenant = check_tenant(args.tenant)
    except KeysError as exc:
        parser.error(str(exc))
    key = new_key()
    table_line, env_entry = config_lines(tenant, key)
    whose = "every tenant (admin)" if tenant == ADMIN else f"tenant {tenant}"
    print(key)
    print(f"# the key above is for {whose}; it is shown once and stored nowhere. Configure "
          "its digest\n# under [api_keys] in agentq.toml or in AGENTQ_API_KEYS_FILE:\n"
          f"{table_line}\n# or as an entry of AGENTQ_API_KEYS:\n# {env_entry}",
          file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
