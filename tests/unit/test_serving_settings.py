"""The trending and serving settings are typed and checked at start."""

from __future__ import annotations

import pytest

from config.settings import ConfigError, Settings, load_settings


def test_defaults_and_the_trending_key_follow_the_app_id() -> None:
    settings = Settings(app_id="shop-a")
    assert settings.trending_key == "shop-a:trending"
    assert settings.trending_window_s >= settings.trending_bucket_s


def test_a_window_shorter_than_a_bucket_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STREAMREC_TRENDING_BUCKET_S", "60")
    monkeypatch.setenv("STREAMREC_TRENDING_WINDOW_S", "30")
    with pytest.raises(ConfigError, match="STREAMREC_TRENDING_WINDOW_S=30"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAMREC_TRENDING_BUCKET_S", "0"),
        ("STREAMREC_TRENDING_HALF_LIFE_S", "-1"),
        ("STREAMREC_TRENDING_INTERVAL_S", "0.01"),
        ("STREAMREC_TRENDING_SIZE", "1001"),
        ("STREAMREC_LAG_INTERVAL_S", "abc"),
    ],
)
def test_out_of_range_values_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()
