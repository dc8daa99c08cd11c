"""The recovery settings of a tenant (`[recovery]` in its tenant file): sequence steps, templates,
send window, time zone, opt-out scope, pacing. A stdlib-only leaf, like `templating`: the daemon
validates the tenant file with `parse()` and passes the normalised plan to the child in its
config, where the service parses it again (a standalone JSON config gets the same checks).

    [recovery]
    time_zone = "America/Sao_Paulo"
    opt_out_scope = "broadcast"        # "all": an opted-out customer gets no reminder either
    static_token = false               # also accept X-Auth-Webhook: <token> (for shops that cannot sign)
    send_window = ["08:00", "21:00"]   # steps after the first wait for it (tenant time zone)
    typing_delay_ms = 1200             # Evolution shows "typing..." this long before each message
    min_gap = 5.0                      # seconds between two sends of one instance
    daily_cap = 500                    # sends per instance per day (tenant time zone)
    send_timeout = 30.0                # seconds Evolution may take (plus the typing delay) before a
                                       # send counts as `uncertain`

    [[recovery.steps]]                 # absent: one step 60 s after order.expired
    after = 60                         # seconds after order.expired
    max_age = 14400                    # a step not sent this long after its time is dropped
    templates = ["{Olá|Oi} {{first_name}}, ...", { text = "...", weight = 2 }]

    [recovery.thank_you]
    templates = ["Obrigado, {{first_name}}!"]
"""

from __future__ import annotations

import re
from typing import Any

from oraclewad.antiban_plan import DEFAULT_ZONE, time_zone
from oraclewad.templating import TemplateError, parse_set

DEFAULT_REMINDER = [
    "{Olá|Oi} {{first_name}}! {Seu|O seu} PIX de {{total}} para {{product}} expirou em {{expires_at}}. "
    "{Ainda dá tempo|Dá tempo ainda} de garantir: use o código abaixo.\n\n{{pix_code}}",
]
DEFAULT_THANK_YOU = [
    "{Obrigado|Muito obrigado}, {{first_name}}! {Recebemos|Confirmamos} o seu pagamento de {{total}} "
    "({{product}}).",
]
FIRST_MAX_AGE = 4 * 3600.0
LATER_MAX_AGE = 12 * 3600.0
OPT_OUT_SCOPES = ("broadcast", "all")
KEYS = frozenset({"time_zone", "opt_out_scope", "static_token", "send_window", "typing_delay_ms",
                  "min_gap", "daily_cap", "send_timeout", "steps", "thank_you"})
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

Problems = list[tuple[str, str]]  # (key, message)


# One check per key, in the order the docs list them; growing with each new key.
def parse(table: dict[str, Any], *, prefix: str = "recovery", ignore: frozenset[str] = frozenset()) -> tuple[  # noqa: C901
        dict[str, Any], Problems]:
    """Validate a recovery table; returns (plan with every default filled in, problems).

    ignore: keys another part of the program reads (port, policy, instances).
    """
    problems: Problems = []

    def fail(key: str, message: str) -> None:
        problems.append((f"{prefix}.{key}", message))

    def number(key: str, default: float, source: dict[str, Any], where: str, minimum: float = 0) -> float:
        value = source.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            fail(f"{where}{key}", f"must be a number of seconds >= {minimum:g}, got {value!r}")
            return default
        return float(value)

    for key in table:
        if key not in KEYS and key not in ignore:
            fail(key, f"unknown key: use one of {', '.join(sorted(KEYS))}")

    zone = time_zone(table.get("time_zone", DEFAULT_ZONE), lambda why: fail("time_zone", why))

    scope = table.get("opt_out_scope", "broadcast")
    if scope not in OPT_OUT_SCOPES:
        fail("opt_out_scope", '"broadcast" (opt-outs stop campaigns only) or "all" (every message)')
        scope = "broadcast"
    static = table.get("static_token", False)
    if not isinstance(static, bool):
        fail("static_token", "must be true or false")
        static = False

    window = table.get("send_window", ["08:00", "21:00"])
    if (not isinstance(window, list) or len(window) != 2
            or not all(isinstance(w, str) and _HHMM.match(w) for w in window)):
        fail("send_window", 'must be ["HH:MM", "HH:MM"], e.g. ["08:00", "21:00"]')
        window = ["08:00", "21:00"]

    typing = table.get("typing_delay_ms", 1200)
    if isinstance(typing, bool) or not isinstance(typing, int) or not 0 <= typing <= 60000:
        fail("typing_delay_ms", "must be an integer between 0 and 60000 (milliseconds)")
        typing = 1200
    min_gap = number("min_gap", 5.0, table, "")
    send_timeout = number("send_timeout", 30.0, table, "", minimum=1)
    cap = table.get("daily_cap", 500)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        fail("daily_cap", "must be an integer >= 1 (messages per instance per day)")
        cap = 500

    raw_steps = table.get("steps")
    if raw_steps is None:
        raw_steps = [{"after": 60}]
    steps: list[dict[str, Any]] = []
    if not isinstance(raw_steps, list) or not raw_steps:
        fail("steps", "must be a list of [[recovery.steps]] tables (at least one)")
        raw_steps = []
    previous = -1.0
    for i, step in enumerate(raw_steps):
        where = f"steps[{i}]."
        if not isinstance(step, dict):
            fail(f"steps[{i}]", "must be a table with after, max_age and templates")
            continue
        for key in step:
            if key not in ("after", "max_age", "templates"):
                fail(f"{where}{key}", "unknown key: a step has after, max_age and templates")
        after = number("after", 60.0, step, where)
        if after <= previous:
            fail(f"{where}after", f"must be later than the step before ({previous:g} s)")
        previous = after
        max_age = number("max_age", FIRST_MAX_AGE if i == 0 else LATER_MAX_AGE, step, where, minimum=1)
        templates = _templates(step.get("templates", DEFAULT_REMINDER), f"{where}templates", fail)
        steps.append({"after": after, "max_age": max_age, "templates": templates})

    thank = table.get("thank_you", {})
    if not isinstance(thank, dict):
        fail("thank_you", "must be a table with templates")
        thank = {}
    for key in thank:
        if key != "templates":
            fail(f"thank_you.{key}", "unknown key: thank_you has templates")
    thank_templates = _templates(thank.get("templates", DEFAULT_THANK_YOU), "thank_you.templates", fail)

    plan = {"time_zone": zone, "opt_out_scope": scope, "static_token": static, "send_window": window,
            "typing_delay_ms": typing, "min_gap": min_gap, "daily_cap": cap, "send_timeout": send_timeout,
            "steps": steps,
            "thank_you": {"templates": thank_templates}}
    return plan, problems


def _templates(value: Any, where: str, fail: Any) -> Any:
    try:
        parse_set(value, where)
    except TemplateError as exc:
        message = str(exc)
        key, _, rest = message.partition(": ")
        fail(key, rest or message)
    return value


def window_minutes(plan: dict[str, Any]) -> tuple[int, int]:
    """The send window as minutes after local midnight (start, end); end < start spans midnight."""
    start, end = (int(h) * 60 + int(m) for h, m in (w.split(":") for w in plan["send_window"]))
    return start, end
