"""`oraclectl completion bash|zsh`: shell completion made from the argument parser by shtab,
so the script never lags behind the CLI. Tenant ids are asked of the daemon at completion time
(`oraclectl --json tenant list`), quietly: without a daemon, ids are just not offered."""

from __future__ import annotations

import argparse

_IDS = ("oraclectl --json tenant list 2>/dev/null "
        "| sed -n 's/^    \"id\": \"\\(.*\\)\",$/\\1/p'")
PREAMBLE = {
    "bash": f'_oraclectl_tenants() {{\n  compgen -W "$({_IDS})" -- "$1"\n}}\n',
    "zsh": f'_oraclectl_tenants() {{\n  local -a ids\n  ids=(${{(f)"$({_IDS})"}})\n'
           "  _describe 'tenant' ids\n}\n",
}
# Set as `.complete` on every positional that takes a tenant id (shtab reads that attribute).
TENANT_ID = {"bash": "_oraclectl_tenants", "zsh": "_oraclectl_tenants"}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    return shtab.complete(parser, shell=shell, preamble=PREAMBLE)
