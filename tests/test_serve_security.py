"""Who may drive a unit through the clinic service, and from where (SAFETY.md 10):
loopback by default with a Host check (DNS rebinding), no cross-site changes (CSRF),
clinicians' tokens (stored hashed) required on any other bind and for every request
once configured, and bad requests (malformed JSON, unknown rooms, wrong types, huge
bodies, floods) answered 4xx without touching a unit."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from estim.cli import cli
from estim.config import ConfigError, load_config
from estim.limits import ClinicLimits
from estim.serve.guard import RateLimit
from estim.serve.settings import ServeSettings, load, parse_bind, token_hash

from .serve_parts import Clinic, acting, clinic, plan

TOKEN = "estim-test-token-of-dr-lovelace-0123456789"
ADA = "Dr Ada Lovelace"


@pytest.fixture
def plain(tmp_path: Path) -> Clinic:
    with clinic(tmp_path, {"room-1": ""}) as c:
        c.connected()
        yield c


@pytest.fixture
def locked(tmp_path: Path) -> Clinic:
    with clinic(tmp_path, {"room-1": ""}, clinicians={token_hash(TOKEN): ADA}) as c:
        yield c


def test_a_host_name_the_service_does_not_serve_is_refused(plain: Clinic) -> None:
    port = plain.base.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{int(port) + 1}", "", "[::"):
        answer = plain.get("/rooms", headers={"Host": host})
        assert answer.status_code == 400, host
        assert answer.headers["content-type"] == "application/problem+json"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"127.0.0.2:{port}"):
        assert plain.get("/rooms", headers={"Host": host}).status_code == 200, host


def test_a_page_elsewhere_cannot_change_anything(plain: Clinic) -> None:
    unit = plain.units["room-1"]
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": plain.base.replace("127.0.0.1", "localhost")},  # another origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ):
        for path, body in (("/rooms/room-1/sessions", plan()), ("/stop-all", None)):
            answer = plain.post(path, body, headers=headers)
            assert answer.status_code == 403, (headers, path, answer.text)
    assert acting(unit) == {}
    same = {"Origin": plain.base, "Sec-Fetch-Site": "same-origin"}
    assert plain.post("/rooms/room-1/sessions", plan(), headers=same).status_code == 201
    assert plain.post("/stop-all", headers=same).status_code == 200


def test_bad_requests_are_4xx_and_touch_no_unit(plain: Clinic) -> None:
    unit = plain.units["room-1"]
    post = plain.http.post
    url = f"{plain.base}/api/v1/rooms/room-1/sessions"
    json_type = {"Content-Type": "application/json"}
    cases = [
        post(url, content=b'{"dwell": ', headers=json_type),  # malformed JSON
        post(url, content=b"\xff\xfe", headers=json_type),
        post(
            url, content=b"dwell=8m", headers={"Content-Type": "application/x-www-form-urlencoded"}
        ),
        post(url, content=b'{"dwell": "8m"}', headers={"Content-Type": "text/plain"}),
        post(url, content=b"[]", headers=json_type),
        post(url, content=b'{"dwell": [1], "channels": {}}', headers=json_type),
        post(url, content=b"x" * (1024 * 1024), headers=json_type),  # 1 MiB
        plain.post("/rooms/no-such-room/sessions", plan()),
        plain.post("/rooms/ROOM 1/sessions", plan()),
        plain.post("/rooms/room-1/nothing", plan()),
        plain.http.delete(f"{plain.base}/api/v1/rooms/room-1"),
        plain.get("/sessions", params={"limit": "lots"}),
        plain.get("/sessions", params={"limit": 100000}),
    ]
    statuses = [c.status_code for c in cases]
    assert statuses == [400, 400, 422, 422, 422, 422, 413, 404, 422, 404, 405, 422, 422]
    for answer in cases:
        assert answer.headers["content-type"] == "application/problem+json", answer.text
        assert answer.json()["detail"]
    assert acting(unit) == {}


def test_a_flood_is_answered_429_and_a_stop_still_goes_through(tmp_path: Path) -> None:
    limits = {"reads": RateLimit(per_s=20, burst=20), "changes": RateLimit(per_s=2, burst=4)}
    with clinic(tmp_path, {"room-1": ""}, **limits) as c:
        c.connected()
        unit = c.units["room-1"]
        answers = [
            c.post("/rooms/room-1/amplitude", {"channel": 1, "amplitude_ma": 5}) for _ in range(30)
        ]
        statuses = {a.status_code for a in answers}
        assert 429 in statuses
        assert statuses <= {409, 429}  # (no session: 409) never a 5xx
        assert acting(unit) == {}
        reads = [c.get("/rooms").status_code for _ in range(60)]
        assert 429 in reads
        assert c.post("/rooms/room-1/stop").status_code == 200  # a stop is never turned away
        assert c.post("/stop-all").status_code == 200


def test_another_bind_needs_tokens_and_the_service_refuses_to_start_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = ServeSettings(rooms=(), host="0.0.0.0")
    assert any("needs a token" in p for p in settings.problems())
    monkeypatch.setenv("ESTIM_HOME", str(tmp_path))
    monkeypatch.delenv("ESTIM_CONFIG", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--demo", "--bind", "0.0.0.0:8470"])
    assert result.exit_code == 2
    assert "every clinician needs a token" in result.output
    assert "[serve.clinicians]" in result.output
    assert parse_bind("[::1]:9000") == ("::1", 9000)
    assert ServeSettings(rooms=(), host="::1").loopback


def test_with_tokens_every_api_request_needs_one_and_actions_name_the_clinician(
    locked: Clinic,
) -> None:
    unit = locked.units["room-1"]
    assert locked.get("/rooms").status_code == 401
    assert locked.get("/rooms").headers["www-authenticate"].startswith("Bearer")
    assert locked.post("/rooms/room-1/sessions", plan()).status_code == 401
    assert locked.post("/stop-all").status_code == 401
    wrong = {"Authorization": "Bearer not-a-token"}
    assert locked.post("/rooms/room-1/sessions", plan(), headers=wrong).status_code == 401
    assert acting(unit) == {}
    assert locked.http.get(f"{locked.base}/").status_code == 200  # the console's page itself
    assert locked.get("/openapi.json").status_code == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert locked.get("/events").status_code == 401
    assert locked.get("/rooms", headers=bearer).json()[0]["id"] == "room-1"
    started = locked.post("/rooms/room-1/sessions", plan(), headers=bearer)
    assert started.status_code == 201, started.text
    record = locked.get(f"/sessions/{started.json()['session_id']}", headers=bearer).json()
    assert record["plan"]["clinician"] == ADA  # filled in from the token
    assert locked.post("/stop-all", headers=bearer).status_code == 200
    actions = locked.get("/actions", headers=bearer).json()
    assert [(a["action"], a["clinician"]) for a in actions[:2]] == [
        ("stop_all", ADA),
        ("start", ADA),
    ]


def test_a_login_sets_a_strict_cookie_that_a_page_elsewhere_cannot_use(locked: Clinic) -> None:
    bad = locked.post("/login", {"token": "guess"})
    assert bad.status_code == 401
    with httpx.Client(base_url=f"{locked.base}/api/v1", timeout=10) as browser:
        answer = browser.post("/login", json={"token": TOKEN})
        assert answer.status_code == 200, answer.text
        assert answer.json()["clinician"] == ADA
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
        assert browser.get("/rooms").status_code == 200
        forged = browser.post("/stop-all", headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403
        assert browser.post("/stop-all", headers={"Origin": locked.base}).status_code == 200
        assert browser.post("/logout").status_code == 204
        browser.cookies.clear()
        assert browser.get("/rooms").status_code == 401
    actions = locked.get("/actions", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert ("login", "refused: unknown token") in [(a["action"], a["result"]) for a in actions]


def test_a_room_named_on_the_command_line_keeps_the_config_files_limits_for_it(
    tmp_path: Path,
) -> None:
    """``--room room-2=URL`` for a room the config narrows to 20 mA served it at the
    clinic's 30 mA: a flag that moves a unit to another port silently widened a limit."""
    path = tmp_path / "config.toml"
    path.write_text(
        "[limits]\namplitude_max_ma = 30\n\n"
        '[rooms.room-2]\nname = "Room 2"\nport = "/dev/ttyUSB0"\namplitude_max_ma = 20\n'
    )
    settings = load(
        path, load_config(path).limits, rooms=(("room-2", "sim://"), ("room-9", "sim://"))
    )
    two, nine = settings.rooms
    assert (two.id, two.name, two.port, two.limits.amplitude_max_ma) == (
        "room-2",
        "Room 2",
        "sim://",
        20,
    )
    assert (nine.id, nine.name, nine.limits.amplitude_max_ma) == ("room-9", "room-9", 30)


def test_the_config_file_names_rooms_whose_limits_only_narrow_the_clinics(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[limits]\namplitude_max_ma = 30\n\n[serve]\nbind = "0.0.0.0:9000"\nhosts = ["estim.clinic.lan"]\n\n'
        f'[serve.clinicians]\n"{ADA}" = "{token_hash(TOKEN)}"\n\n'
        '[rooms.room-2]\nname = "Room 2"\nport = "/dev/ttyUSB0"\namplitude_max_ma = 20\n'
    )
    config = load_config(path)  # estim run's reader takes the file too
    settings = load(path, config.limits)
    assert (settings.host, settings.port, settings.hosts) == (
        "0.0.0.0",
        9000,
        ("estim.clinic.lan",),
    )
    assert settings.clinician_for(TOKEN) == ADA
    assert settings.clinician_for(TOKEN + "x") is None
    assert settings.problems() == []
    (room,) = settings.rooms
    assert (room.id, room.name, room.port, room.limits.amplitude_max_ma) == (
        "room-2",
        "Room 2",
        "/dev/ttyUSB0",
        20,
    )
    path.write_text(
        '[limits]\namplitude_max_ma = 30\n[rooms.r1]\nport = "/dev/x"\namplitude_max_ma = 40\n'
    )
    with pytest.raises(
        ConfigError,
        match=r"config.toml:3: rooms.r1: amplitude_max_ma 40 is above the clinic's 30; a room can only narrow",
    ):
        load(path, load_config(path).limits)
    path.write_text(f'[serve.clinicians]\n"{ADA}" = "{TOKEN}"\n')
    with pytest.raises(ConfigError, match="never the token itself"):
        load(path, ClinicLimits())
    path.write_text('[rooms.r1]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"rooms\.r1\.port: is missing"):
        load(path, ClinicLimits())


def test_new_token_prints_a_token_and_the_hash_the_config_keeps() -> None:
    result = CliRunner().invoke(cli, ["serve", "--new-token", ADA])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    token = lines[1].strip()
    assert lines[-1].strip() == f'"{ADA}" = "{token_hash(token)}"'
    assert len(token) >= 40
