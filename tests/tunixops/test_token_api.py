from typing import Any

import pytest
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db

URL = "/api/auth/token"


@pytest.fixture(autouse=True)
def fresh_throttle_counts() -> Any:
    cache.clear()
    yield
    cache.clear()


def login(client: APIClient, body: Any, **extra: Any) -> Any:
    return client.post(URL, body, format="json", **extra)


def test_the_right_password_gets_a_token_that_works_and_stays_the_same(
    anon: APIClient, alice: Any
) -> None:
    first = login(anon, {"username": "alice", "password": "alice-password-1"})
    assert first.status_code == 200
    assert first.json()["username"] == "alice"
    key = first.json()["token"]
    assert Token.objects.get(user=alice).key == key
    again = login(anon, {"username": "alice", "password": "alice-password-1"})
    assert again.json()["token"] == key
    user = APIClient()
    user.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert user.get("/api/auth/whoami").json() == {"username": "alice", "is_staff": False}


def test_an_existing_token_is_returned_rather_than_replaced(anon: APIClient, alice: Any) -> None:
    existing = Token.objects.create(user=alice)
    body = login(anon, {"username": "alice", "password": "alice-password-1"}).json()
    assert body["token"] == existing.key


@pytest.mark.parametrize(
    "body",
    [
        {"username": "alice", "password": "wrong"},
        {"username": "nobody", "password": "alice-password-1"},
    ],
)
def test_wrong_credentials_answer_one_message_and_issue_nothing(
    anon: APIClient, alice: Any, body: dict[str, str]
) -> None:
    response = login(anon, body)
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_credentials",
        "message": "Unable to log in with that username and password.",
    }
    assert not Token.objects.exists()


def test_an_inactive_user_gets_no_token(anon: APIClient, alice: Any) -> None:
    alice.is_active = False
    alice.save()
    response = login(anon, {"username": "alice", "password": "alice-password-1"})
    assert response.json()["error"]["code"] == "invalid_credentials"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "alice"}, "password"),
        ({"password": "x"}, "username"),
        ({"username": "alice", "password": "x", "otp": "1"}, "otp"),
        ({"username": "al\x00ice", "password": "x"}, "username"),
        ({"username": "alice", "password": "x" * 5000}, "password"),
        ({"username": ["alice"], "password": "x"}, "username"),
    ],
)
def test_bad_bodies_answer_400_with_the_field_named(
    anon: APIClient, body: dict[str, str], field: str
) -> None:
    response = login(anon, body)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


@pytest.mark.parametrize(
    "body",
    [b'{"username": "alice", "password": "\\ud800"}', b'{"username": "\\ud800", "password": "x"}'],
)
def test_a_lone_surrogate_is_refused_not_a_500(anon: APIClient, body: bytes) -> None:
    response = anon.post(URL, body, content_type="application/json")
    assert response.status_code == 400


def test_json_nested_deeply_is_refused_with_a_parse_error(anon: APIClient) -> None:
    body = "[" * 2000 + "]" * 2000
    response = anon.post(URL, body, content_type="application/json")
    assert response.status_code == 400


def test_attempts_past_the_rate_answer_429_with_retry_after_per_address(
    anon: APIClient, alice: Any, settings: Any
) -> None:
    settings.TUNIX_TOKEN_RATE = "3/minute"
    for i in range(3):
        assert login(anon, {"username": f"user{i}", "password": "x"}).status_code == 400
    refused = login(anon, {"username": "alice", "password": "alice-password-1"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "throttled"
    assert int(refused["Retry-After"]) > 0
    # Another address is counted apart.
    other = login(
        APIClient(),
        {"username": "alice", "password": "alice-password-1"},
        REMOTE_ADDR="10.9.8.7",
    )
    assert other.status_code == 200


def test_attempts_on_one_username_are_throttled_across_addresses(alice: Any, settings: Any) -> None:
    settings.TUNIX_TOKEN_RATE = "2/minute"
    for i in range(2):
        client = APIClient()
        response = login(client, {"username": "Alice", "password": "x"}, REMOTE_ADDR=f"10.0.0.{i}")
        assert response.status_code == 400
    refused = login(APIClient(), {"username": "alice", "password": "x"}, REMOTE_ADDR="10.0.0.99")
    assert refused.status_code == 429


def test_whoami_needs_a_user(anon: APIClient) -> None:
    assert anon.get("/api/auth/whoami").status_code == 401
