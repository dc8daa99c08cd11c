"""Every key a tenant file may hold, declared once.

`oraclewad check`, reload and `tenant add` report any other key as an unknown key (with a
"did you mean" when one is close), in every table. Adding a key to the tenant file is one line
here plus its validation in model.py. A nested dict is a table; `KEY` is a value (of any type:
model.py checks types); `NAMES` is a table whose keys the operator chooses (template names).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from oraclewad import antiban_plan, broadcast_plan, recovery_plan
from oraclewad.settings import Policy
from oraclewad.tomlcheck import KEY, NAMES, Schema


def _keys(tree: dict[str, Any]) -> Schema:
    return {k: _keys(v) if isinstance(v, dict) else KEY for k, v in tree.items()}


POLICY: Schema = {f.name: KEY for f in fields(Policy)}

SERVICE: Schema = {
    "port": KEY,
    "instances": KEY,
    "policy": POLICY,
}

TENANT: Schema = {
    "id": KEY,
    "name": KEY,
    "services": KEY,
    "release": KEY,
    # The recovery plan's own keys: oraclewad/recovery_plan.py validates their values.
    "recovery": {**SERVICE, **dict.fromkeys(sorted(recovery_plan.KEYS), KEY),
                 "thank_you": {"templates": KEY}},
    "broadcast": {**SERVICE, **dict.fromkeys(sorted(broadcast_plan.KEYS), KEY)},
    "evolution": {
        "url": KEY,
        "api_key_file": KEY,
        "instances": KEY,  # moved to [recovery]/[broadcast] instances: model.py says so
        "api_version": KEY,
    },
    # Every [antiban] key: oraclewad/antiban_plan.py holds the defaults and validates the values.
    "antiban": _keys(antiban_plan.schema_keys()),
    "templates": NAMES,
    "metrics": {"token_file": KEY},
}
