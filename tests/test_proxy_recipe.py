"""The nginx recipe for serving behind a reverse proxy: README and ``deephealth serve --help`` show the
same block, and it is the safe one (X-Forwarded-For overwritten, Host with its port, a body limit
above the server's upload limit)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import deephealth.cli.serve as serve_cli
from deephealth.cli import main

README = Path(__file__).parents[1] / "README.md"


def readme_nginx_blocks() -> list[str]:
    """The README's fenced ```nginx blocks, in order."""
    return re.findall(r"```nginx\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def readme_nginx_block() -> str:
    """The README's nginx recipe: its (only) ``location /deephealth/`` block."""
    blocks = [b for b in readme_nginx_blocks() if b.startswith("location /deephealth/ {")]
    assert len(blocks) == 1, f"expected one recipe in the README, found {len(blocks)}"
    return blocks[0]


def serve_nginx_block() -> str:
    """The indented ``location ... { ... }`` block of ``deephealth serve``'s docstring, dedented."""
    doc = serve_cli.__doc__ or ""
    match = re.search(r"^( +location .*?\n +\}\n)", doc, flags=re.MULTILINE | re.DOTALL)
    assert match, "no nginx location block in deephealth serve's docstring"
    return textwrap.dedent(match.group(1))


def directives(block: str) -> list[tuple[str, ...]]:
    """``(name, arg, ...)`` of each ``;``-terminated directive, comments dropped."""
    out = []
    for line in block.splitlines():
        code = line.split("#", 1)[0].strip()
        if code.endswith(";"):
            out.append(tuple(code[:-1].split()))
    return out


def nginx_size(value: str) -> int:
    """An nginx size (``33m``, ``512k``, ``1048576``) in bytes (k and m are binary, as in nginx)."""
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", value)
    assert m, value
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


def test_readme_and_serve_help_show_the_same_recipe(capsys) -> None:
    readme = readme_nginx_block()
    assert readme == serve_nginx_block()
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for line in readme.splitlines():
        assert line.strip() in help_text


def test_the_recipe_overwrites_x_forwarded_for_and_keeps_the_port() -> None:
    found = directives(readme_nginx_block())
    headers = {d[1].lower(): d[2] for d in found if d[0] == "proxy_set_header"}
    # Replaced by the address nginx saw: a client's own X-Forwarded-For never reaches uvicorn, which
    # would otherwise take a value from it as the client (and the audit trail would record it).
    assert headers["x-forwarded-for"] == "$remote_addr"
    assert headers["host"] == "$http_host"  # $host drops the port: redirects would go to port 80
    assert headers["x-forwarded-proto"] == "$scheme"
    assert ("proxy_pass", "http://127.0.0.1:8000/") in found


def test_the_recipe_body_limit_is_above_the_upload_limit() -> None:
    from deephealth.web.settings import Settings
    from deephealth.web.upload import MULTIPART_OVERHEAD_BYTES

    sizes = [d[1] for d in directives(readme_nginx_block()) if d[0] == "client_max_body_size"]
    assert len(sizes) == 1
    limit = nginx_size(sizes[0])
    app_limit = int(Settings.model_fields["max_upload_mb"].default * 1024 * 1024)  # the default, not this env's
    assert app_limit == 32 * 1024 * 1024
    # Every body the server would accept passes nginx; only then does an oversized file get the
    # server's JSON 413 rather than nginx's HTML page.
    assert limit >= app_limit + MULTIPART_OVERHEAD_BYTES
    assert limit == 33 * 1024 * 1024


def test_nginx_size() -> None:
    assert nginx_size("33m") == 34603008
    assert nginx_size("512k") == 524288
    assert nginx_size("100") == 100


def test_the_optional_json_413_snippet() -> None:
    import json

    text = README.read_text(encoding="utf-8")
    assert "`error_page 413 @deephealth_too_large;`" in text
    (snippet,) = [b for b in readme_nginx_blocks() if b.startswith("location @deephealth_too_large {")]
    found = directives(snippet)
    assert ("default_type", "application/json") in found
    body = re.search(r"return 413 '(.*)';", snippet)
    assert body and json.loads(body.group(1)) == {"detail": "request too large: the limit is 32 MB"}
