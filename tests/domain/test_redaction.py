from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from service_health.redaction import Redactor, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql://hokusai:s3cr%40t@db.internal:5432/registry",
            "postgresql://hokusai:***@db.internal:5432/registry",
        ),
        ("redis://:p4ss@cache:6379/0", "redis://***@cache:6379/0"),
        ("redis://tokenonly@cache:6379", "redis://***@cache:6379"),
        ("https://data.hokus.ai/health", "https://data.hokus.ai/health"),
        (
            "postgresql://u@h/db?sslmode=require&password=hunter2",
            "postgresql://***@h/db?sslmode=require&password=***",
        ),
        ("http://user:p@ss:word@host/x", "http://user:***@host/x"),
        ("http://u:p@[::1/x", "http://***@[::1/x"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redactor_text_replaces_raw_and_encoded_forms() -> None:
    secret = "p@ss/w rd"
    r = Redactor([secret, None, "", SecretStr("api-key-123")])
    text = (
        f"failed: postgresql://u:{quote(secret, safe='')}@h/db; raw {secret}; "
        "Authorization: Bearer api-key-123"
    )
    out = r.text(text)
    assert secret not in out and quote(secret, safe="") not in out
    assert "api-key-123" not in out
    assert out.count("***") >= 3


def test_redactor_masks_url_credentials_it_was_not_told_about() -> None:
    assert Redactor([]).text("connect to redis://:other@h:6379 failed") == (
        "connect to redis://***@h:6379 failed"
    )


def test_redactor_longest_secret_first() -> None:
    assert Redactor(["abc", "abcdef"]).text("xabcdefx") == "x***x"


class _Model(BaseModel):
    url: str
    token: SecretStr


def test_redactor_obj_walks_structures() -> None:
    r = Redactor(["topsecret"])
    data = {
        "error": "auth failed for topsecret",
        "nested": [{"k": ("topsecret", 3)}],
        "Authorization": "Bearer xyz",
        "password": "whatever",
        "model": _Model(url="http://a:topsecret@h", token=SecretStr("zzz")),
        "count": 2,
        "topsecret": None,
    }
    out = r.obj(data)
    assert "topsecret" not in repr(out) and "xyz" not in repr(out)
    assert out["count"] == 2 and out["Authorization"] == "***" and out["password"] == "***"
    assert out["nested"] == [{"k": ["***", 3]}]
    assert out["model"] == {"url": "http://***@h", "token": "***"}


def test_redactor_obj_survives_deep_nesting() -> None:
    deep: list[object] = []
    cur = deep
    for _ in range(500):
        nxt: list[object] = []
        cur.append(nxt)
        cur = nxt
    Redactor(["x"]).obj(deep)


@settings(max_examples=150, deadline=None)
@given(
    secret=st.text(min_size=1, max_size=12).filter(lambda s: "*" not in s),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
)
def test_secret_never_survives(secret: str, before: str, after: str) -> None:
    out = Redactor([secret]).text(before + secret + after + quote(secret, safe=""))
    assert secret not in out
    assert quote(secret, safe="") not in out


def test_redactor_text_masks_credentials_of_every_url_in_it() -> None:
    """Userinfo and credential query parameters of URLs embedded in free text (an API URL
    logged as configured, an error a server wrote) are masked without being told them."""
    text = (
        "Diagnosing prod at https://ops:pw1@api.example/v1?api_key=k3y&region=eu, "
        "then 'http://h/x?token=t0k' and http://h/ready."
    )
    out = Redactor([]).text(text)
    for secret in ("pw1", "k3y", "t0k"):
        assert secret not in out, out
    assert "region=eu" in out and "http://h/ready." in out and out.startswith("Diagnosing prod")
