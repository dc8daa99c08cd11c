"""Every key a tenant file may hold, declared once.

`oraclewad check`, reload and `tenant add` report any other key as an unknown key (with a
"did you mean" when one is close), in every table. Adding a key to the tenant file is one line
here plus its validation in model.py. A nested dict is a table; `KEY` is a value (of any type:
model.py checks types); `NAMES` is a table whose keys the operator chooses (template names).
"""

from __future__ import annotations

from dataclasses import fields

from oraclewad import recovery_plan
from oraclewad.settings import Policy
from oraclewad.tomlcheck import KEY, NAMES, Schema

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
    "broadcast": SERVICE,
    "evolution": {
        "url": KEY,
        "api_key_file": KEY,
        "instances": KEY,  # moved to [recovery]/[broadcast] instances: model.py says so
        "api_version": KEY,
    },
    "antiban": {
        "strategy": KEY,
        "delay_min": KEY,
        "delay_max": KEY,
        "pause_min": KEY,
        "pause_max": KEY,
        "batch_size": KEY,
        "warmup": {stage: {"min": KEY, "max": KEY} for stage in ("day1", "day2", "day3", "mature")},
        "working_hours": {"start": KEY, "end": KEY, "timezone": KEY},
    },
    "templates": NAMES,
    "metrics": {"token_file": KEY},
}
