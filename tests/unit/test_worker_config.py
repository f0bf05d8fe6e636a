"""The worker builds the model from the settings, field for field."""

from __future__ import annotations

import dataclasses

from config.settings import Settings
from models.mf import MFConfig
from streams.worker import mf_config


def test_every_model_parameter_is_a_setting() -> None:
    derived = {"event_weights", "dedup_window_ms"}
    for field in dataclasses.fields(MFConfig):
        if field.name not in derived:
            assert field.name in Settings.model_fields, field.name


def test_settings_reach_the_model() -> None:
    settings = Settings(
        n_factors=7,
        learning_rate=0.2,
        negative_pool=9,
        batch_clip=2.5,
        weight_purchase=9.0,
        dedup_window_s=12,
    )
    config = mf_config(settings)
    assert config.n_factors == 7
    assert config.learning_rate == 0.2
    assert config.negative_pool == 9
    assert config.batch_clip == 2.5
    assert config.event_weights["purchase"] == 9.0
    assert config.dedup_window_ms == 12_000
